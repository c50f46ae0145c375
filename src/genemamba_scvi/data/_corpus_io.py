"""Token corpus: file names, file helpers and the streaming ``.h5ad`` row reader (of :mod:`~.corpus`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from .gene_ids import few_gene_ids, refuse_non_gene_features, warn_if_control_features
from .normalize import NotCountsError, h5ad_count_matrix, validate_counts
from .vocab import GeneVocab

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


def shard_problems(shard_dir: Path, n_rows: int) -> dict[str, str]:
    """What is wrong with each of a shard's two files (``tokens.npy``, ``lengths.npy``) of ``n_rows`` rows.

    ``{file name: "missing" or what is wrong}``, empty when both are sound (see :func:`_npy_problem`).
    """
    found = {name: _npy_problem(shard_dir / name, n_rows) for name in ("tokens.npy", "lengths.npy")}
    return {name: why for name, why in found.items() if why}


def _npy_problem(path: Path, n_rows: int) -> str | None:
    """What is wrong with a shard's ``.npy`` file of ``n_rows`` rows, or None.

    Missing, an unreadable header, other rows than the manifest's, or cut short. Reads the header only, so a corpus
    of many shards is checked in moments.
    """
    if not path.is_file():
        return "missing"
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError) as err:
        return f"unreadable header ({err})"
    if not shape or shape[0] != n_rows:
        return f"{shape[0] if shape else 0} rows where the manifest records {n_rows}"
    need = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    return None if size >= need else f"cut short: {size} bytes where its header needs {need}"


def token_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype of token ids: ``uint16`` for vocabularies of at most 65,536 tokens, else ``int32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def check_h5ad_file(path: Path) -> None:
    """Name a file that is no HDF5 file (h5py would say 'file signature not found' in a traceback)."""
    if not h5py.is_hdf5(path):
        raise ValueError(f"input {str(path)!r} is not an .h5ad file (no HDF5 signature)")
    try:
        with h5py.File(path, "r") as f:
            tenx = "matrix" in f and "X" not in f and "obs" not in f
            mod = list(f["mod"]) if f.attrs.get("encoding-type") == "MuData" and "mod" in f else None
    except OSError as err:  # e.g. a copy or a write cut short: "truncated file: eof = ..., stored_eof = ..."
        if err.errno == errno.EAGAIN or "unable to lock file" in str(err):
            raise ValueError(
                f"input {str(path)!r} is locked by another process (HDF5's file lock: is it still being written, or "
                "open in a notebook?); wait for it to be closed"
            ) from None
        raise ValueError(
            f"input {str(path)!r} is truncated or damaged and cannot be opened ({str(err).splitlines()[0]}); "
            "write it again (was its copy or the step that wrote it interrupted?)"
        ) from None
    if mod is not None:  # anndata cannot read a MuData file either (a traceback of its IO registry)
        target = Path(path).with_suffix(".h5ad")
        first = mod[0] if mod else "rna"
        raise ValueError(
            f"input {str(path)!r} is a MuData (.h5mu) file of modalities {mod}, not an .h5ad; write the modality of "
            'gene counts once: python -c "import mudata as md; '
            f"md.read_h5mu('{path}')['{first}'].write_h5ad('{target}')\""
        )
    if tenx:  # Cell Ranger's filtered_feature_bc_matrix.h5: anndata cannot read it as an .h5ad
        target = Path(path).with_suffix(".h5ad")
        raise ValueError(
            f"input {str(path)!r} is a 10x Genomics (Cell Ranger) HDF5 file, not an .h5ad; convert it once: "
            f"python -c \"import scanpy as sc; sc.read_10x_h5('{path}').write_h5ad('{target}')\""
        )


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
    for f in files:
        check_h5ad_file(f)
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

    def __init__(self, path: Path, layer: str | None, gene_id_key: str | None, tell_csc: bool = False):
        import anndata.io
        import h5py

        self.path = path
        self.where = ("adata.X" if layer is None else f"layer {layer!r}") + f" of {str(path)!r}"
        self._file = h5py.File(path, "r")
        try:
            f = self._file
            self._matrix = h5ad_count_matrix(f, layer, path)
            self.format = getattr(self._matrix, "format", "dense")  # (an h5py dataset: dense)
            if self.format == "csc" and tell_csc:  # (once a file: a build opens it up to four times)
                logger.warning(
                    "%s is stored as CSC: reading row chunks of it is slow; rewrite it as CSR for large corpora",
                    self.where,
                )
            self.n_obs, self.n_vars = (int(s) for s in self._matrix.shape)
            var = anndata.io.read_elem(f["var"])
            refuse_non_gene_features(var, source=f"{str(path)!r}: adata")
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

    def validate(self, chunk: sp.csr_matrix) -> None:
        """:func:`validate_counts` of a chunk, naming the file's other matrix that holds counts, if one does."""
        try:
            validate_counts(chunk, self.where)
        except NotCountsError as err:
            raise NotCountsError(err.problem, self._counts_elsewhere()) from None

    def _counts_elsewhere(self) -> str | None:
        """Where else the file holds counts (its first 1,000 rows checked), as advice; ``None`` if nowhere."""
        import anndata.io

        f, here = self._file, self._matrix
        places = [
            (f"layers[{k!r}] of this file holds them: pass layer={k!r}{_EVERY_FILE}", f["layers"][k])
            for k in f.get("layers", {})
        ]
        if "X" in f:
            places.append((f"X of this file holds them: leave out layer{_EVERY_FILE}", f["X"]))
        if "raw" in f and "X" in f["raw"]:
            places.append(
                (
                    "raw.X of this file holds them: write them to a layer (adata.layers['counts'] = "
                    "adata.raw[:, adata.var_names].X, then adata.write_h5ad) and pass layer='counts'",
                    f["raw"]["X"],
                )
            )
        for advice, elem in places:
            if elem == getattr(here, "group", here):  # the matrix found wanting
                continue
            rows = anndata.io.sparse_dataset(elem)[:1000] if isinstance(elem, h5py.Group) else elem[:1000]
            try:
                validate_counts(rows, "")
            except ValueError:  # NotCountsError among them
                continue
            return advice
        return None

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


