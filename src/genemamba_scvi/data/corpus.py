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
import hashlib
import logging
import numbers
import os
import shutil
import socket
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from genemamba_scvi._processes import process_alive

from ._corpus_io import (  # noqa: F401  (names of this module before the split)
    _FINGERPRINT_BYTES,
    _TMP_PREFIX,
    CORPUS_FORMAT,
    CORPUS_VERSION,
    MANIFEST_FILE,
    MEDIANS_FILE,
    PRUNED_KEY,
    SHARD_DIR,
    VOCAB_FILE,
    _atomic_save_npy,
    _atomic_write_bytes,
    _expressed_only,
    _fingerprint,
    _fsync_dir,
    _H5adRows,
    _match_genes,
    _now,
    _resolve_vocab,
    _same_vocab_file,
    _sha256_array,
    resolve_inputs,
    shard_problems,
    token_dtype,
)
from ._corpus_manifest import (  # noqa: F401  (names of this module before the split)
    _COMPARED_CONFIG,
    Manifest,
    _config_differences,
    _mismatch_error,
    _plan_shards,
)
from ._corpus_reader import TokenCorpus
from .normalize import GeneMedianAccumulator
from .tokenize import rank_tokenize, with_fallback
from .vocab import GeneVocab

__all__ = ["CORPUS_FORMAT", "CORPUS_VERSION", "Manifest", "TokenCorpus", "build_corpus", "resolve_inputs"]

logger = logging.getLogger("genemamba_scvi")


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
                reader.validate(chunk)
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
                reader.validate(chunk)
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


def _load_npy(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError):
        return None


def _foreign_file_error(out: Path, name: str) -> ValueError:
    """The error for a new corpus that would write ``name`` over a different file of that name in ``out``.

    No manifest means no corpus to resume; a build stopped before its manifest leaves one with the same content.
    """
    return ValueError(
        f"{str(out)!r} holds a {name} but no manifest.json, so it is no corpus to resume, and this build would "
        f"write another {name} over it. Use an empty out_dir, or remove that file if it is a stale one"
    )


