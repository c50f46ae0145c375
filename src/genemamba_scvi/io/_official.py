"""Reader of the official GeneMamba checkpoint layout (Hugging Face / GitHub); see :mod:`genemamba_scvi.io`."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from genemamba_scvi.io._checkpoint import CONFIG_FILE, WEIGHTS_FILE, is_our_checkpoint
from genemamba_scvi.io._files import (
    _load_json,
    _load_safetensors,
)
from genemamba_scvi.io._hub_cache import (
    hub_repo_dir,
    looks_like_repo_id,
    resolve_hub_snapshot,
    split_repo_subfolder,
    verify_cached_files,
)
from genemamba_scvi.io._official_tokenizer import (
    _load_official_tokens,
    _official_vocab_map,
)

if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

# Mamba-2 mixer parameter names (mamba_ssm.Mamba2 with its defaults: bias=False, conv_bias=True,
# rmsnorm=True). Our mixer uses exactly these names under ``layers.{i}.mixer.``.
MAMBA2_PARAMS = (
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "dt_bias",
    "A_log",
    "D",
    "norm.weight",
    "out_proj.weight",
)
_MAMBA1_ONLY = ("x_proj.weight", "dt_proj.weight", "dt_proj.bias")
_MERGE_MODES = ("gate", "concat", "mean", "sum")
_MERGE_WITH_WEIGHTS = ("gate", "concat")


class OfficialCheckpoint(NamedTuple):
    """What :func:`read_official_checkpoint` returns (a tuple, also readable by attribute).

    Attributes
    ----------
    encoder_kwargs
        Keyword arguments for ``GeneMambaEncoder`` (``block="official"``, ``bidirectional=True``).
    encoder_state_dict
        The encoder weights under our names, rows in our vocabulary order.
    lm_head_state_dict
        ``{"weight": [V, d], "bias": [V]}`` of the official ``lm_head`` (rows in our vocabulary
        order), or ``None`` when the checkpoint has no LM head.
    vocab
        Our ``GeneVocab`` built from the official tokenizer's gene tokens (official id order).
    info
        Provenance: source files, raw config, token remapping, dropped tokens, notes.
    """

    encoder_kwargs: dict[str, Any]
    encoder_state_dict: dict[str, torch.Tensor]
    lm_head_state_dict: dict[str, torch.Tensor] | None
    vocab: GeneVocab
    info: dict[str, Any]


# config.json field names, first match wins. The Hugging Face GeneMambaConfig uses
# ``hidden_size``/``num_hidden_layers``/``vocab_size``/``embedding_pooling`` (seen in
# examples/1_extract_embeddings.py of mineself2016/GeneMamba); the GitHub MambaModel config uses
# ``d_model``/``mamba_layer``/``vocab_size``/``mode`` (genemamba/models/models.py of
# xiamengxxx/GeneMamba). The other names are accepted defensively.
_CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "d_model": ("hidden_size", "d_model", "n_embd"),
    "n_layers": ("num_hidden_layers", "mamba_layer", "n_layer", "n_layers", "num_layers"),
    "vocab_size": ("vocab_size",),
    "d_state": ("d_state", "state_size", "ssm_state_size"),
    "d_conv": ("d_conv", "conv_kernel"),
    "expand": ("expand",),
    "headdim": ("headdim", "head_dim"),
    "ngroups": ("ngroups", "n_groups"),
    "chunk_size": ("chunk_size",),
    "merge": ("mamba_mode", "mode", "bimamba_mode", "merge_mode", "aggr_mode", "aggregation", "bidirectional_mode"),
    "pooling": ("embedding_pooling", "pooling", "pooling_mode"),
    "pad_token_id": ("pad_token_id",),
}
_POOLING = {"mean": "mean", "avg": "mean", "average": "mean", "cls": "cls", "first": "cls", "first_token": "cls"}
_LAYER_KEY = re.compile(r"^(?:mamba_mixer\.)?layers\.(\d+)\.(mamba|mixer)\.(.+)$")
_LAYER_MERGE_KEY = re.compile(r"^(?:mamba_mixer\.)?layers\.(\d+)\.aggr\.(weight|bias)$")
_SHARED_MERGE_KEY = re.compile(r"^(?:mamba_mixer\.)?aggr\.(weight|bias)$")


def read_official_checkpoint(
    path: str | os.PathLike,
    subfolder: str | None = None,
    merge: str | None = None,
    pooling: str | None = None,
    keep_unk: bool = False,
    identity_layers: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> OfficialCheckpoint:
    """Read an official GeneMamba checkpoint directory and map it onto our encoder and vocabulary.

    Parameters
    ----------
    path
        The downloaded repository (``huggingface-cli download mineself2016/GeneMamba --local-dir
        path``) or one of its size-variant subfolders; or a Hub repository id (``"mineself2016/GeneMamba"``)
        that is not a local directory, looked up in the local Hugging Face cache (never downloaded);
        ``"owner/name/<variant>"`` that is not a local path and whose repository is cached reads the
        size-variant subfolder ``<variant>`` of the cached repository.
    subfolder
        A size variant under ``path`` (same as passing ``path / subfolder``). If the variant
        folder has no tokenizer file, the repository root's is used.
    merge
        Bidirectional merge mode (``"gate"``, ``"concat"``, ``"mean"``, ``"sum"``) for checkpoints
        whose ``config.json`` does not state it; if it does, both must agree. When neither says and
        the weights have no ``aggr`` layer, ``"mean"`` is used with a warning: the published
        ``GeneMamba2`` sets ``config.mode = "mean"`` when no mode is given, and its cell-annotation
        script gives none.
    pooling
        Override the cell-embedding pooling (``"mean"`` or ``"cls"``); default from
        ``config.json`` (``embedding_pooling``), else ``"mean"`` (with a warning).
    keep_unk
        Keep the official unknown-gene token (``[UNK]``) as a vocabulary entry under its official
        name, with its trained rows, for the published tokenization that maps genes outside the
        vocabulary to it. By default it is dropped (listed in ``info["dropped_tokens"]``).
    identity_layers
        Build the encoder with ``block="official_identity"``: every layer returns its input, as in
        the ``EncoderLayer`` of the MineSelf2016/mamba_dev copy of the published code. Only for
        weights trained with that code (see ``docs/pretrained.md`` for how to tell).
    revision
        With a Hub repository id: the cached branch, tag or commit to read (default ``"main"``).
    cache_dir
        With a Hub repository id: the Hugging Face cache directory (default: where ``huggingface_hub``
        keeps it, ``$HF_HUB_CACHE`` or ``~/.cache/huggingface/hub``).

    Returns
    -------
    :class:`OfficialCheckpoint` ``(encoder_kwargs, encoder_state_dict, lm_head_state_dict, vocab,
    info)``; ``GeneMambaEncoder(**encoder_kwargs).load_state_dict(encoder_state_dict)`` loads
    strictly.

    Raises
    ------
    FileNotFoundError
        No config/weights/tokenizer (names what is missing and lists size variants found).
    ValueError
        Unknown or missing weight names (all listed), shapes that contradict ``config.json``, an
        unstated merge mode, a Mamba-1 checkpoint, pickle-only weights, or token ids that cannot be
        mapped onto our vocabulary.

    Notes
    -----
    Token ids are remapped: our vocabulary has ``<pad>=0, <cls>=1, <mask>=2`` and genes from 3;
    the official tokenizer's gene tokens keep their relative (official id) order. Embedding and
    LM-head rows (and LM-head bias) are permuted accordingly. Official ``[PAD]``/``[CLS]``/
    ``[MASK]`` rows are carried over to our specials. A ``<cls>`` or ``<mask>`` the official
    vocabulary lacks gets the mean of *all* official rows, specials included: the published
    ``MambaModel.resize_token_embeddings`` (genemamba/models/models.py of xiamengxxx/GeneMamba),
    which its cell classifier calls after adding ``[CLS]``, sets the new embedding row and the new
    LM-head weight row to ``torch.mean(old_weight, dim=0)`` over every existing row. (Its new
    LM-head *bias* is a fresh ``nn.Linear`` initialisation for every token; we use the mean of the
    official biases instead.) A missing ``<pad>`` gets zeros. Official tokens with no counterpart
    (``[UNK]`` unless ``keep_unk``, ...) are dropped and listed in ``info["dropped_tokens"]``.

    Assumptions (a merge mode or pooling the checkpoint does not state) are warned about with a
    :class:`UserWarning` and listed in ``info["assumptions"]``.
    """
    root, subfolder = _checkpoint_root(path, subfolder, revision, cache_dir)
    directory = root / subfolder if subfolder else root
    if not directory.is_dir():
        raise FileNotFoundError(_no_directory_message(path, root, subfolder, cache_dir))
    if is_our_checkpoint(directory):
        raise ValueError(
            f"{directory} was written by GeneMambaModel.save (genemamba-scvi's own format), not by the official "
            "GeneMamba code: load it with GeneMambaModel.load(path, adata=...) (or read_checkpoint)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        variants = _size_variants(directory)
        hint = f"; size variants found here: {', '.join(variants)} (pass subfolder=...)" if variants else ""
        ours = sorted(p.name for p in directory.iterdir() if p.is_dir() and is_our_checkpoint(p))
        if ours and not hint:  # e.g. a demo's output folder, whose model is model/ (repro probe)
            hint = f"; {directory / ours[0]} is a model saved by GeneMambaModel.save: pass that folder"
        raise FileNotFoundError(f"{CONFIG_FILE} is missing from {directory}{hint}")
    verify_cached_files(directory, root)  # a Hub-cache snapshot's files against the hashes they are stored under
    config = _load_json(config_path)
    raw, weight_files = _load_official_weights(directory)
    tokens, specials_declared, tokenizer_file = _load_official_tokens(directory)
    notes: list[str] = []
    assumptions: list[str] = []

    backbone, lm_head, prefix = _split_official_keys(raw)
    n_rows, d_model = backbone["embedding.weight"].shape
    geometry = _infer_geometry(backbone, d_model)
    kwargs_cfg = _config_values(config)
    n_layers = geometry.pop("n_layers")
    for name, inferred in (("d_model", d_model), ("n_layers", n_layers), ("vocab_size", n_rows), *geometry.items()):
        stated = kwargs_cfg.get(name)
        if stated is not None and stated != inferred:
            raise ValueError(f"{config_path}: {name}={stated} but the weights in {directory} imply {name}={inferred}")
    if kwargs_cfg.get("ngroups") not in (None, 1):
        raise ValueError(f"{config_path}: ngroups={kwargs_cfg['ngroups']} is not supported (Mamba2 default is 1)")

    has_shared = "merge.weight" in backbone
    has_layer = any(k.startswith("layers.") and ".merge." in k for k in backbone)
    merge_mode = _resolve_merge(kwargs_cfg.get("merge"), merge, has_shared or has_layer, config_path)
    if kwargs_cfg.get("merge") is None and merge is None:
        assumptions.append(
            f"{config_path} states no bidirectional merge mode and the weights have no 'aggr' layer: "
            "assuming merge='mean', the published code's default when no mode is given (GeneMamba2 in "
            "genemamba/models/models.py); pass merge='sum' if the weights were trained with the sum merge"
        )
    if has_layer and has_shared:
        raise ValueError(f"{directory}: both a shared 'aggr' and per-layer 'aggr' weights were found")
    shared_merge = not has_layer

    _check_complete(backbone, n_layers, merge_mode, shared_merge, prefix, weight_files)

    pool = pooling if pooling is not None else kwargs_cfg.get("pooling")
    if pool is None:
        pool = "mean"
        assumptions.append(
            f"{config_path} states no embedding pooling: assuming mean pooling, as the published "
            "embedding example (examples/1_extract_embeddings.py of mineself2016/GeneMamba, "
            "embedding_pooling='mean') and ALGORITHM.md do; pass pooling='cls' for the first-position "
            "[CLS] state that the published cell-annotation script uses"
        )
    if str(pool).lower() not in _POOLING:
        raise ValueError(f"unsupported pooling {pool!r}; expected one of {sorted(_POOLING)}")
    pool = _POOLING[str(pool).lower()]

    vocab, src_rows, remap_info = _official_vocab_map(
        tokens, specials_declared, n_rows, kwargs_cfg.get("pad_token_id"), keep_unk=keep_unk
    )
    state_dict = dict(backbone)
    state_dict["embedding.weight"] = _gather_rows(
        backbone["embedding.weight"], src_rows, remap_info, vocab, "embedding"
    )
    lm_state = None
    if lm_head:
        w = lm_head.get("weight")
        if w is None or w.shape != (n_rows, d_model):
            shape = None if w is None else tuple(w.shape)
            raise ValueError(f"lm_head.weight has shape {shape}, expected {(n_rows, d_model)}")
        lm_state = {"weight": _gather_rows(w, src_rows, remap_info, vocab, "lm_head")}
        if "bias" in lm_head:
            lm_state["bias"] = _gather_rows(lm_head["bias"], src_rows, remap_info, vocab, "lm_head")
    else:
        notes.append("the checkpoint has no lm_head (backbone only)")
    at_init = _layers_at_init(backbone, n_layers)
    warn = list(assumptions)
    if at_init and not identity_layers:
        warn.append(
            "every layer's mixer still has mamba_ssm's initial D = 1 and norm weight = 1: the layers were "
            "probably never trained, as happens with the identity-layer variant (identity_layers=True); "
            "see 'The identity-layer variant: which one do I have?' in docs/pretrained.md"
        )
        notes.append(warn[-1])
    for text in warn:
        warnings.warn(text, UserWarning, stacklevel=2)

    encoder_kwargs = {
        "vocab_size": len(vocab),
        "d_model": d_model,
        "n_layers": n_layers,
        **geometry,
        "chunk_size": int(kwargs_cfg.get("chunk_size") or 256),
        "bidirectional": True,
        "merge": merge_mode,
        "shared_merge": shared_merge,
        "block": "official_identity" if identity_layers else "official",
        "pooling": pool,
    }
    info = {
        "source": str(directory),
        "weights_files": [str(p) for p in weight_files],
        "tokenizer_file": str(tokenizer_file),
        "key_prefix": prefix,
        "config": config,
        "notes": notes,
        "assumptions": assumptions,
        "layers_at_init": at_init,
        **remap_info,
    }
    return OfficialCheckpoint(encoder_kwargs, state_dict, lm_state, vocab, info)


def _checkpoint_root(
    path: str | os.PathLike, subfolder: str | None, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[Path, str | None]:
    """The directory ``path`` names (a local one, else a Hub id's cached snapshot) and the subfolder under it.

    ``"owner/name/sub"`` that is not a local path, with ``owner/name`` in the Hub cache (or with ``revision=`` or
    ``cache_dir=`` given), is the cached repository with ``sub`` as the subfolder (in front of ``subfolder``).
    """
    root = Path(path).expanduser()
    hub_options = revision is not None or cache_dir is not None
    if not root.is_dir():
        local_parent = root.parent != Path(".") and root.parent.is_dir()  # "models/<name>" or "GeneMamba/<variant>"
        if looks_like_repo_id(path) and (hub_options or hub_repo_dir(str(path)).is_dir() or not local_parent):
            return resolve_hub_snapshot(str(path), revision=revision, cache_dir=cache_dir), subfolder
        split = split_repo_subfolder(path)
        if split is not None and (hub_options or hub_repo_dir(split[0], cache_dir).is_dir()):
            repo_id, rest = split
            snapshot = resolve_hub_snapshot(repo_id, revision=revision, cache_dir=cache_dir)
            return snapshot, f"{rest}/{subfolder}" if subfolder else rest
    if hub_options:
        raise ValueError(f"revision= and cache_dir= select a Hub repository id's cached files; {path} is a local path")
    return root, subfolder


def _size_variants(directory: Path) -> list[str]:
    """Subfolders holding a published checkpoint's config.json (not models saved by GeneMambaModel.save)."""
    return sorted(p.name for p in directory.iterdir() if (p / CONFIG_FILE).is_file() and not is_our_checkpoint(p))


def _no_directory_message(
    path: str | os.PathLike, root: Path, subfolder: str | None, cache_dir: str | os.PathLike | None
) -> str:
    """Why ``root / subfolder`` is no checkpoint directory: the size variants there are, or where else it looked."""
    directory = root / subfolder if subfolder else root
    if subfolder and root.is_dir():
        variants = _size_variants(root)
        have = f"size variants there: {', '.join(variants)}" if variants else "no size variants there"
        return f"no size variant subfolder={subfolder!r} in {root} ({have}; a size variant has a {CONFIG_FILE})"
    split = split_repo_subfolder(path)
    if split is not None and not Path(split[0]).is_dir():
        return (
            f"no official checkpoint directory at {directory}; read as the Hugging Face repository {split[0]!r} "
            f"with subfolder={split[1]!r}, it is not in the Hugging Face cache either "
            f"({hub_repo_dir(split[0], cache_dir)} does not exist). genemamba-scvi never downloads: on a machine "
            f"with internet access run `huggingface-cli download {split[0]} --local-dir DIR`, copy DIR here and pass "
            f"DIR/{split[1]}"
        )
    if not directory.exists() and directory.parent.is_dir() and (variants := _size_variants(directory.parent)):
        return f"no official checkpoint directory at {directory}; checkpoint folders in {directory.parent}: " + (
            ", ".join(variants)
        )
    if not directory.exists() and directory.parent.is_dir():
        saved = sorted(p.name for p in directory.parent.iterdir() if is_our_checkpoint(p))
        if saved:
            return (
                f"no such directory: {directory} ({directory.parent} holds the saved models {', '.join(saved[:10])}; "
                "a saved model opens with GeneMambaModel.load)"
            )
    what = "is a file, not a directory" if directory.exists() else "does not exist"
    return (
        f"no official checkpoint directory at {directory} ({what}). A repository in the local Hugging Face cache "
        "is named by its id, 'owner/name' (e.g. 'mineself2016/GeneMamba'), a size variant of it by subfolder=... "
        "(or as 'owner/name/<variant>')"
    )


def _load_official_weights(directory: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    single = directory / WEIGHTS_FILE
    index = directory / f"{WEIGHTS_FILE}.index.json"
    if single.is_file():
        tensors, _ = _load_safetensors(single)
        return tensors, [single]
    if index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map'")
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"weight shards missing: {', '.join(missing)}")
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_load_safetensors(shard)[0])
        return out, shards
    pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
    if pickles:
        raise ValueError(
            f"{directory} has only pickle weights ({', '.join(sorted(pickles))}); genemamba-scvi never unpickles "
            "checkpoints. Convert them to model.safetensors in an environment you trust."
        )
    raise FileNotFoundError(f"{WEIGHTS_FILE} is missing from {directory}")


