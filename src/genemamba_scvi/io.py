"""Checkpoint directories: our own format and the official GeneMamba (Hugging Face) layout.

Two formats live here.

**Our format** (used by ``GeneMambaModel.save`` / ``load``), one directory::

    config.json          model configuration (whatever the caller passes, JSON)
    model.safetensors    the state dict (tied tensors stored once, see below)
    vocab.json           the GeneVocab
    gene_medians.npy     per-gene non-zero medians (float64, optional, never pickled)
    extra.json           anything else (scvi registry, attributes, label names)
    checksums.json       format name/version and the sha256 of every file above

Writes are atomic: everything goes into a hidden temporary sibling directory (same parent, so the
same file system), files and directory are fsync'ed, and only then is the directory renamed into
place. With ``overwrite=True`` the new directory is swapped in with one atomic
``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: old renamed aside, new renamed in, old
deleted), so a crash at any point leaves either the complete old or the complete new model.
Only the files above are ever replaced: anything else a user keeps in the directory is hard-linked
(copied where links are impossible) into the new directory before the swap, so it survives unchanged.
Reading verifies every checksum before anything is parsed, and nothing is ever unpickled.

**Official layout** (``mineself2016/GeneMamba`` on the Hugging Face Hub and the ``MambaModel``
of ``xiamengxxx/GeneMamba``): ``config.json``, ``model.safetensors`` and ``tokenizer.json``
(GitHub: ``gene_tokenizer.json``; or ``vocab.json`` / ``vocab.txt``), optionally
``special_tokens_map.json`` and ``tokenizer_config.json``. :func:`read_official_checkpoint` maps it onto
:class:`~genemamba_scvi.nn.GeneMambaEncoder` (``block="official"``) and our :class:`GeneVocab`;
:func:`write_official_checkpoint` writes that layout (used by the tests to fabricate official
checkpoints, since the real weights cannot be downloaded here). See ``docs/pretrained.md``.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import safetensors
import safetensors.torch
import torch

if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "Checkpoint",
    "OfficialCheckpoint",
    "read_checkpoint",
    "read_official_checkpoint",
    "write_checkpoint",
    "write_official_checkpoint",
]

CHECKPOINT_FORMAT = "genemamba-scvi-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
MEDIANS_FILE = "gene_medians.npy"
EXTRA_FILE = "extra.json"
CHECKSUMS_FILE = "checksums.json"
_REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, EXTRA_FILE)
_OWN_FILES = frozenset({*_REQUIRED_FILES, MEDIANS_FILE, CHECKSUMS_FILE})  # all that write_checkpoint replaces

_ALIAS_METADATA_KEY = "genemamba_scvi.aliases"

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


# ----------------------------------------------------------------------------------------------
# our checkpoint format
# ----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The content of one checkpoint directory in our format.

    Attributes
    ----------
    state_dict
        Tensors by name (tied names point at the same tensor again).
    config
        The model configuration as written.
    vocab
        The gene vocabulary.
    gene_medians
        Per-gene non-zero medians (float64), or ``None`` if none were saved.
    extra
        Everything else that was saved (scvi registry, attributes, label names, ...).
    path
        The directory it was read from.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    vocab: GeneVocab
    gene_medians: np.ndarray | None
    extra: dict[str, Any]
    path: Path | None = field(default=None, repr=False)


def write_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    vocab: GeneVocab,
    gene_medians: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory in our format, atomically.

    Parameters
    ----------
    path
        The directory to create.
    state_dict
        Module state dict. Tensors are detached, moved to the CPU and made contiguous; tensors that
        share memory (tied weights) are stored once and restored as one tensor by
        :func:`read_checkpoint`.
    config
        JSON-serialisable model configuration.
    vocab
        The gene vocabulary (``GeneVocab``).
    gene_medians
        Per-gene non-zero medians, 1-D; stored as float64 ``.npy`` (read without pickle).
    extra
        JSON-serialisable extras. numpy arrays/scalars and pandas indexes are converted to lists /
        Python scalars, so they come back as lists.
    overwrite
        Write into an existing directory, replacing the checkpoint files there (the files listed in
        the module docstring). Every other file or folder in it is kept. Without it an existing
        ``path`` raises :class:`FileExistsError` and nothing is touched.

    Returns
    -------
    The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    ValueError
        Something is not serialisable, or ``overwrite`` would replace a file of a checkpoint's name
        (``config.json``, ...) in a directory that is not a checkpoint of this format.
    """
    path = Path(path)
    _check_target(path, overwrite, looks_like=lambda p: True, what="genemamba-scvi checkpoint")
    if overwrite and path.is_dir() and not (path / CHECKSUMS_FILE).is_file():
        clash = sorted(name for name in _OWN_FILES if (path / name).exists())
        if clash:
            raise ValueError(
                f"refusing to overwrite {', '.join(clash)} in {path}: it is not a genemamba-scvi checkpoint "
                "directory, so these files are not ours to replace; save to another directory"
            )
    # Serialise everything up front so that bad input fails before any file is created.
    tensors, aliases = _prepare_tensors(state_dict)
    config_text = _dumps(dict(config), "config")
    extra_text = _dumps(dict(extra or {}), "extra")
    medians = None
    if gene_medians is not None:
        medians = np.asarray(gene_medians, dtype=np.float64)
        if medians.ndim != 1:
            raise ValueError(f"gene_medians must be 1-D, got shape {medians.shape}")

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        metadata = {"format": CHECKPOINT_FORMAT, _ALIAS_METADATA_KEY: json.dumps(aliases, sort_keys=True)}
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        vocab.to_json(tmp / VOCAB_FILE)
        if medians is not None:
            with open(tmp / MEDIANS_FILE, "wb") as fh:
                np.save(fh, medians, allow_pickle=False)
        (tmp / EXTRA_FILE).write_text(extra_text, encoding="utf-8")
        names = [*_REQUIRED_FILES, *([MEDIANS_FILE] if medians is not None else [])]
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "algorithm": "sha256",
            "files": {name: _sha256(tmp / name) for name in sorted(names)},
        }
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")

    _atomic_write_dir(path, fill, overwrite, own_files=_OWN_FILES | _manifest_files(path))
    return path