#: ``layer`` names one place for every input file (corpus probe: the advice "pass layer='counts'" for one file
#: failed on the next, which keeps its counts in X)
_EVERY_FILE = (
    " (the same layer is read from every input file: where files keep their counts in different places, write each "
    "file's counts to the same place first, e.g. adata.X = adata.layers['counts'] and adata.write_h5ad)"
)


def _match_genes(vocab: GeneVocab, reader: _H5adRows, min_gene_overlap: float) -> np.ndarray:
    """Token ids of the file's genes (-1: not in the vocabulary), or the file refused for too few shared genes.

    Refused when both the share of its genes in the vocabulary and the share of the vocabulary's genes in it are
    below ``min_gene_overlap``. The second share, as for a model's query: an unfiltered file (most of its genes
    without any count) holds every gene of a vocabulary of expressed genes (a model's, or a corpus's own since
    session 31) at a low first share.
    """
    try:
        match = vocab.match(reader.genes, min_overlap=0.0)
        if match.overlap < min_gene_overlap and match.n_matched < min_gene_overlap * len(vocab.genes):
            vocab.match(reader.genes, min_overlap=min_gene_overlap)  # raises, with its report
    except ValueError as e:
        raise ValueError(f"{str(reader.path)!r}: {e}") from e
    logger.info("%s\n%s", reader.path, match.report())
    return np.asarray(match.token_ids, dtype=np.int64)


#: manifest config key: genes of the first file left out of a vocabulary built here, having no count in any cell
PRUNED_KEY = "vocab_genes_without_counts"


def _resolve_vocab(
    vocab: GeneVocab | str | os.PathLike | None, out: Path, first_file: Path, gene_id_key: str | None, resuming: bool
) -> GeneVocab:
    if isinstance(vocab, GeneVocab):
        return vocab
    if vocab is not None:
        return GeneVocab.from_json(vocab)
    if resuming and (out / VOCAB_FILE).is_file():  # a corpus whose vocabulary was built from its first file
        return GeneVocab.from_json(out / VOCAB_FILE)
    with _H5adRows(first_file, None, gene_id_key) as reader:
        genes = list(reader.genes)
    found = few_gene_ids(genes)
    if found is not None:  # a column of row numbers or probe names would become the vocabulary of every later model
        where = f"var[{gene_id_key!r}]" if gene_id_key else "the var_names"
        raise ValueError(
            f"the vocabulary would be built from {where} of {first_file}, but only {100 * found[0]:.0f}% of them are "
            f"gene symbols or Ensembl gene ids (e.g. {found[1]}): pass gene_id_key= naming the var column of gene ids, "
            "or vocab= a vocabulary file"
        )
    warn_if_control_features(genes, f"the genes of {first_file}, the corpus's vocabulary,")
    return GeneVocab.from_var_names(genes)


def _expressed_only(vocab: GeneVocab, medians: np.ndarray, first_file: Path) -> tuple[GeneVocab, np.ndarray]:
    """The vocabulary (and medians) without the genes that no corpus cell expresses (no median).

    They were tokens no cell trained, and a query that expressed one ranked it among trained genes with a stand-in
    median, often near the top (corpus probe, session 31: 71% of a first file's 26k genes; 23 such genes in every
    cell of a held-out file, at median position 2). Left out, they are a query's unknown genes, ignored with a
    warning, as for a model built on an AnnData (session 30).
    """
    kept = np.flatnonzero(np.isfinite(medians[vocab.n_special :]))
    if len(kept) == len(vocab.genes):
        return vocab, medians
    logger.warning(
        "%d of the %d genes of %s (the corpus vocabulary) have no count in any corpus cell: left out of the vocabulary",
        len(vocab.genes) - len(kept),
        len(vocab.genes),
        first_file.name,
    )
    genes = [vocab.genes[i] for i in kept]
    return GeneVocab(genes), np.r_[medians[: vocab.n_special], medians[vocab.n_special :][kept]]


def _same_vocab_file(path: Path, vocab: GeneVocab) -> bool:
    try:
        return GeneVocab.from_json(path) == vocab
    except (ValueError, OSError, KeyError, TypeError):
        return False