# ---------------------------------------------------------------------------------------------- build
#: Held by the process building a corpus (its host and pid): a second build into the same folder is refused.
LOCK_FILE = ".build.lock"


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.build.lock`` while building; a lock left by a dead process of this host is taken over."""
    lock, host = out / LOCK_FILE, socket.gethostname()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder_host, _, pid = lock.read_text(errors="replace").strip().rpartition(" ")
            if holder_host == host and pid.isdigit() and not process_alive(int(pid)):
                lock.unlink(missing_ok=True)  # its builder was killed: this run resumes the corpus
                continue
            raise ValueError(
                f"{str(out)!r} is being built by process {pid or '?'} on {holder_host or 'another host'}: wait for it "
                f"to finish, or build into another out_dir (if no build runs, delete {lock})"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {os.getpid()}")
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


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
    # (data/ stays free of torch, so not nn.config.check_count)
    sizes = (("chunk_size", chunk_size, 1), ("shard_size", shard_size, 1), ("max_genes", max_genes, 1 + add_cls))
    for name, value, least in sizes:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    chunk_size, shard_size, max_genes = int(chunk_size), int(shard_size), int(max_genes)
    real = isinstance(min_gene_overlap, numbers.Real) and not isinstance(min_gene_overlap, bool)
    if not (real and 0.0 <= min_gene_overlap <= 1.0):
        raise ValueError(f"min_gene_overlap must be a fraction in [0, 1], got {min_gene_overlap!r}")
    if median_method not in ("exact", "tdigest"):
        raise ValueError(f"median_method must be 'exact' or 'tdigest', got {median_method!r}")
    if gene_medians is not None and not np.isfinite(np.asarray(gene_medians, dtype=np.float64)).any():
        raise ValueError(
            "gene_medians holds no finite median: a corpus ranks genes by count / cell total / gene median, and "
            "these medians are all NaN (as a model from from_pretrained(..., tokenization='published') has: it "
            "ranks raw values and stores no medians). Pass gene_medians=None to compute them from the files, or "
            "the medians of a model with tokenization='ranked'"
        )
    if gene_medians is not None:  # (zeros or negatives tokenized silently wrong: cluster probe, session 35)
        given = np.asarray(gene_medians, dtype=np.float64)
        bad = np.isinf(given) | (given <= 0)
        if bad.any():
            raise ValueError(
                f"gene_medians must be > 0 and finite where given (NaN: a gene without a median), but {int(bad.sum())} "
                f"of {given.size} are not (e.g. {given[bad][:3].tolist()}): they divide each gene's share of a cell"
            )
    chunk_size = min(chunk_size, shard_size)
    paths = resolve_inputs(inputs)
    out = Path(out_dir).expanduser().resolve()
    # what a build that fails before its manifest leaves behind is removed (a re-run would take it as foreign)
    top = out  # the topmost folder this call creates (out, or a missing parent of it)
    while not top.parent.exists():
        top = top.parent
    ours = (
        [top]
        if not out.exists()
        else [out / n for n in (SHARD_DIR, VOCAB_FILE, MEDIANS_FILE) if not (out / n).exists()]
    )
    from genemamba_scvi.io._files import refuse_file_on_the_way

    refuse_file_on_the_way(out, "out_dir")
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):  # one build at a time: two would share the shards' temporary folders
        try:
            return _build(out, paths, vocab, max_genes, layer, chunk_size, shard_size, median_method, gene_medians,
                          gene_id_key, min_gene_overlap, add_cls, validate, progress)  # fmt: skip
        except BaseException:
            if not (out / MANIFEST_FILE).exists():
                for path in ours:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise


def _build(out, paths, vocab, max_genes, layer, chunk_size, shard_size, median_method, gene_medians, gene_id_key,
           min_gene_overlap, add_cls, validate, progress) -> Manifest:  # fmt: skip
    """:func:`build_corpus` into the existing folder ``out``, its lock held (arguments checked)."""
    from genemamba_scvi import __version__
    from genemamba_scvi.io._checkpoint import CHECKSUMS_FILE, WEIGHTS_FILE

    model_files = (out / CHECKSUMS_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    if model_files and not (out / MANIFEST_FILE).is_file():  # named before the medians' pass over every input
        # (minutes to hours), not after it (pipeline probe)
        raise ValueError(f"{str(out)!r} is a saved GeneMamba model, not a corpus; build into an empty out_dir")
    (out / SHARD_DIR).mkdir(exist_ok=True)
    old = Manifest.read(out) if (out / MANIFEST_FILE).is_file() else None
    if old is None and any(p for p in (out / SHARD_DIR).iterdir() if not p.name.startswith(_TMP_PREFIX)):
        raise ValueError(f"{str(out)!r} has shards but no manifest.json; use an empty out_dir")

    # ---- inputs, vocabulary and configuration
    vocab_arg = vocab
    vocab = _resolve_vocab(vocab, out, paths[0], gene_id_key, resuming=old is not None)
    # a vocabulary built here keeps only the genes some corpus cell expresses (decided after the medians' pass)
    built_here = old is None and vocab_arg is None  # from the first file's genes, by this call
    prune = built_here and gene_medians is None
    if old is None and not prune and (out / VOCAB_FILE).is_file() and not _same_vocab_file(out / VOCAB_FILE, vocab):
        raise _foreign_file_error(out, VOCAB_FILE)
    files, left_out, token_ids_of = [], [], {}
    for i, p in enumerate(paths):
        with _H5adRows(p, layer, gene_id_key, tell_csc=True) as reader:
            # every file's genes matched now, before the medians' pass over the files before it (a file of too few
            # vocabulary genes was named after hours of it; corpus probe)
            try:
                token_ids_of[p] = _match_genes(vocab, reader, min_gene_overlap)  # (the medians' pass reads them)
            except ValueError as err:
                if built_here and i:
                    raise ValueError(
                        f"{err}\n(the corpus vocabulary is the genes of the first file, {paths[0].name}: give a "
                        "vocabulary of every file's genes, of one kind of id (vocab= in Python, --vocab on the "
                        "command line), or put a file of the whole transcriptome first)"
                    ) from None
                raise
            if i and (n_unmatched := int((token_ids_of[p] < 0).sum())):
                left_out.append((p.name, n_unmatched, reader.n_vars))
            if validate and reader.n_obs:  # its first rows' counts too (a file's layer was found wanting hours in)
                reader.validate(reader.rows(0, min(reader.n_obs, 1000)))
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
    if not any(f["n_obs"] for f in files):  # (a corpus of 0 cells was "complete" and failed only at pretrain)
        names = ", ".join(f["name"] for f in files[:5])
        raise ValueError(f"the input files hold no cells ({names}: 0 cells each); a corpus needs cells to tokenize")
    seen: dict[tuple[int, str], str] = {}
    for f in files:  # one file under two names (a copy, a link): its cells would be trained on twice (corpus probe)
        first = seen.setdefault((f["size"], f["fingerprint"]), f["path"])
        if first != f["path"]:
            warnings.warn(
                f"{f['path']} has the same size and content fingerprint as {first}: the same cells twice in the "
                "corpus? Leave one out if it is a copy",
                UserWarning,
                stacklevel=3,
            )
    if built_here and left_out:  # the vocabulary is the first file's genes: others' are lost
        shown = "; ".join(f"{name}: {n:,} of {total:,}" for name, n, total in left_out[:5])
        warnings.warn(
            f"the corpus vocabulary is the genes of its first file, {paths[0].name} (vocab=None), so genes of the "
            f"other files that it lacks are left out of every cell's tokens ({shown}"
            f"{'; ...' if len(left_out) > 5 else ''}). To keep them, give a vocabulary of all files' genes, one kind "
            "of id (vocab= in Python, e.g. GeneVocab.from_var_names of their union or a model's vocabulary; --vocab "
            "on the command line)",
            UserWarning,
            stacklevel=3,
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
    if old is not None and PRUNED_KEY in old.config:  # kept through every resumed run
        config[PRUNED_KEY] = old.config[PRUNED_KEY]
    if old is not None:
        diffs = _config_differences(old, config, files)
        if diffs:
            raise _mismatch_error(out, diffs)

    def readers() -> Iterator[tuple[_H5adRows, np.ndarray]]:
        for p in paths:
            with _H5adRows(p, layer, gene_id_key) as reader:
                yield reader, token_ids_of[p]  # (matched to this vocabulary above; pruned after this pass)

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
    if prune:
        n_before = len(vocab)
        vocab, medians = _expressed_only(vocab, medians, paths[0])
        config.update(token_dtype=token_dtype(len(vocab)).name, vocab_size=len(vocab), vocab_sha256=vocab.sha256())
        config[PRUNED_KEY] = n_before - len(vocab)  # a record (not a compared key: older corpora resume)
        if (out / VOCAB_FILE).is_file() and not _same_vocab_file(out / VOCAB_FILE, vocab):
            raise _foreign_file_error(out, VOCAB_FILE)
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
        if (out / MEDIANS_FILE).is_file():
            earlier = _load_npy(out / MEDIANS_FILE)
            if earlier is None or _sha256_array(earlier) != config["medians_sha256"]:
                raise _foreign_file_error(out, MEDIANS_FILE)
        vocab.to_json(out / VOCAB_FILE)
        _atomic_save_npy(out / MEDIANS_FILE, medians)
        manifest = Manifest(config=config, files=files, created=_now(), package_version=__version__, root=out)
    else:
        if not (out / VOCAB_FILE).is_file():
            vocab.to_json(out / VOCAB_FILE)
        stored = out / MEDIANS_FILE
        if not stored.is_file() or _sha256_array(np.load(stored)) != config["medians_sha256"]:
            _atomic_save_npy(stored, medians)
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
        why = [f"{name}: {w}" for name, w in shard_problems(out / SHARD_DIR / s["name"], int(s["n"])).items()]
        if why:
            raise ValueError(
                f"{str(out)!r}: shard {s['name']} is recorded in the manifest but its files are damaged ({why}); "
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
                # (the fallback of genes without a median from all the corpus's medians, not from this file's genes)
                col_medians = np.where(token_ids >= 0, with_fallback(medians)[np.clip(token_ids, 0, None)], np.nan)
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
