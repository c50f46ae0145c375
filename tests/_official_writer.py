"""Writer of the official GeneMamba checkpoint layout: fabricates official checkpoints for the tests.

The real weights cannot be downloaded here; this writes the layout that
:func:`genemamba_scvi.io.read_official_checkpoint` reads (moved out of the package: only tests use it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import torch

from genemamba_scvi.io._checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
)
from genemamba_scvi.io._files import (
    _atomic_write_dir,
    _check_target,
)
from genemamba_scvi.io._official import (
    _MERGE_WITH_WEIGHTS,
    MAMBA2_PARAMS,
)
from genemamba_scvi.io._official_tokenizer import _special_role

if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

__all__ = ["cache_like_huggingface_hub", "write_official_checkpoint"]


def cache_like_huggingface_hub(
    cache: Path, repo_id: str, source: Path, commit: str = "0123456789abcdef" * 2 + "01234567", ref: str | None = "main"
) -> Path:
    """Put ``source``'s files into the Hub cache ``cache`` as ``huggingface_hub`` lays them out: blobs named by
    content, a snapshot of relative links to them, and a ref holding the commit. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash without a newline
    return snapshot


def write_official_checkpoint(
    path: str | os.PathLike,
    encoder_kwargs: Mapping[str, Any],
    encoder_state_dict: Mapping[str, torch.Tensor],
    lm_head_state_dict: Mapping[str, torch.Tensor] | None,
    vocab: GeneVocab,
    gene_order: Sequence[str] | None = None,
    specials: Sequence[str] = ("[UNK]", "[PAD]"),
    config_style: str = "hf",
    key_prefix: str = "",
    overwrite: bool = False,
) -> Path:
    """Write an encoder in the official GeneMamba layout (``config.json``, ``model.safetensors``,
    ``tokenizer.json``, ``special_tokens_map.json``).

    Parameters
    ----------
    path
        Directory to create (atomically, like :func:`write_checkpoint`).
    encoder_kwargs
        The ``GeneMambaEncoder`` kwargs; must describe ``block="official"``, bidirectional, with a
        shared merge for ``"gate"``/``"concat"``.
    encoder_state_dict
        Encoder weights under our names.
    lm_head_state_dict
        ``{"weight", "bias"}`` of an LM head over our vocabulary (``"lm_head."`` prefixes are
        accepted), or ``None`` to write a backbone-only checkpoint.
    vocab
        Our vocabulary (``GeneVocab``) the rows are in.
    gene_order
        Official order of the gene tokens (ids ``len(specials)`` onwards); default ``vocab.genes``.
    specials
        Official special tokens, ids ``0..len(specials)-1``. Roles are taken from the names
        (``[PAD]`` -> pad, ...); our ``<pad>``/``<cls>``/``<mask>`` rows go to the special of the
        same role, specials without a counterpart (``[UNK]``) get zero rows. The default
        (``[UNK]=0, [PAD]=1``, genes from 2) matches what the official examples suggest.
    config_style
        ``"hf"`` (``hidden_size``, ``num_hidden_layers``, ``mamba_mode``, ``embedding_pooling``)
        or ``"github"`` (``d_model``, ``mamba_layer``, ``mode``).
    key_prefix
        Prefix for the backbone weights (e.g. ``"genemamba."``); ``lm_head.*`` stays top-level.
    overwrite
        Replace an existing official-layout directory.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    if config_style not in ("hf", "github"):
        raise ValueError(f"config_style must be 'hf' or 'github', got {config_style!r}")
    kw = dict(encoder_kwargs)
    if kw.get("block", "prenorm") != "official":
        raise ValueError("only block='official' encoders can be written in the official layout")
    if not kw.get("bidirectional", True):
        raise ValueError("the official layout is bidirectional; got bidirectional=False")
    merge_mode = kw.get("merge", "gate")
    if merge_mode in _MERGE_WITH_WEIGHTS and not kw.get("shared_merge", False):
        raise ValueError("the official layout has one shared 'aggr'; got shared_merge=False")
    _check_target(path, overwrite, looks_like=lambda p: (p / CONFIG_FILE).is_file(), what="official checkpoint")

    genes = list(vocab.genes if gene_order is None else gene_order)
    if sorted(genes) != sorted(vocab.genes):
        raise ValueError("gene_order must be a permutation of vocab.genes")
    roles = {}
    for i, token in enumerate(specials):
        role = _special_role(token)
        if role is None:
            raise ValueError(f"cannot tell the role of special token {token!r}")
        roles[i] = role
    official_tokens = [*specials, *genes]
    ours = {"pad": vocab.pad_id, "cls": vocab.cls_id, "mask": vocab.mask_id}
    src = [ours.get(roles[i], -1) for i in range(len(specials))] + [vocab[g] for g in genes]
    src_t = torch.tensor(src, dtype=torch.long)

    def rows(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        out = t[src_t.clamp(min=0)].clone()
        out[src_t < 0] = 0
        return out.contiguous()

    tensors: dict[str, torch.Tensor] = {}
    n_layers = int(kw.get("n_layers", 24))
    for name, value in encoder_state_dict.items():
        value = value.detach().cpu().contiguous()
        if name == "embedding.weight":
            tensors[f"{key_prefix}embeddings.weight"] = rows(value)
        elif name == "norm_f.weight":
            tensors[f"{key_prefix}norm_f.weight"] = value
        elif name in ("merge.weight", "merge.bias"):
            tensors[f"{key_prefix}mamba_mixer.aggr.{name.split('.')[-1]}"] = value
        elif (m := re.match(r"^layers\.(\d+)\.mixer\.(.+)$", name)) and m.group(2) in MAMBA2_PARAMS:
            tensors[f"{key_prefix}mamba_mixer.layers.{m.group(1)}.mamba.{m.group(2)}"] = value
        else:
            raise ValueError(f"state dict key {name!r} has no place in the official layout")
    if lm_head_state_dict is not None:
        for name, value in lm_head_state_dict.items():
            short = name.removeprefix("lm_head.")
            if short not in ("weight", "bias"):
                raise ValueError(f"lm_head key {name!r} is not weight/bias")
            tensors[f"lm_head.{short}"] = rows(value)
    if config_style == "hf":
        config = {
            "model_type": "genemamba",
            "architectures": ["GeneMambaForMaskedLM" if lm_head_state_dict is not None else "GeneMambaModel"],
            "vocab_size": len(official_tokens),
            "hidden_size": int(kw.get("d_model", 512)),
            "num_hidden_layers": n_layers,
            "d_state": int(kw.get("d_state", 64)),
            "d_conv": int(kw.get("d_conv", 4)),
            "expand": int(kw.get("expand", 2)),
            "headdim": int(kw.get("headdim", 64)),
            "mamba_mode": merge_mode,
            "embedding_pooling": kw.get("pooling", "mean"),
        }
    else:
        config = {
            "d_model": int(kw.get("d_model", 512)),
            "mamba_layer": n_layers,
            "vocab_size": len(official_tokens),
            "mode": merge_mode,
        }
    pad_ids = [i for i, r in roles.items() if r == "pad"]
    if pad_ids:
        config["pad_token_id"] = pad_ids[0]
    unk = next((specials[i] for i, r in roles.items() if r == "unk"), None)
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, tok in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {tok: i for i, tok in enumerate(official_tokens)}, "unk_token": unk},
    }
    special_map = {f"{roles[i]}_token": tok for i, tok in enumerate(specials)}

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")

    _atomic_write_dir(path, fill, overwrite)
    return path
