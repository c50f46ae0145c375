"""Official checkpoints: the tokenizer file (``tokenizer.json`` and others) and its map onto our vocabulary."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genemamba_scvi.io._files import (
    _load_json,
)

if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

_SPECIAL_ROLES = ("pad", "unk", "cls", "mask", "sep", "bos", "eos")
_SPECIAL_PATTERN = re.compile(r"^(?:\[([A-Za-z_]+)\]|<\|?([A-Za-z_]+)\|?>)$")


_TOKENIZER_FILES = ("tokenizer.json", "gene_tokenizer.json", "vocab.json", "vocab.txt")


def _load_official_tokens(directory: Path) -> tuple[dict[str, int], dict[str, str], Path]:
    """Token -> id from tokenizer.json / gene_tokenizer.json (any HF tokenizers model), vocab.json or vocab.txt.

    A size-variant subfolder without its own tokenizer uses the repository root's (its parent), where the parent is
    such a repository: a checkpoint itself (its ``config.json``) or a folder of several size variants. Any other
    parent's tokenizer is not taken (bad-input probe, session 33: a same-format tokenizer of another download one level
    up mapped every gene to another gene's embedding row, without a word).
    """
    directory = directory.absolute()
    parent = directory.parent
    for folder in (directory, parent):
        for name in _TOKENIZER_FILES:
            candidate = folder / name
            if not candidate.is_file():
                continue
            if folder == parent and not _is_repository_root(parent):
                raise FileNotFoundError(
                    f"no {', '.join(_TOKENIZER_FILES)} in {directory}; {candidate} in its parent folder is not taken, "
                    f"as {parent} is no repository of size variants (no {_CONFIG}, fewer than two variant "
                    "subfolders): a tokenizer of another download would map genes to the wrong embedding rows. Copy "
                    f"this checkpoint's own tokenizer file into {directory}"
                )
            tokens, declared = _parse_tokenizer_file(candidate)
            for extra in ("tokenizer_config.json", "special_tokens_map.json"):
                if (folder / extra).is_file():
                    declared.update(_declared_specials(_load_json(folder / extra)))
            return tokens, declared, candidate
    raise FileNotFoundError(f"no {', '.join(_TOKENIZER_FILES)} in {directory} or {parent}")


_CONFIG = "config.json"


def _is_repository_root(folder: Path) -> bool:
    """A published repository's root: a checkpoint itself, or a folder of at least two size-variant subfolders."""
    if (folder / _CONFIG).is_file():
        return True
    return sum(1 for p in folder.iterdir() if p.is_dir() and (p / _CONFIG).is_file()) >= 2


def _declared_specials(data: Any) -> dict[str, str]:
    """Token -> role from ``special_tokens_map.json`` or ``tokenizer_config.json`` (Hugging Face names)."""
    declared: dict[str, str] = {}
    if not isinstance(data, dict):
        return declared
    for added in (data.get("added_tokens_decoder") or {}).values():
        if isinstance(added, dict) and added.get("special") and isinstance(added.get("content"), str):
            declared[added["content"]] = _special_role(added["content"]) or "other"
    for key, value in data.items():
        content = value.get("content") if isinstance(value, dict) else value
        role = key.removesuffix("_token")
        if key.endswith("_token") and isinstance(content, str) and role in _SPECIAL_ROLES:
            declared[content] = role
    return declared