def _manifest_files(path: Path) -> set[str]:
    """Names listed in the checksums manifest of an existing checkpoint directory (empty if none)."""
    try:
        files = json.loads((path / CHECKSUMS_FILE).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def read_checkpoint(path: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Read a model directory written by :func:`write_checkpoint`.

    Parameters
    ----------
    path
        The checkpoint directory.
    verify
        Check the sha256 of every file against ``checksums.json`` before parsing (default).

    Returns
    -------
    The :class:`Checkpoint`.

    Raises
    ------
    FileNotFoundError
        The directory or one of its files is missing (the message names what is missing).
    ValueError
        A checksum does not match (tampered or truncated file), a file is corrupt, or the format
        is not ours.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint directory at {path}{_interrupted_hint(path)}")
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} is not a directory")
    manifest_path = path / CHECKSUMS_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{CHECKSUMS_FILE} is missing from checkpoint directory {path}")
    manifest = _load_json(manifest_path)
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{manifest_path} is not a {CHECKPOINT_FORMAT} manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}; this genemamba-scvi reads up to "
            f"{CHECKPOINT_FORMAT_VERSION} (upgrade genemamba-scvi)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{manifest_path} has no 'files' table")
    missing = [name for name in sorted({*_REQUIRED_FILES, *files}) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is missing {', '.join(missing)}")
    uncovered = [name for name in _REQUIRED_FILES if name not in files]
    if uncovered:
        raise ValueError(f"{manifest_path} has no checksum for {', '.join(uncovered)}")
    if verify:
        for name, expected in files.items():
            actual = _sha256(path / name)
            if actual != expected:
                raise ValueError(
                    f"checksum mismatch for {path / name}: expected sha256 {expected}, got {actual} "
                    "(the file was modified or truncated after saving)"
                )

    config = _load_json(path / CONFIG_FILE)
    extra = _load_json(path / EXTRA_FILE)
    state_dict, metadata = _load_safetensors(path / WEIGHTS_FILE)
    aliases = json.loads(metadata.get(_ALIAS_METADATA_KEY, "{}"))
    for alias, target in aliases.items():
        if target not in state_dict:
            raise ValueError(f"{path / WEIGHTS_FILE}: tied tensor {alias!r} points at missing {target!r}")
        state_dict[alias] = state_dict[target]
    from genemamba_scvi.data.vocab import GeneVocab

    try:
        vocab = GeneVocab.from_json(path / VOCAB_FILE)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"corrupt vocabulary file {path / VOCAB_FILE}: {err}") from err
    gene_medians = None
    if MEDIANS_FILE in files:
        try:
            gene_medians = np.load(path / MEDIANS_FILE, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"corrupt gene medians file {path / MEDIANS_FILE}: {err}") from err
    return Checkpoint(state_dict, config, vocab, gene_medians, extra, path)


