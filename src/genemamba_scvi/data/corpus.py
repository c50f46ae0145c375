"""Tokenized pre-training corpus on disk: stream many ``.h5ad`` files into fixed-width token shards.

:func:`build_corpus` turns a collection of ``.h5ad`` files of raw counts (any number, any size) into
token shards that :class:`~genemamba_scvi.pretrain.CorpusDataModule` memory-maps for pre-training. Memory
is bounded by one row chunk (``chunk_size`` cells), never by a file or by the corpus:

1. **Files.** Each input is opened with ``h5py`` (``X`` or ``layers/<layer>``, CSR/CSC groups through
   :func:`anndata.io.sparse_dataset`, dense datasets sliced directly) and read ``chunk_size`` rows at a
   time. Its genes (``var_names`` or a ``var`` column) are mapped to the vocabulary with
   :meth:`GeneVocab.match <genemamba_scvi.data.vocab.GeneVocab.match>` (symbols or Ensembl ids, any order).
2. **Medians.** Unless given, the per-token non-zero medians of ``count / cell total`` are computed in a
   first streaming pass (:class:`~genemamba_scvi.data.normalize.GeneMedianAccumulator`, t-digest by default:
   memory bounded by the vocabulary, not by the number of cells).
3. **Shards.** Each file is cut into shards of ``shard_size`` consecutive rows. A shard is a directory
   ``shards/shard_000012/`` holding ``tokens.npy`` (``[rows, max_genes]``, ``uint16`` when the vocabulary
   has at most 65,536 tokens, else ``int32``, right-padded with 0) and ``lengths.npy`` (``int32 [rows]``).
   Row ``i`` of a shard is row ``row_start + i`` of its input file, so every cell stays traceable;
   cells whose tokenization is empty (zero counts, or no expressed vocabulary gene) keep their row with
   length 0 and are skipped by the data loader.
4. **Atomicity and resume.** A shard is written into a temporary directory, flushed, and renamed into
   place; only then is it recorded in ``manifest.json`` (itself replaced atomically). Re-running the same
   command after a crash checks that the configuration matches the manifest (``ValueError`` naming every
   difference otherwise), deletes half-written or unrecorded shards, and writes only the missing ones:
   no cell is lost or duplicated.

The output directory holds ``manifest.json``, ``vocab.json``, ``gene_medians.npy`` (float64 per token id)
and ``shards/``. :class:`TokenCorpus` reads it back (memory-mapped, numpy only).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from .normalize import GeneMedianAccumulator, validate_counts
from .tokenize import rank_tokenize
from .vocab import GeneVocab

__all__ = ["CORPUS_FORMAT", "CORPUS_VERSION", "Manifest", "TokenCorpus", "build_corpus", "resolve_inputs"]

logger = logging.getLogger("genemamba_scvi")

CORPUS_FORMAT = "genemamba-scvi/token-corpus"
CORPUS_VERSION = 1
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.json"
MEDIANS_FILE = "gene_medians.npy"
SHARD_DIR = "shards"
_TMP_PREFIX = ".tmp-"
_FINGERPRINT_BYTES = 1 << 20  # bytes hashed at the head and at the tail of each input file


# ---------------------------------------------------------------------------------------------- utilities
def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(_TMP_PREFIX + path.name)
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    _atomic_write_bytes(path, buf.getvalue())


def token_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype of token ids: ``uint16`` for vocabularies of at most 65,536 tokens, else ``int32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def resolve_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand ``inputs`` (files and/or directories) to the ordered list of ``.h5ad`` files.

    A directory contributes its ``*.h5ad`` files (not recursive) in sorted order; files are kept in the
    order given.

    Raises
    ------
    FileNotFoundError
        For a path that does not exist, or when no ``.h5ad`` file is found.
    ValueError
        If the same file is listed twice.
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.glob("*.h5ad") if q.is_file())
            if not found:
                raise FileNotFoundError(f"directory {str(p)!r} contains no .h5ad file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {str(p)!r} does not exist")
    if not files:
        raise FileNotFoundError("no .h5ad input files given")
    resolved = [f.resolve() for f in files]
    seen: set[Path] = set()
    for f in resolved:
        if f in seen:
            raise ValueError(f"input file {str(f)!r} is listed more than once")
        seen.add(f)
    return resolved


def _fingerprint(path: Path) -> str:
    """SHA-256 of a file's size and its first and last MiB (cheap, detects replaced or rewritten files)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            h.update(f.read(_FINGERPRINT_BYTES))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- reading