# tokenizer.json: Hugging Face; gene_tokenizer.json: the same format under the name used in the GitHub
# repository (MineSelf2016/mamba_dev, passed as --tokenizer_path to its scripts).
def _gather_rows(t: torch.Tensor, src: torch.Tensor, info: dict[str, Any], vocab: GeneVocab, what: str) -> torch.Tensor:
    out = t[src.clamp(min=0)].clone()
    # The mean over *every* official row, specials included, in the weights' dtype: what the published
    # MambaModel.resize_token_embeddings computes (torch.mean(old_embeddings.weight.data, dim=0)) for the
    # [CLS] row its cell classifier adds (genemamba/models/models.py of xiamengxxx/GeneMamba).
    compute = t if t.dtype in (torch.float32, torch.float64) else t.float()
    mean = compute.mean(dim=0).to(t.dtype)
    for role in info["filled_specials"]:
        our_id = {"pad": vocab.pad_id, "cls": vocab.cls_id, "mask": vocab.mask_id}[role]
        out[our_id] = 0 if (role == "pad" and what == "embedding") else mean
    return out.contiguous()


def _layers_at_init(backbone: dict[str, torch.Tensor], n_layers: int) -> bool:
    """True when every layer's ``D`` and gated-norm weight are exactly 1 (mamba_ssm's initial values).

    A layer whose output is discarded (the identity-layer variant) receives no gradient, so an optimiser
    without weight decay leaves these parameters at their initial values.
    """
    if n_layers == 0:
        return False
    for i in range(n_layers):
        for name in ("D", "norm.weight"):
            value = backbone.get(f"layers.{i}.mixer.{name}")
            if value is None or not bool(torch.all(value == 1)):
                return False
    return True