# ----------------------------------------------------------------------------------------------
# official GeneMamba layout
# ----------------------------------------------------------------------------------------------


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
_SPECIAL_ROLES = ("pad", "unk", "cls", "mask", "sep", "bos", "eos")
_SPECIAL_PATTERN = re.compile(r"^(?:\[([A-Za-z_]+)\]|<\|?([A-Za-z_]+)\|?>)$")
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
) -> OfficialCheckpoint:
    """Read an official GeneMamba checkpoint directory and map it onto our encoder and vocabulary.

    Parameters
    ----------
    path
        The downloaded repository (``huggingface-cli download mineself2016/GeneMamba --local-dir
        path``) or one of its size-variant subfolders.
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
    root = Path(path)
    directory = root / subfolder if subfolder else root
    if not directory.is_dir():
        raise FileNotFoundError(f"no official checkpoint directory at {directory}")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        variants = sorted(p.name for p in directory.iterdir() if (p / CONFIG_FILE).is_file())
        hint = f"; size variants found here: {', '.join(variants)} (pass subfolder=...)" if variants else ""
        raise FileNotFoundError(f"{CONFIG_FILE} is missing from {directory}{hint}")
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


# ----------------------------------------------------------------------------------------------
# official layout: helpers
# ----------------------------------------------------------------------------------------------


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
_TOKENIZER_FILES = ("tokenizer.json", "gene_tokenizer.json", "vocab.json", "vocab.txt")


def _load_official_tokens(directory: Path) -> tuple[dict[str, int], dict[str, str], Path]:
    """Token -> id from tokenizer.json / gene_tokenizer.json (any HF tokenizers model), vocab.json or vocab.txt.

    A size-variant subfolder without its own tokenizer uses the repository root's (its parent).
    """
    folders = (directory, directory.parent)
    for folder in folders:
        for name in _TOKENIZER_FILES:
            candidate = folder / name
            if candidate.is_file():
                tokens, declared = _parse_tokenizer_file(candidate)
                for extra in ("tokenizer_config.json", "special_tokens_map.json"):
                    if (folder / extra).is_file():
                        declared.update(_declared_specials(_load_json(folder / extra)))
                return tokens, declared, candidate
    raise FileNotFoundError(f"no {', '.join(_TOKENIZER_FILES)} in {directory} or {directory.parent}")


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


# ----------------------------------------------------------------------------------------------
# shared helpers: tensors, json, hashing, atomic directories
# ----------------------------------------------------------------------------------------------


def _prepare_tensors(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Detach, move to CPU, make contiguous; tensors that are the same view are stored once."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple[str, int]] = set()
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise ValueError(f"state dict keys must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        if tensor.numel() > 0:
            storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
            view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
            if storage in storages:
                tensor = tensor.clone()  # overlapping but different view: store a copy
            storages.add(storage)
        tensors[name] = tensor.to("cpu").contiguous()
    return tensors, aliases


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises SafetensorError / OSError / ValueError on corrupt input
        raise ValueError(f"corrupt safetensors file {path}: {err}") from err
    return tensors, metadata


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # pandas Index / Categorical
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not JSON serialisable: {err}") from err


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt JSON file {path}: {err}") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_target(path: Path, overwrite: bool, looks_like: Callable[[Path], bool], what: str) -> None:
    if not path.exists() and not path.is_symlink():
        if not path.parent.is_dir():
            raise FileNotFoundError(f"parent directory {path.parent} does not exist")
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"refusing to overwrite {path}: it is not a directory")
    if any(path.iterdir()) and not looks_like(path):
        raise ValueError(f"refusing to overwrite {path}: it does not look like a {what} directory")


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where unavailable (other OS, old kernel/libc, unsupported fs)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directories. False if the platform cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` to a not-yet-existing ``dst`` without ever replacing a directory."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if dst.exists():
            raise FileExistsError(f"{dst} already exists")
        os.rename(src, dst)


def _keep_user_entries(old: Path, new: Path, own_files: Collection[str]) -> None:
    """Hard-link (or copy) every entry of ``old`` not named in ``own_files`` into ``new``, recursively."""
    for entry in old.iterdir():
        if entry.name not in own_files and not (new / entry.name).exists():
            _link_tree(entry, new / entry.name)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in src.iterdir():
            _link_tree(entry, dst / entry.name)
        shutil.copystat(src, dst)
    else:
        try:
            os.link(src, dst)  # same file system (sibling directory): the data is never copied or lost
        except OSError:
            shutil.copy2(src, dst)


def _atomic_write_dir(
    path: Path, fill: Callable[[Path], None], overwrite: bool, own_files: Collection[str] | None = None
) -> None:
    """Write a directory atomically with ``fill``; see the module docstring.

    With ``own_files``, overwriting keeps every entry of the old directory that is not named there.
    """
    parent = path.parent
    tmp = parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        fill(tmp)
        for child in tmp.iterdir():
            _fsync_path(child)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            if own_files is not None:
                _keep_user_entries(path, tmp, own_files)
        _fsync_path(tmp)
        if path.exists():
            if _exchange_dirs(tmp, path):
                _fsync_path(parent)  # tmp now holds the old model
            else:
                aside = parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(path, aside)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(aside, path)
                    raise
                _fsync_path(parent)
                shutil.rmtree(aside, ignore_errors=True)
        else:
            _move_into_place(tmp, path)
            _fsync_path(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _interrupted_hint(path: Path) -> str:
    if not path.parent.is_dir():
        return ""
    leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
    if leftovers:
        return f" (an interrupted overwrite left the previous model at {leftovers[-1]})"
    return ""