def _parse_tokenizer_file(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    declared: dict[str, str] = {}
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return {tok: i for i, tok in enumerate(lines) if tok}, declared
    data = _load_json(path)
    if path.name == "vocab.json":
        vocab = data
    else:
        model = data.get("model")
        if not isinstance(model, dict) or "vocab" not in model:
            raise ValueError(f"{path} has no model.vocab (not a Hugging Face tokenizers file?)")
        vocab = model["vocab"]
        if isinstance(vocab, list):  # Unigram: [[token, score], ...]
            vocab = {entry[0]: i for i, entry in enumerate(vocab)}
        for added in data.get("added_tokens") or []:
            vocab = {**vocab, added["content"]: int(added["id"])}
            if added.get("special"):
                declared[added["content"]] = _special_role(added["content"]) or "other"
        # WordLevel models name their unknown token (and gene_tokenizer.json also a pad token) here
        for role in ("unk", "pad"):
            token = model.get(f"{role}_token")
            if isinstance(token, str) and isinstance(vocab, dict) and token in vocab:
                declared[token] = role
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise ValueError(f"{path}: the vocabulary is not a token -> integer id table")
    return dict(vocab), declared


def _special_role(token: str) -> str | None:
    m = _SPECIAL_PATTERN.match(token)
    if not m:
        return None
    name = (m.group(1) or m.group(2)).lower()
    aliases = {"unknown": "unk", "padding": "pad", "s": "bos", "/s": "eos"}
    name = aliases.get(name, name)
    return name if name in _SPECIAL_ROLES else "other"


def _official_vocab_map(
    tokens: dict[str, int], declared: dict[str, str], n_rows: int, pad_token_id: int | None, keep_unk: bool = False
) -> tuple[GeneVocab, torch.Tensor, dict[str, Any]]:
    from genemamba_scvi.data.vocab import GeneVocab

    ids = sorted(tokens.values())
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:10]
        raise ValueError(f"official token ids cannot be mapped: ids {dup} are used by more than one token")
    if ids != list(range(n_rows)):
        raise ValueError(
            f"official token ids cannot be mapped: the tokenizer has {len(ids)} tokens with ids "
            f"{ids[0] if ids else None}..{ids[-1] if ids else None}, but the embedding has {n_rows} rows "
            "(ids must be exactly 0..rows-1)"
        )
    roles: dict[str, str] = {}
    for token in tokens:
        role = declared.get(token) or _special_role(token)
        if role is not None:
            roles[token] = role
    by_role: dict[str, int] = {}
    for token, role in roles.items():
        if role in by_role and role != "other":
            raise ValueError(f"official token ids cannot be mapped: two {role} tokens in the tokenizer")
        by_role.setdefault(role, tokens[token])
    if pad_token_id is not None and by_role.get("pad", pad_token_id) != pad_token_id:
        raise ValueError(
            f"config.json pad_token_id={pad_token_id} but the tokenizer's pad token has id {by_role['pad']}"
        )
    if pad_token_id is not None and "pad" not in by_role:
        if not 0 <= pad_token_id < n_rows:
            raise ValueError(f"config.json pad_token_id={pad_token_id} is outside the vocabulary (0..{n_rows - 1})")
        by_role["pad"] = pad_token_id
        pad_token = next(t for t, i in tokens.items() if i == pad_token_id)
        roles[pad_token] = "pad"
    unk_token = next((t for t, r in roles.items() if r == "unk"), None) if keep_unk else None
    if not [t for t in tokens if t not in roles]:
        raise ValueError("official token ids cannot be mapped: the tokenizer has no gene tokens")
    # with keep_unk the unknown-gene token stays, under its official name, in its official id order
    genes = [t for t, _ in sorted(tokens.items(), key=lambda kv: kv[1]) if t not in roles or t == unk_token]
    vocab = GeneVocab(genes)
    src = torch.full((len(vocab),), -1, dtype=torch.long)
    for gene in genes:
        src[vocab[gene]] = tokens[gene]
    filled = []
    for role, our_id in (("pad", vocab.pad_id), ("cls", vocab.cls_id), ("mask", vocab.mask_id)):
        if role in by_role:
            src[our_id] = by_role[role]
        else:
            filled.append(role)
    used = set(src[src >= 0].tolist())
    dropped = {t: i for t, i in sorted(tokens.items(), key=lambda kv: kv[1]) if i not in used}
    info = {
        "official_specials": {t: tokens[t] for t in sorted(roles, key=tokens.__getitem__)},
        "official_id_of_our_id": src.tolist(),
        "dropped_tokens": dropped,
        "filled_specials": filled,
        "n_official_tokens": n_rows,
        "unk_token": unk_token,
    }
    return vocab, src, info