def _split_official_keys(
    raw: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Official names -> ours. Returns (backbone under our names, lm_head {weight,bias}, prefix)."""
    emb_keys = [k for k in raw if k.endswith("embeddings.weight") or k.endswith("embedding.weight")]
    emb_keys = [k for k in emb_keys if not k.startswith("lm_head")]
    if len(emb_keys) != 1:
        raise ValueError(
            "cannot find the token embedding in the official weights "
            f"(expected one '<prefix>embeddings.weight', found {emb_keys or 'none'})"
        )
    emb_key = emb_keys[0]
    prefix = (
        emb_key[: -len("embeddings.weight")]
        if emb_key.endswith("embeddings.weight")
        else emb_key[: -len("embedding.weight")]
    )
    backbone: dict[str, torch.Tensor] = {"embedding.weight": raw[emb_key]}
    lm_head: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    mamba1: list[str] = []
    for key, value in raw.items():
        if key == emb_key:
            continue
        for lm_prefix in ("lm_head.", f"{prefix}lm_head."):
            if key.startswith(lm_prefix) and key[len(lm_prefix) :] in ("weight", "bias"):
                lm_head[key[len(lm_prefix) :]] = value
                break
        else:
            if not key.startswith(prefix):
                unknown.append(key)
                continue
            rest = key[len(prefix) :]
            if rest == "norm_f.weight":
                backbone["norm_f.weight"] = value
            elif m := _SHARED_MERGE_KEY.match(rest):
                backbone[f"merge.{m.group(1)}"] = value
            elif m := _LAYER_MERGE_KEY.match(rest):
                backbone[f"layers.{int(m.group(1))}.merge.{m.group(2)}"] = value
            elif (m := _LAYER_KEY.match(rest)) and m.group(3) in MAMBA2_PARAMS:
                backbone[f"layers.{int(m.group(1))}.mixer.{m.group(3)}"] = value
            else:
                if m and m.group(3) in _MAMBA1_ONLY:
                    mamba1.append(key)
                unknown.append(key)
    if mamba1:
        raise ValueError(
            f"the checkpoint's layers are Mamba-1 blocks ({', '.join(sorted(mamba1)[:3])}, ...); "
            "only Mamba-2 GeneMamba checkpoints can be loaded"
        )
    if unknown:
        raise ValueError(f"unknown keys in the official checkpoint ({len(unknown)}): {', '.join(sorted(unknown))}")
    return backbone, lm_head, prefix


def _infer_geometry(backbone: dict[str, torch.Tensor], d_model: int) -> dict[str, int]:
    layer_ids = sorted({int(k.split(".")[1]) for k in backbone if k.startswith("layers.")})
    if layer_ids != list(range(len(layer_ids))):
        raise ValueError(f"layer indices in the official checkpoint are not 0..n-1: {layer_ids}")
    geometry = {"n_layers": len(layer_ids)}
    if not layer_ids:
        return geometry
    try:
        a_log = backbone["layers.0.mixer.A_log"]
        conv = backbone["layers.0.mixer.conv1d.weight"]
        out_proj = backbone["layers.0.mixer.out_proj.weight"]
        in_proj = backbone["layers.0.mixer.in_proj.weight"]
    except KeyError as err:
        raise ValueError(f"missing keys in the official checkpoint: layer 0 has no {err.args[0]}") from err
    nheads = a_log.shape[0]
    d_inner = out_proj.shape[1]
    conv_dim, d_conv = conv.shape[0], conv.shape[-1]
    d_state, rem = divmod(conv_dim - d_inner, 2)
    if rem or d_state <= 0 or d_inner % nheads or d_inner % d_model:
        raise ValueError(
            f"layer 0 shapes are not those of a Mamba2 mixer with ngroups=1 (A_log {tuple(a_log.shape)}, "
            f"conv1d {tuple(conv.shape)}, out_proj {tuple(out_proj.shape)})"
        )
    if in_proj.shape != (2 * d_inner + 2 * d_state + nheads, d_model):
        raise ValueError(f"layer 0 in_proj.weight has shape {tuple(in_proj.shape)}, inconsistent with the other shapes")
    geometry.update(d_state=d_state, d_conv=d_conv, expand=d_inner // d_model, headdim=d_inner // nheads)
    return geometry


def _config_values(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, aliases in _CONFIG_ALIASES.items():
        for alias in aliases:
            if config.get(alias) is not None:
                out[name] = config[alias]
                break
    return out


def _resolve_merge(stated: Any, override: str | None, has_weights: bool, config_path: Path) -> str:
    mode = None if stated is None else str(stated).lower()
    if override is not None:
        if override not in _MERGE_MODES:
            raise ValueError(f"merge must be one of {_MERGE_MODES}, got {override!r}")
        if mode is not None and mode != override:
            raise ValueError(f"{config_path} says merge mode {mode!r} but merge={override!r} was passed")
        mode = override
    if mode is None and not has_weights:
        # the published default: GeneMamba2.__init__ sets config.mode = "mean" when no mode is given
        # (genemamba/models/models.py of xiamengxxx/GeneMamba); the caller warns about the assumption
        mode = "mean"
    if mode is None:
        # The published code itself would fail here: with its default "mean" it builds no 'aggr' layer
        # and load_state_dict(strict) refuses the checkpoint's aggr weights. Gate and concat share them.
        raise ValueError(
            f"{config_path} does not state the bidirectional merge mode and the weights (which have an "
            "'aggr' layer) cannot tell 'gate' or 'concat' apart; pass merge='gate' or merge='concat'"
        )
    if mode not in _MERGE_MODES:
        raise ValueError(f"{config_path}: unknown merge mode {mode!r}; expected one of {_MERGE_MODES}")
    if (mode in _MERGE_WITH_WEIGHTS) != has_weights:
        state = "has" if has_weights else "has no"
        raise ValueError(f"merge mode {mode!r} contradicts the weights: the checkpoint {state} 'aggr' weights")
    return mode


def _check_complete(
    backbone: dict[str, torch.Tensor], n_layers: int, merge: str, shared: bool, prefix: str, files: list[Path]
) -> None:
    expected = {"embedding.weight", "norm_f.weight"}
    for i in range(n_layers):
        expected.update(f"layers.{i}.mixer.{p}" for p in MAMBA2_PARAMS)
        if merge in _MERGE_WITH_WEIGHTS and not shared:
            expected.update({f"layers.{i}.merge.weight", f"layers.{i}.merge.bias"})
    if merge in _MERGE_WITH_WEIGHTS and shared:
        expected.update({"merge.weight", "merge.bias"})
    missing = sorted(expected - set(backbone))
    if missing:
        names = [_official_name(k, prefix) for k in missing]
        raise ValueError(
            f"missing keys in the official checkpoint {', '.join(str(f) for f in files)} "
            f"({len(names)}): {', '.join(names)}"
        )
    extra = sorted(set(backbone) - expected)
    if extra:
        names = [_official_name(k, prefix) for k in extra]
        raise ValueError(f"unexpected keys in the official checkpoint ({len(names)}): {', '.join(names)}")


def _official_name(ours: str, prefix: str) -> str:
    if ours == "embedding.weight":
        return f"{prefix}embeddings.weight"
    if ours.startswith("merge."):
        return f"{prefix}mamba_mixer.aggr.{ours.split('.')[-1]}"
    if m := re.match(r"^layers\.(\d+)\.mixer\.(.+)$", ours):
        return f"{prefix}mamba_mixer.layers.{m.group(1)}.mamba.{m.group(2)}"
    if m := re.match(r"^layers\.(\d+)\.merge\.(.+)$", ours):
        return f"{prefix}mamba_mixer.layers.{m.group(1)}.aggr.{m.group(2)}"
    return f"{prefix}{ours}"