class _H5adRows:
    """Row-chunk reader of the count matrix of one ``.h5ad`` file (``X`` or a layer), never the whole matrix."""

    def __init__(self, path: Path, layer: str | None, gene_id_key: str | None):
        import anndata.io
        import h5py

        self.path = path
        self.where = ("adata.X" if layer is None else f"layer {layer!r}") + f" of {str(path)!r}"
        self._file = h5py.File(path, "r")
        try:
            f = self._file
            if layer is None:
                if "X" not in f:
                    raise ValueError(f"{str(path)!r} has no X matrix; pass layer=... naming the raw-count layer")
                elem = f["X"]
            else:
                if "layers" not in f or layer not in f["layers"]:
                    have = list(f["layers"].keys()) if "layers" in f else []
                    raise ValueError(f"layer {layer!r} not found in {str(path)!r}; available layers: {have}")
                elem = f["layers"][layer]
            if isinstance(elem, h5py.Group):
                self._matrix = anndata.io.sparse_dataset(elem)
                self.format = self._matrix.format
                if self.format == "csc":
                    logger.warning(
                        "%s is stored as CSC: reading row chunks of it is slow; rewrite it as CSR for large corpora",
                        self.where,
                    )
            else:
                self._matrix = elem
                self.format = "dense"
            self.n_obs, self.n_vars = (int(s) for s in self._matrix.shape)
            var = anndata.io.read_elem(f["var"])
            if gene_id_key is not None:
                if gene_id_key not in var.columns:
                    raise ValueError(f"gene_id_key={gene_id_key!r} is not a var column of {str(path)!r}")
                self.genes = [str(g) for g in var[gene_id_key]]
            else:
                self.genes = [str(g) for g in var.index]
            if len(self.genes) != self.n_vars:
                raise ValueError(f"{str(path)!r}: var has {len(self.genes)} genes but the matrix {self.n_vars} columns")
        except BaseException:
            self._file.close()
            raise

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR."""
        chunk = self._matrix[start:stop]
        if sp.issparse(chunk):
            return chunk.tocsr() if chunk.format != "csr" else chunk
        return sp.csr_matrix(np.asarray(chunk))

    def chunks(self, start: int, stop: int, chunk_size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first_row, rows)`` for consecutive chunks of at most ``chunk_size`` rows of ``start:stop``."""
        for a in range(start, stop, chunk_size):
            b = min(a + chunk_size, stop)
            yield a, self.rows(a, b)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _H5adRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _match_genes(vocab: GeneVocab, reader: _H5adRows, min_gene_overlap: float) -> np.ndarray:
    try:
        match = vocab.match(reader.genes, min_overlap=min_gene_overlap)
    except ValueError as e:
        raise ValueError(f"{str(reader.path)!r}: {e}") from e
    logger.info("%s\n%s", reader.path, match.report())
    return np.asarray(match.token_ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """Contents of a corpus directory's ``manifest.json``.

    Attributes
    ----------
    config
        What determines the tokens: ``max_genes``, ``add_cls``, ``layer``, ``gene_id_key``, ``shard_size``,
        ``token_dtype``, ``vocab_size``, ``vocab_sha256``, ``medians_sha256``, ``medians_source``.
    files
        One entry per input file: ``path``, ``name``, ``size``, ``fingerprint`` (SHA-256 of the size and of
        the first and last MiB), ``n_obs``, ``n_vars``.
    shards
        Completed shards in order: ``name``, ``file`` (index into ``files``), ``row_start``, ``row_stop``,
        ``n`` (rows), ``n_empty`` (rows of length 0), ``sha256`` (of the token then length bytes).
    status
        ``"building"`` or ``"complete"``.
    root
        Directory of the corpus (not stored in the JSON).
    """

    config: dict[str, Any]
    files: list[dict[str, Any]]
    shards: list[dict[str, Any]] = field(default_factory=list)
    status: Literal["building", "complete"] = "building"
    created: str = ""
    updated: str = ""
    package_version: str = ""
    root: Path | None = None

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_rows(self) -> int:
        """Rows written (cells, empty ones included)."""
        return int(sum(s["n"] for s in self.shards))

    @property
    def n_empty(self) -> int:
        """Rows with an empty tokenization (skipped by the loader)."""
        return int(sum(s["n_empty"] for s in self.shards))

    @property
    def n_cells(self) -> int:
        """Trainable cells (rows with at least one token)."""
        return self.n_rows - self.n_empty

    @property
    def n_input_cells(self) -> int:
        """Cells over all input files."""
        return int(sum(f["n_obs"] for f in self.files))

    @property
    def max_genes(self) -> int:
        """Sequence length of the shards."""
        return int(self.config["max_genes"])

    @property
    def is_complete(self) -> bool:
        """Whether every input row has been written."""
        return self.status == "complete"

    def shard_path(self, shard: dict[str, Any] | int) -> Path:
        """Directory of a shard (entry or index)."""
        if self.root is None:
            raise ValueError("manifest has no root directory")
        entry = self.shards[shard] if isinstance(shard, int) else shard
        return self.root / SHARD_DIR / entry["name"]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "format": CORPUS_FORMAT,
            "version": CORPUS_VERSION,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "genemamba_scvi_version": self.package_version,
            "n_input_cells": self.n_input_cells,
            "n_rows": self.n_rows,
            "n_cells": self.n_cells,
            "n_empty": self.n_empty,
            "config": self.config,
            "files": self.files,
            "shards": self.shards,
        }

    def write(self, root: str | os.PathLike | None = None) -> None:
        """Atomically (re)write ``manifest.json`` in ``root`` (default: :attr:`root`)."""
        root = Path(root) if root is not None else self.root
        if root is None:
            raise ValueError("no directory to write the manifest to")
        self.updated = _now()
        _atomic_write_bytes(root / MANIFEST_FILE, (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def read(cls, root: str | os.PathLike) -> Manifest:
        """Read ``root/manifest.json``.

        Raises
        ------
        FileNotFoundError
            If there is no manifest.
        ValueError
            If it is not a GeneMamba corpus manifest or has a newer version.
        """
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found: not a GeneMamba token corpus (run build_corpus first)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from e
        if d.get("format") != CORPUS_FORMAT:
            raise ValueError(f"{str(path)!r} is not a GeneMamba corpus manifest (format {d.get('format')!r})")
        if int(d.get("version", 0)) > CORPUS_VERSION:
            raise ValueError(
                f"corpus version {d['version']} is newer than this genemamba-scvi understands ({CORPUS_VERSION})"
            )
        return cls(
            config=d["config"],
            files=d["files"],
            shards=d.get("shards", []),
            status=d.get("status", "building"),
            created=d.get("created", ""),
            updated=d.get("updated", ""),
            package_version=d.get("genemamba_scvi_version", ""),
            root=root,
        )


_COMPARED_CONFIG = ("max_genes", "add_cls", "layer", "gene_id_key", "shard_size", "token_dtype", "vocab_sha256")


def _config_differences(old: Manifest, config: dict[str, Any], files: list[dict[str, Any]]) -> list[str]:
    diffs = []
    for key in _COMPARED_CONFIG:
        if old.config.get(key) != config.get(key):
            diffs.append(f"{key}: corpus has {old.config.get(key)!r}, this call gives {config.get(key)!r}")
    if len(old.files) != len(files):
        diffs.append(f"number of input files: corpus has {len(old.files)}, this call gives {len(files)}")
    for i, (a, b) in enumerate(zip(old.files, files)):
        for key in ("name", "size", "fingerprint", "n_obs", "n_vars"):
            if a.get(key) != b.get(key):
                diffs.append(
                    f"input file {i} {key}: corpus has {a.get(key)!r} ({a['path']}), this call gives "
                    f"{b.get(key)!r} ({b['path']})"
                )
                break
    return diffs


def _mismatch_error(root: Path, diffs: list[str]) -> ValueError:
    return ValueError(
        f"the corpus in {str(root)!r} was built with a different configuration, so it cannot be resumed:\n  - "
        + "\n  - ".join(diffs)
        + "\nRe-run with the original arguments to resume it, or choose a new (or empty) out_dir."
    )


def _plan_shards(files: list[dict[str, Any]], shard_size: int) -> list[dict[str, Any]]:
    plan = []
    for fi, f in enumerate(files):
        for a in range(0, f["n_obs"], shard_size):
            plan.append(
                {
                    "name": f"shard_{len(plan):06d}",
                    "file": fi,
                    "row_start": a,
                    "row_stop": min(a + shard_size, f["n_obs"]),
                }
            )
    return plan


# ---------------------------------------------------------------------------------------------- medians
def _accumulate_medians(
    readers: Iterator[tuple[_H5adRows, np.ndarray]],
    vocab_size: int,
    chunk_size: int,
    method: Literal["exact", "tdigest"],
    validate: bool,
    bar: Any,
) -> np.ndarray:
    """Per-token non-zero medians of count / cell total over all files (cell totals over all genes)."""
    acc = GeneMedianAccumulator(vocab_size, method=method)
    for reader, token_ids in readers:
        keep_col = token_ids >= 0
        for _, chunk in reader.chunks(0, reader.n_obs, chunk_size):
            if validate:
                validate_counts(chunk, reader.where)
            totals = np.asarray(chunk.sum(axis=1, dtype=np.float64)).reshape(-1)
            cols = token_ids[chunk.indices]
            keep = keep_col[chunk.indices]
            kept_before = np.zeros(keep.size + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            aligned = sp.csr_matrix(
                (chunk.data[keep], cols[keep], kept_before[chunk.indptr]), shape=(chunk.shape[0], vocab_size)
            )
            aligned.sum_duplicates()
            acc.update(aligned, totals=totals)
            bar.update(chunk.shape[0])
    return acc.result()


# ---------------------------------------------------------------------------------------------- shards
def _write_header(f: Any, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)


def _write_shard(
    shard_dir: Path,
    reader: _H5adRows,
    row_start: int,
    row_stop: int,
    token_ids: np.ndarray,
    col_medians: np.ndarray,
    *,
    max_genes: int,
    add_cls: bool,
    dtype: np.dtype,
    chunk_size: int,
    validate: bool,
    bar: Any,
) -> dict[str, Any]:
    """Tokenize rows ``row_start:row_stop`` of ``reader`` into ``shard_dir`` (a fresh temporary directory).

    Tokens are streamed to ``tokens.npy`` chunk by chunk (the header is written first: the row count is known),
    so memory is bounded by one chunk. Returns the manifest entry fields ``n``, ``n_empty`` and ``sha256``.
    """
    n = row_stop - row_start
    lengths = np.zeros(n, dtype=np.int32)
    digest = hashlib.sha256()
    with open(shard_dir / "tokens.npy", "wb") as f:
        _write_header(f, dtype, (n, max_genes))
        for a, chunk in reader.chunks(row_start, row_stop, chunk_size):
            if validate:
                validate_counts(chunk, reader.where)
            tokens, lens = rank_tokenize(chunk, token_ids, col_medians, max_genes=max_genes, add_cls=add_cls)
            payload = tokens.astype(dtype, copy=False).tobytes()
            del tokens
            f.write(payload)
            digest.update(payload)
            del payload
            lengths[a - row_start : a - row_start + lens.shape[0]] = lens
            bar.update(chunk.shape[0])
        f.flush()
        os.fsync(f.fileno())
    with open(shard_dir / "lengths.npy", "wb") as f:
        np.save(f, lengths, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    digest.update(lengths.tobytes())
    return {"n": n, "n_empty": int((lengths == 0).sum()), "sha256": digest.hexdigest()}


def _progress_bar(progress: bool, total: int, initial: int, desc: str) -> Any:
    if progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="cell", unit_scale=True, dynamic_ncols=True)

    class _Null:
        def update(self, n: int) -> None:
            pass

        def close(self) -> None:
            pass

    return _Null()


def _resolve_vocab(
    vocab: GeneVocab | str | os.PathLike | None, out: Path, first_file: Path, gene_id_key: str | None
) -> GeneVocab:
    if isinstance(vocab, GeneVocab):
        return vocab
    if vocab is not None:
        return GeneVocab.from_json(vocab)
    if (out / VOCAB_FILE).is_file():  # resuming a corpus whose vocabulary was built from its first file
        return GeneVocab.from_json(out / VOCAB_FILE)
    with _H5adRows(first_file, None, gene_id_key) as reader:
        return GeneVocab.from_var_names(reader.genes)


# ---------------------------------------------------------------------------------------------- build
def build_corpus(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab: GeneVocab | str | os.PathLike | None = None,
    max_genes: int = 2048,
    layer: str | None = None,
    gene_medians: np.ndarray | None = None,
    chunk_size: int = 10_000,
    median_method: Literal["exact", "tdigest"] = "tdigest",
    shard_size: int = 100_000,
    add_cls: bool = False,
    gene_id_key: str | None = None,
    min_gene_overlap: float = 0.5,
    validate: bool = True,
    progress: bool = False,
) -> Manifest:
    """Stream ``.h5ad`` files of raw counts into a tokenized, sharded pre-training corpus (resumable).

    Parameters
    ----------
    inputs
        An ``.h5ad`` file, a directory of them (sorted ``*.h5ad``), or a sequence of files/directories.
        Files are opened read-only with ``h5py`` and read ``chunk_size`` rows at a time.
    out_dir
        Output directory (created). If it already holds a corpus, the build resumes it (see Notes).
    vocab
        A :class:`~genemamba_scvi.data.vocab.GeneVocab` or the path of its JSON. ``None``: the vocabulary
        saved in ``out_dir`` when resuming, else one built from the first file's genes.
    max_genes
        Tokens per cell (top-k genes; 2048 as published).
    layer
        Layer with the raw counts (``None``: ``X``).
    gene_medians
        Medians per token id (``float64 [len(vocab)]``, e.g. a pre-trained model's ``gene_medians_``).
        ``None`` computes them in a first streaming pass over all files (or reuses those saved in ``out_dir``
        when resuming).
    chunk_size
        Cells read and tokenized at a time; peak memory is about ``chunk_size x (max_genes x 4 + 60 x genes
        per cell)`` bytes (about 80 MB per 10,000 cells at ``max_genes=2048``).
    median_method
        ``"tdigest"`` (bounded memory, default) or ``"exact"`` (keeps every non-zero value: memory grows
        with the corpus; for small corpora). See :class:`~genemamba_scvi.data.normalize.GeneMedianAccumulator`.
    shard_size
        Rows per shard (shards never span two input files). The unit of resumption.
    add_cls
        Prepend ``<cls>`` to every cell (for models with ``pooling="cls"``).
    gene_id_key
        ``var`` column with the gene ids to match (default: ``var_names``).
    min_gene_overlap
        Smallest fraction of a file's genes that must be in the vocabulary (else ``ValueError``).
    validate
        Check every chunk for raw counts (finite, non-negative integers).
    progress
        Show ``tqdm`` progress bars (cells per second).

    Returns
    -------
    The :class:`Manifest` of the completed corpus.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a corpus built with another configuration (the message lists every difference:
        vocabulary, medians, ``max_genes``, input files, ...), for non-count data, a missing layer, or a file
        whose genes do not overlap the vocabulary enough.

    Notes
    -----
    Resume semantics: shards are planned deterministically from the input files and ``shard_size``; a
    shard is recorded in the manifest only after its files are complete, flushed and renamed into place.
    On a re-run, the recorded shards are kept, temporary and unrecorded shard directories are deleted, and
    the missing shards are written, so each input row ends up in exactly one shard. The inputs must be
    unchanged (size and a hash of the first and last MiB of each file are checked).

    Examples
    --------
    >>> manifest = build_corpus("atlas/", "corpus/", max_genes=2048, progress=True)  # doctest: +SKIP
    >>> manifest.n_cells  # doctest: +SKIP
    """
    from genemamba_scvi import __version__

    if int(chunk_size) <= 0 or int(shard_size) <= 0:
        raise ValueError(f"chunk_size and shard_size must be positive, got {chunk_size} and {shard_size}")
    if int(max_genes) < (2 if add_cls else 1):
        raise ValueError(f"max_genes must be >= {2 if add_cls else 1}, got {max_genes}")
    if median_method not in ("exact", "tdigest"):
        raise ValueError(f"median_method must be 'exact' or 'tdigest', got {median_method!r}")
    chunk_size, shard_size, max_genes = int(chunk_size), int(shard_size), int(max_genes)
    chunk_size = min(chunk_size, shard_size)
    paths = resolve_inputs(inputs)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    old = Manifest.read(out) if (out / MANIFEST_FILE).is_file() else None
    if old is None and any(p for p in (out / SHARD_DIR).iterdir() if not p.name.startswith(_TMP_PREFIX)):
        raise ValueError(f"{str(out)!r} has shards but no manifest.json; use an empty out_dir")

    # ---- inputs, vocabulary and configuration
    vocab = _resolve_vocab(vocab, out, paths[0], gene_id_key)
    files = []
    for p in paths:
        with _H5adRows(p, layer, gene_id_key) as reader:
            files.append(
                {
                    "path": str(p),
                    "name": p.name,
                    "size": p.stat().st_size,
                    "fingerprint": _fingerprint(p),
                    "n_obs": reader.n_obs,
                    "n_vars": reader.n_vars,
                }
            )
    config: dict[str, Any] = {
        "max_genes": max_genes,
        "add_cls": bool(add_cls),
        "layer": layer,
        "gene_id_key": gene_id_key,
        "shard_size": shard_size,
        "token_dtype": token_dtype(len(vocab)).name,
        "vocab_size": len(vocab),
        "vocab_sha256": vocab.sha256(),
    }
    if old is not None:
        diffs = _config_differences(old, config, files)
        if diffs:
            raise _mismatch_error(out, diffs)

    def readers() -> Iterator[tuple[_H5adRows, np.ndarray]]:
        for p in paths:
            with _H5adRows(p, layer, gene_id_key) as reader:
                yield reader, _match_genes(vocab, reader, min_gene_overlap)

    # ---- gene medians (given, saved by an earlier run, or one streaming pass)
    total_rows = sum(f["n_obs"] for f in files)
    if gene_medians is not None:
        medians = np.asarray(gene_medians, dtype=np.float64)
        if medians.shape != (len(vocab),):
            raise ValueError(f"gene_medians has shape {medians.shape}; expected ({len(vocab)},) = one per token id")
        source = "given"
    elif old is not None and old.config.get("medians_sha256") and (out / MEDIANS_FILE).is_file():
        medians = np.load(out / MEDIANS_FILE)
        source = old.config["medians_source"]
        if source != "given" and source != f"computed ({median_method})":
            raise _mismatch_error(
                out, [f"medians_source: corpus has {source!r}, this call asks for 'computed ({median_method})'"]
            )
    else:
        bar = _progress_bar(progress, total_rows, 0, "gene medians")
        try:
            medians = _accumulate_medians(readers(), len(vocab), chunk_size, median_method, validate, bar)
        finally:
            bar.close()
        source = f"computed ({median_method})"
    config["medians_sha256"] = _sha256_array(medians)
    config["medians_source"] = source
    if old is not None and old.config.get("medians_sha256") not in (None, config["medians_sha256"]):
        raise _mismatch_error(
            out,
            [
                f"medians_sha256: corpus has {old.config['medians_sha256'][:12]}..., this call gives "
                f"{config['medians_sha256'][:12]}... (different gene_medians)"
            ],
        )

    # ---- (re)start the manifest
    if old is None:
        vocab.to_json(out / VOCAB_FILE)
        _atomic_save_npy(out / MEDIANS_FILE, medians)
        manifest = Manifest(config=config, files=files, created=_now(), package_version=__version__, root=out)
    else:
        if not (out / VOCAB_FILE).is_file():
            vocab.to_json(out / VOCAB_FILE)
        if not (out / MEDIANS_FILE).is_file() or _sha256_array(np.load(out / MEDIANS_FILE)) != config["medians_sha256"]:
            _atomic_save_npy(out / MEDIANS_FILE, medians)
        manifest = old
        manifest.config = config
        manifest.files = files  # same content; paths may have moved
        manifest.package_version = __version__
    plan = _plan_shards(files, shard_size)
    done = {s["name"]: s for s in manifest.shards}
    for s in manifest.shards:  # recorded shards must be the planned ones
        p = plan[int(s["name"].split("_")[1])] if s["name"].startswith("shard_") else None
        if p is None or (p["file"], p["row_start"], p["row_stop"]) != (s["file"], s["row_start"], s["row_stop"]):
            raise _mismatch_error(out, [f"shard {s['name']} does not match the shard plan of this call"])
        if not (out / SHARD_DIR / s["name"] / "tokens.npy").is_file():
            raise ValueError(
                f"{str(out)!r}: shard {s['name']} is recorded in the manifest but its files are missing; "
                "the corpus is damaged (rebuild it in a new out_dir)"
            )
    for p in (out / SHARD_DIR).iterdir():  # half-written or unrecorded shards from an interrupted run
        if p.name not in done:
            logger.info("removing incomplete shard %s", p)
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    manifest.status = "building"
    manifest.write()

    # ---- tokenize the missing shards
    todo = [s for s in plan if s["name"] not in done]
    rows_done = sum(s["row_stop"] - s["row_start"] for s in plan if s["name"] in done)
    bar = _progress_bar(progress, total_rows, rows_done, "tokenize")
    dtype = token_dtype(len(vocab))
    try:
        current: tuple[int, _H5adRows, np.ndarray, np.ndarray] | None = None
        for entry in todo:
            fi = entry["file"]
            if current is None or current[0] != fi:
                if current is not None:
                    current[1].close()
                reader = _H5adRows(paths[fi], layer, gene_id_key)
                token_ids = _match_genes(vocab, reader, min_gene_overlap)
                col_medians = np.where(token_ids >= 0, medians[np.clip(token_ids, 0, None)], np.nan)
                current = (fi, reader, token_ids, col_medians)
            _, reader, token_ids, col_medians = current
            tmp = out / SHARD_DIR / (_TMP_PREFIX + entry["name"])
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            stats = _write_shard(
                tmp,
                reader,
                entry["row_start"],
                entry["row_stop"],
                token_ids,
                col_medians,
                max_genes=max_genes,
                add_cls=add_cls,
                dtype=dtype,
                chunk_size=chunk_size,
                validate=validate,
                bar=bar,
            )
            _fsync_dir(tmp)
            os.replace(tmp, out / SHARD_DIR / entry["name"])
            _fsync_dir(out / SHARD_DIR)
            manifest.shards.append({**entry, **stats})
            manifest.shards.sort(key=lambda s: s["name"])
            manifest.write()
        if current is not None:
            current[1].close()
    finally:
        bar.close()
    manifest.status = "complete"
    manifest.write()
    logger.info(
        "corpus %s: %d cells (%d empty) in %d shards", out, manifest.n_rows, manifest.n_empty, len(manifest.shards)
    )
    return manifest


# ---------------------------------------------------------------------------------------------- reading back
class TokenCorpus:
    """Read-only, memory-mapped view of a corpus written by :func:`build_corpus` (numpy only).

    Cells are addressed by a *cell index* ``0 .. n_cells - 1`` over the non-empty rows of all shards in
    manifest order. Shards are opened lazily with ``np.load(mmap_mode="r")``; the object pickles without
    its memory maps, so it can be sent to data-loader worker processes.

    Parameters
    ----------
    root
        Corpus directory.
    verify
        Re-hash every shard and compare with the manifest (reads the whole corpus once).

    Raises
    ------
    ValueError
        If the corpus is incomplete (re-run :func:`build_corpus` to finish it) or a shard is corrupt.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = False):
        self.root = Path(root).expanduser().resolve()
        self.manifest = Manifest.read(self.root)
        if not self.manifest.is_complete:
            raise ValueError(
                f"the corpus in {str(self.root)!r} is incomplete ({self.manifest.n_rows} of "
                f"{self.manifest.n_input_cells} cells written): re-run build_corpus with the same arguments to "
                "finish it"
            )
        self.max_genes = self.manifest.max_genes
        n = np.array([s["n"] for s in self.manifest.shards], dtype=np.int64)
        self._offsets = np.zeros(n.size + 1, dtype=np.int64)
        np.cumsum(n, out=self._offsets[1:])
        # global row ids of empty rows (normally none); cell index -> row: v + #empties before it
        empties = []
        for i, s in enumerate(self.manifest.shards):
            if s["n_empty"]:
                lengths = np.load(self.manifest.shard_path(s) / "lengths.npy", mmap_mode="r")
                empties.append(np.flatnonzero(np.asarray(lengths) == 0) + self._offsets[i])
        self._empty_rows = np.concatenate(empties) if empties else np.zeros(0, dtype=np.int64)
        self._empty_key = self._empty_rows - np.arange(self._empty_rows.size)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if verify:
            self.verify()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return self.n_cells

    @property
    def n_cells(self) -> int:
        """Number of trainable (non-empty) cells."""
        return int(self._offsets[-1]) - int(self._empty_rows.size)

    @property
    def vocab(self) -> GeneVocab:
        """The corpus vocabulary."""
        return GeneVocab.from_json(self.root / VOCAB_FILE)

    @property
    def gene_medians(self) -> np.ndarray:
        """Medians per token id used to tokenize the corpus."""
        return np.load(self.root / MEDIANS_FILE)

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._maps.get(i)
        if m is None:
            d = self.manifest.shard_path(i)
            m = (np.load(d / "tokens.npy", mmap_mode="r"), np.load(d / "lengths.npy", mmap_mode="r"))
            self._maps[i] = m
        return m

    def rows_of(self, cells: np.ndarray) -> np.ndarray:
        """Global row ids (over all shards, empty rows included) of cell indices."""
        cells = np.asarray(cells, dtype=np.int64)
        if cells.size and (cells.min() < 0 or cells.max() >= self.n_cells):
            raise IndexError(f"cell index out of range [0, {self.n_cells})")
        if self._empty_rows.size == 0:
            return cells
        return cells + np.searchsorted(self._empty_key, cells, side="right")

    def cell_ids(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(file index, row in that file)`` of cell indices (trace a cell to its input file)."""
        rows = self.rows_of(cells)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        file_of = np.array([s["file"] for s in self.manifest.shards], dtype=np.int64)
        start = np.array([s["row_start"] for s in self.manifest.shards], dtype=np.int64)
        return file_of[shard], start[shard] + rows - self._offsets[shard]

    def lengths_of(self, cells: np.ndarray) -> np.ndarray:
        """Token counts (``int32``) of cell indices, in the order given (reads only the length arrays)."""
        rows = self.rows_of(cells)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.zeros(rows.size, dtype=np.int32)
        for i in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == i)
            out[sel] = self._shard(i)[1][rows[sel] - self._offsets[i]]
        return out

    def get(self, cells: np.ndarray, trim: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths of cell indices, in the order given.

        Parameters
        ----------
        cells
            Cell indices.
        trim
            Cut the token columns to the longest cell of the request.

        Returns
        -------
        ``tokens`` (storage dtype, ``[n, L]``) and ``lengths`` (``int32 [n]``).
        """
        rows = self.rows_of(cells)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        tokens = np.zeros((rows.size, self.max_genes), dtype=token_dtype(int(self.manifest.config["vocab_size"])))
        lengths = np.zeros(rows.size, dtype=np.int32)
        for i in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == i)
            local = rows[sel] - self._offsets[i]
            order = np.argsort(local, kind="stable")  # increasing offsets: sequential reads of the map
            tok_map, len_map = self._shard(i)
            tokens[sel[order]] = tok_map[local[order]]
            lengths[sel[order]] = len_map[local[order]]
        if trim:
            tokens = tokens[:, : max(int(lengths.max(initial=0)), 1)]
        return tokens, lengths

    def verify(self) -> None:
        """Re-hash every shard; raise ``ValueError`` naming the first corrupt one."""
        for i, s in enumerate(self.manifest.shards):
            tok, lens = self._shard(i)
            digest = hashlib.sha256()
            for a in range(0, tok.shape[0], 8192):
                digest.update(np.ascontiguousarray(tok[a : a + 8192]).tobytes())
            digest.update(np.ascontiguousarray(lens).tobytes())
            if digest.hexdigest() != s["sha256"]:
                raise ValueError(f"shard {s['name']} of {str(self.root)!r} is corrupt (sha256 mismatch)")
