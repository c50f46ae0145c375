"""Our checkpoint format (``GeneMambaModel.save`` / ``load``); see :mod:`genemamba_scvi.io`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from genemamba_scvi.io._files import (
    _atomic_write_dir,
    _check_target,
    _dumps,
    _interrupted_hint,
    _load_json,
    _load_safetensors,
    _prepare_tensors,
    _sha256,
    nearest_existing,
    new_folder_error,
    refuse_file_on_the_way,
)

if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

CHECKPOINT_FORMAT = "genemamba-scvi-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
MEDIANS_FILE = "gene_medians.npy"
EXTRA_FILE = "extra.json"
CHECKSUMS_FILE = "checksums.json"
ANNDATA_FILE = "adata.h5ad"  # written by ``GeneMambaModel.save(save_anndata=True)``, listed in the manifest
_REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, EXTRA_FILE)
_OWN_FILES = frozenset({*_REQUIRED_FILES, MEDIANS_FILE, CHECKSUMS_FILE})  # all that write_checkpoint replaces

_ALIAS_METADATA_KEY = "genemamba_scvi.aliases"


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
    files
        The files its checksum manifest lists (and that were verified), e.g. ``adata.h5ad`` when it was saved.
    manifest
        The bytes of its checksum manifest as read: a reader of more files from ``path`` (the saved AnnData) compares
        them afterwards to know that no save replaced the folder meanwhile (:func:`saved_again`).
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    vocab: GeneVocab
    gene_medians: np.ndarray | None
    extra: dict[str, Any]
    path: Path | None = field(default=None, repr=False)
    files: frozenset[str] = field(default=frozenset(), repr=False)
    manifest: bytes | None = field(default=None, repr=False)


def _sort_safetensors_metadata(path: Path) -> None:
    """Put the metadata of a safetensors file's header in key order, in place: the same weights, the same bytes.

    safetensors (0.7) writes the metadata from a Rust hash map, whose order changes from process to process, so the
    same model saved twice got different file checksums (serving probe: content-addressed stores and "did the model
    change?" checks saw a change). The header is rewritten only when its JSON re-serialises to the very bytes read
    (compact separators), so that nothing but the order can change; its length stays the same.
    """
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        text = raw.rstrip(b" ").decode("utf-8")
        header = json.loads(text)
        if json.dumps(header, separators=(",", ":"), ensure_ascii=False) != text or "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        out = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        fh.seek(8)
        fh.write(out + b" " * (n - len(out)))


def write_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    vocab: GeneVocab,
    gene_medians: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    extra_files: Mapping[str, Callable[[Path], None]] | None = None,
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
    extra_files
        More files to write into the directory, by name: each callable writes its file to the path it is
        given (e.g. ``{"adata.h5ad": adata.write_h5ad}``). They are written in the same atomic step, listed
        in the checksum manifest and verified by :func:`read_checkpoint`. A file of the same name left by
        an earlier save is replaced; when a later save does not write it, it is kept as an unlisted file.

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
    path = Path(path).expanduser().absolute()  # "." has itself as parent: the temporary sibling must be outside it
    if not path.exists() and not path.is_symlink():
        refuse_file_on_the_way(path.parent, "the folder to save into")
        path.parent.mkdir(parents=True, exist_ok=True)  # as scvi-tools' save: missing parents are created
    extra_files = dict(extra_files or {})
    check_checkpoint_target(path, overwrite, extra_files)
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
        try:
            safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        except safetensors.SafetensorError as err:  # its I/O errors are no OSError: a full disk, named as one
            if "No space left" in str(err) or "Disk quota" in str(err):
                full = f"no space left on the disk to write {tmp / WEIGHTS_FILE}"
                raise OSError(errno.ENOSPC, full, str(path)) from err
            raise
        _sort_safetensors_metadata(tmp / WEIGHTS_FILE)
        shutil.copymode(tmp / CONFIG_FILE, tmp / WEIGHTS_FILE)  # safetensors writes 0600; the umask's mode, as config
        vocab.to_json(tmp / VOCAB_FILE)
        if medians is not None:
            with open(tmp / MEDIANS_FILE, "wb") as fh:
                np.save(fh, medians, allow_pickle=False)
        (tmp / EXTRA_FILE).write_text(extra_text, encoding="utf-8")
        for name, write in extra_files.items():
            write(tmp / name)
        names = [*_REQUIRED_FILES, *([MEDIANS_FILE] if medians is not None else []), *extra_files]
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "algorithm": "sha256",
            "files": {name: _sha256(tmp / name) for name in sorted(names)},
        }
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")

    # files an earlier save listed but this one does not write (an old adata.h5ad) stay, unlisted
    own = (_OWN_FILES | _manifest_files(path) | set(extra_files)) - ({ANNDATA_FILE} - set(extra_files))
    _atomic_write_dir(path, fill, overwrite, own_files=own)
    return path


def check_checkpoint_target(path: str | os.PathLike, overwrite: bool, extra_files: Collection[str] = ()) -> None:
    """Raise now what :func:`write_checkpoint` to ``path`` would raise about the target (before hours of training).

    ``FileExistsError`` for an existing ``path`` without ``overwrite``; ``ValueError`` for a target that is not a
    directory, extra files named like the checkpoint's own, or files of a checkpoint's names (``config.json``, ...)
    in a directory that is not a checkpoint of this format. A missing ``path`` is fine.
    """
    path = Path(path)
    if path.exists() or path.is_symlink() or path.parent.is_dir():
        _check_target(path, overwrite, looks_like=lambda p: True, what="genemamba-scvi checkpoint")
    check_can_make_folders(path)
    bad = [name for name in extra_files if name in _OWN_FILES or "/" in name or name in ("", ".", "..")]
    if bad:
        raise ValueError(f"extra_files cannot be named {bad}: plain file names other than the checkpoint's own")
    if overwrite and path.is_dir() and not (path / CHECKSUMS_FILE).is_file():
        clash = sorted(name for name in (*_OWN_FILES, *extra_files) if (path / name).exists())
        if clash:
            raise ValueError(
                f"refusing to overwrite {', '.join(clash)} in {path}: it is not a genemamba-scvi checkpoint "
                "directory, so these files are not ours to replace; save to another directory"
            )


def check_can_make_folders(path: str | os.PathLike) -> None:
    """Refuse (``ValueError``) a ``path`` whose folder cannot take the hidden sibling folder a save writes first.

    A save writes ``.<name>.tmp-*`` beside ``path`` and swaps it in, so the folder holding ``path`` (or its nearest
    existing parent, where the missing ones are made) must take new folders. Tried, not judged by mode bits: root
    passes ``os.access`` on a read-only mount or ``/proc``. Before, a shared cluster user's ``pretrain`` trained to
    the end and then failed on that hidden path, and the run was lost (HPC probe).
    """
    path = Path(path).expanduser().absolute()
    folder = nearest_existing(path.parent)
    if (err := new_folder_error(folder)) is not None:
        raise ValueError(
            f"cannot save to {path}: {folder} takes no new folders ({err.strerror or err}); a save writes a hidden "
            f"folder beside {path.name} and swaps it in, so the folder holding it must be writable: choose another "
            "place"
        ) from None


def _manifest_files(path: Path) -> set[str]:
    """Names listed in the checksums manifest of an existing checkpoint directory (empty if none)."""
    try:
        files = json.loads((path / CHECKSUMS_FILE).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")}


def is_our_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a manifest of our format (checksums are not verified here)."""
    manifest = Path(path) / CHECKSUMS_FILE
    try:
        return manifest.is_file() and _load_json(manifest).get("format") == CHECKPOINT_FORMAT
    except (ValueError, AttributeError):
        return False


def looks_saved_by_load_side(path: str | os.PathLike) -> bool:
    """Whether ``path`` is for ``GeneMambaModel.load`` rather than ``from_pretrained``.

    Our manifest, or, without it, our ``extra.json`` (a copy that lost its manifest) or scvi-tools' ``model.pt``:
    ``load`` then names what is wrong.
    """
    path = Path(path)
    return is_our_checkpoint(path) or (path / EXTRA_FILE).is_file() or (path / "model.pt").is_file()


def _other_layout_hint(path: Path) -> str:
    """What a directory without our manifest holds instead, when it is recognisably another model format."""
    if (path / "model.pt").is_file():
        return ": it holds model.pt, a model saved by scvi-tools; load it with the scvi-tools class that saved it"
    prefixed = sorted(p.name[: -len("model")] for p in path.glob("?*model") if is_our_checkpoint(p))
    if prefixed:  # save(dir, prefix=...) writes into dir / f"{prefix}model"
        found = ", ".join(f"{p}model/" for p in prefixed)
        call = f"GeneMambaModel.load(path, prefix={prefixed[0]!r})"
        return f": it holds {found}, saved with a prefix; load it with {call}"
    scvi_prefixed = sorted(p.name for p in path.glob("?*model.pt"))
    if scvi_prefixed:
        return f": it holds {scvi_prefixed[0]}, a model saved by scvi-tools with a prefix; load it with that class"
    weights = (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json", "pytorch_model.bin")
    has_weights = any((path / w).is_file() for w in weights)
    if has_weights and (path / CONFIG_FILE).is_file() and not (path / EXTRA_FILE).is_file():
        return (
            ": it looks like an official GeneMamba checkpoint (Hugging Face / GitHub layout); load it with "
            "GeneMambaModel.from_pretrained(path, adata)"
        )
    return ""


def _load_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (``{...}``), else a ValueError naming the file."""
    value = _load_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"corrupt JSON file {path}: it holds a {type(value).__name__}, not an object ({{...}})")
    return value


def read_checkpoint(path: str | os.PathLike, verify: bool = True, skip: Collection[str] = ()) -> Checkpoint:
    """Read a model directory written by :func:`write_checkpoint`.

    Parameters
    ----------
    path
        The checkpoint directory.
    verify
        Check the sha256 of every file against ``checksums.json`` before parsing (default).
    skip
        Files of the manifest this read does not need (``adata.h5ad`` when the caller brings its own AnnData):
        neither required nor verified, so a model whose saved AnnData was deleted or made unreadable still loads.

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

    A save into ``path`` while it is read (a service reloading a model a training job saves again) is detected by
    its checksum manifest changing during the read; the read then starts over (three tries), so it never returns
    files of two saves mixed, nor blames the files of an intact model.
    """
    path = Path(path).expanduser()
    for attempt in range(3):
        before = _manifest_bytes(path)
        try:
            checkpoint = _read_checkpoint_once(path, verify, frozenset(skip))
        except (ValueError, FileNotFoundError) as err:
            if _manifest_bytes(path) == before:
                raise
            if attempt == 2:
                raise ValueError(_SAVED_AGAIN.format(path=path)) from err
        else:
            if _manifest_bytes(path) == before:
                checkpoint.manifest = before
                return checkpoint
        time.sleep(0.05 * (attempt + 1))
    raise ValueError(_SAVED_AGAIN.format(path=path))


_SAVED_AGAIN = "checkpoint {path} was saved again while it was read, three times running: load it again"


def saved_again(checkpoint: Checkpoint) -> bool:
    """Whether a save replaced ``checkpoint``'s folder since it was read (its manifest changed)."""
    return checkpoint.path is not None and _manifest_bytes(checkpoint.path) != checkpoint.manifest


def _manifest_bytes(path: Path) -> bytes | None:
    """The checksum manifest's bytes (None where there is none): which save a folder holds."""
    try:
        return (path / CHECKSUMS_FILE).read_bytes()
    except OSError:
        return None


def _read_checkpoint_once(path: Path, verify: bool, skip: frozenset[str]) -> Checkpoint:
    """:func:`read_checkpoint` without the check for a concurrent save."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint directory at {path}{_interrupted_hint(path)}")
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} is not a directory")
    manifest_path = path / CHECKSUMS_FILE
    if not manifest_path.is_file():
        hint = _other_layout_hint(path)
        raise FileNotFoundError(f"{CHECKSUMS_FILE} is missing from checkpoint directory {path}{hint}")
    manifest = _load_json_object(manifest_path)
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
    needed = {name: digest for name, digest in files.items() if name not in skip or name in _REQUIRED_FILES}
    missing = [name for name in sorted({*_REQUIRED_FILES, *needed}) if not (path / name).is_file()]
    if missing:
        hint = " (the AnnData saved with the model: pass adata= to load it without)" if ANNDATA_FILE in missing else ""
        raise FileNotFoundError(f"checkpoint {path} is missing {', '.join(missing)}{hint}")
    uncovered = [name for name in _REQUIRED_FILES if name not in files]
    if uncovered:
        raise ValueError(f"{manifest_path} has no checksum for {', '.join(uncovered)}")
    if verify:
        for name, expected in needed.items():
            actual = _sha256(path / name)
            if actual != expected:
                raise ValueError(
                    f"checksum mismatch for {path / name}: expected sha256 {expected}, got {actual} "
                    "(the file was modified or truncated after saving)"
                )

    config = _load_json_object(path / CONFIG_FILE)
    extra = _load_json_object(path / EXTRA_FILE)
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
    return Checkpoint(state_dict, config, vocab, gene_medians, extra, path, frozenset(files))
