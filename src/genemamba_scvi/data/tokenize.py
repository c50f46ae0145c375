"""Rank-value tokenisation of cells (Geneformer / GeneMamba), vectorised over CSR.

A cell becomes the token ids of its expressed genes ordered by ``count / cell total / gene median``,
descending, truncated to the top ``k``. The computation never makes a dense cells x genes copy: row
chunks of the CSR arrays are turned into one ``uint64`` sort key per non-zero entry,

``key = (row_in_chunk << 48) | ((0x7FFFFFFF - float32_bits(value)) << 17) | token_id``

so that a single ``np.sort`` orders entries by row, then by value descending (the bit pattern of a
non-negative float32 is monotone in its value), then by token id ascending. The first ``k`` entries of
each row are scattered into the output. Vocabularies with token ids >= 2**17 fall back to
``np.lexsort`` on the same three keys (same result, slower).

:func:`published_tokenize` is the preprocessing of the published GeneMamba code instead (raw values,
zero-count genes kept, unknown genes as ``[UNK]``), for the published weights; see its docstring.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from .vocab import CLS_TOKEN, SPECIAL_TOKENS

__all__ = [
    "TIE_BREAKS",
    "TOKENIZATIONS",
    "TOKENIZER_SETTINGS",
    "TokenizerSettings",
    "fallback_median",
    "published_tokenize",
    "rank_tokenize",
    "tie_break_keys",
    "with_fallback",
]

TOKENIZATIONS: tuple[str, ...] = ("ranked", "published")
"""``"ranked"``: :func:`rank_tokenize` (the paper's median-normalised ranks, our default);
``"published"``: :func:`published_tokenize` (what the published GeneMamba code feeds its weights)."""

TIE_BREAKS = ("median", "random")


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """How a model turns a cell's counts into tokens: the settings a saved model keeps in its ``config.json``.

    The one owner of these settings: :class:`~genemamba_scvi.model.GeneMambaModel` checks them here, writes
    :meth:`to_config` into its configuration, and tokenizes new cells by :meth:`from_config` of it (which fills the
    defaults of settings that older saves lack), as does a model pre-trained on a corpus.

    Parameters
    ----------
    max_genes
        Genes per cell (top-k), an integer >= 1.
    tokenization
        One of :data:`TOKENIZATIONS`.
    unk_token
        ``"published"`` only: the vocabulary entry of genes outside it (``None``: dropped).
    tie_break
        One of :data:`TIE_BREAKS` (see :func:`rank_tokenize`).
    """

    max_genes: int = 2048
    tokenization: str = "ranked"
    unk_token: str | None = None
    tie_break: str = "median"

    def __post_init__(self) -> None:
        m = self.max_genes
        if not isinstance(m, numbers.Integral) or isinstance(m, bool) or m < 1:
            raise ValueError(f"max_genes must be an integer >= 1 (genes per cell; 2048 as published), got {m!r}")
        object.__setattr__(self, "max_genes", int(m))
        for name, choices in (("tokenization", TOKENIZATIONS), ("tie_break", TIE_BREAKS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.unk_token is not None and not isinstance(self.unk_token, str):
            raise ValueError(f"unk_token must be a vocabulary entry (a string) or None, got {self.unk_token!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TokenizerSettings:
        """The settings in a model's configuration; those it lacks (saved before they existed) take the defaults."""
        return cls(**{name: config[name] for name in TOKENIZER_SETTINGS if name in config})

    def to_config(self) -> dict[str, Any]:
        """The settings as ``config.json`` keeps them."""
        return dataclasses.asdict(self)


#: The names of :class:`TokenizerSettings`, in ``config.json``'s order.
TOKENIZER_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TokenizerSettings))

_CLS_ID = SPECIAL_TOKENS.index(CLS_TOKEN)
_TOKEN_BITS = 17
_ROW_BITS = 16
_MAX_KEY_TOKEN = (1 << _TOKEN_BITS) - 1
_MAX_CHUNK_ROWS = (1 << _ROW_BITS) - 1
_TARGET_CHUNK_NNZ = 1 << 18


def _default_workers() -> int:
    """Tokenizer threads by default: the CPUs this process may use, at most ``OMP_NUM_THREADS`` and 8.

    The CPUs are the process's affinity (a SLURM or taskset allocation); ``OMP_NUM_THREADS`` is a pipeline's
    thread budget (e.g. Snakemake's ``threads:``).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) >= 1:
        usable = min(usable, int(omp))
    return max(1, min(usable, 8))


def fallback_median(gene_medians: np.ndarray, gene_token_ids: np.ndarray | None = None) -> float:
    """Median used for genes without a usable median (NaN, infinite or <= 0, i.e. never seen in the corpus).

    It is the median of the finite positive medians (of the genes with a token, when ``gene_token_ids`` is
    given), or 1.0 if there is none. Such genes are thus ranked like a typical gene of the same count.
    """
    med = np.asarray(gene_medians, dtype=np.float64)
    ok = np.isfinite(med) & (med > 0)
    if gene_token_ids is not None:
        ok &= np.asarray(gene_token_ids) >= 0
    return float(np.median(med[ok])) if ok.any() else 1.0


def with_fallback(gene_medians: np.ndarray) -> np.ndarray:
    """Medians per token with :func:`fallback_median` of all of them where one is unusable (NaN, infinite, <= 0).

    A model's or a corpus's medians filled once, so that a gene without a median ranks the same whatever other genes
    an AnnData or a file holds (:func:`rank_tokenize` fills NaN from the columns it is given).
    """
    med = np.asarray(gene_medians, dtype=np.float64)
    bad = ~(np.isfinite(med) & (med > 0))
    return np.where(bad, fallback_median(med), med) if bad.any() else med


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-mixed hash of ``uint64`` values (wraps modulo 2**64)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def tie_break_keys(token_ids: np.ndarray, counts: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Pseudo-random ``uint64`` key of each (cell, gene) entry, seeded by that cell's own counts only.

    ``tie_break="random"`` orders the genes of equal raw count within a cell by this key. The per-cell seed
    is an order-independent hash of the cell's ``(token id, count)`` entries, so the result depends on
    nothing but the cell (not its row, the other cells or the column order) and is reproducible.

    Parameters
    ----------
    token_ids
        Token id of each entry.
    counts
        Raw count of each entry (any float; compared bit for bit as ``float32``).
    cell
        Cell (row) index of each entry, ``0 .. n_cells - 1``, entries of one cell contiguous.

    Returns
    -------
    ``uint64`` keys, one per entry.
    """
    t = np.asarray(token_ids).astype(np.uint64)
    c = np.asarray(counts, dtype=np.float32).view(np.uint32).astype(np.uint64)
    cell = np.asarray(cell, dtype=np.int64)
    entry = _mix64((t << np.uint64(32)) | c)
    n_cells = int(cell.max()) + 1 if cell.size else 0
    salt = np.zeros(n_cells, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.add.at(salt, cell, entry)  # wraps modulo 2**64: an order-independent sum
        return _mix64(_mix64(salt)[cell] ^ (t * np.uint64(0x9E3779B97F4A7C15)))


def _shuffle_equal_counts(t_sorted: np.ndarray, c_sorted: np.ndarray, row_sorted: np.ndarray) -> np.ndarray:
    """Permute, within each (cell, equal count) group, which gene sits in which of the group's slots."""
    rand = tie_break_keys(t_sorted, c_sorted, row_sorted)
    cbits = c_sorted.astype(np.float32).view(np.uint32)
    slots = np.lexsort((np.arange(t_sorted.size), cbits, row_sorted))  # group's slots, in rank order
    drawn = np.lexsort((rand, cbits, row_sorted))  # group's genes, in pseudo-random order
    out = np.empty_like(t_sorted)
    out[slots] = t_sorted[drawn]
    return out


def _checked_token_ids(gene_token_ids: Any, n_genes: int) -> np.ndarray:
    """``gene_token_ids`` as int64, one id (or -1: no token) per column; a clear error otherwise."""
    tok = np.asarray(gene_token_ids)
    if tok.ndim != 1 or tok.shape[0] != n_genes:
        raise ValueError(f"gene_token_ids has shape {tok.shape}, expected ({n_genes},) = one id per column of X")
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"gene_token_ids must be integers, got dtype {tok.dtype}")
    tok = tok.astype(np.int64, copy=False)
    if n_genes and tok.min() < -1:
        raise ValueError(f"gene_token_ids must be >= -1 (-1: no token), got {int(tok.min())}")
    return tok


def _to_csr(X: Any) -> sp.csr_matrix | sp.csr_array:
    if sp.issparse(X):
        if X.format != "csr":
            # csc / coo / ...: one sparse conversion (O(nnz) extra memory), never a dense copy.
            X = X.tocsr()
        if not X.has_canonical_format:  # duplicated (row, column) entries: sum them, on a copy
            X = X.copy()
            X.sum_duplicates()
        return X
    if isinstance(X, np.ndarray):
        return sp.csr_matrix(X.astype(np.float32) if X.dtype == np.float16 else X)  # scipy has no float16
    raise TypeError(f"X must be a scipy sparse matrix (CSR preferred) or a numpy array, got {type(X).__name__}")


def _chunk_bounds(indptr: np.ndarray, chunk_size: int | None) -> list[tuple[int, int]]:
    n = indptr.shape[0] - 1
    if chunk_size is not None:
        step = min(int(chunk_size), _MAX_CHUNK_ROWS)
        return [(s, min(s + step, n)) for s in range(0, n, step)]
    bounds = []
    start = 0
    while start < n:
        end = int(np.searchsorted(indptr, indptr[start] + _TARGET_CHUNK_NNZ, side="right")) - 1
        end = min(max(end, start + 1), start + _MAX_CHUNK_ROWS, n)
        bounds.append((start, end))
        start = end
    return bounds


def _tokenize_chunk(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    r0: int,
    r1: int,
    tok: np.ndarray,
    med: np.ndarray,
    k: int,
    add_cls: bool,
    out_flat: np.ndarray,
    lengths: np.ndarray,
    max_genes: int,
    use_keys: bool,
    tie_break: str = "median",
) -> None:
    s, e = int(indptr[r0]), int(indptr[r1])
    if e == s:
        return
    n = r1 - r0
    row_nnz = np.diff(indptr[r0 : r1 + 1])
    d = data[s:e]
    dmin = d.min()
    if not dmin >= 0:  # also catches NaN
        raise ValueError(
            f"X contains {'NaN' if np.isnan(dmin) else 'negative'} values in rows {r0}-{r1 - 1} (e.g. {dmin}); "
            "rank_tokenize needs raw counts"
        )
    # cell totals over all genes of the cell (tokenless genes included)
    totals = np.zeros(n, dtype=np.float64)
    nonempty = row_nnz > 0
    totals[nonempty] = np.add.reduceat(d, (indptr[r0:r1] - s)[nonempty], dtype=np.float64)
    cols = indices[s:e]
    t = tok[cols]
    keep = (t >= 0) & (d > 0)
    if keep.all():
        counts = row_nnz
    else:
        kept_before = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        counts = np.diff(kept_before[indptr[r0 : r1 + 1] - s])
        cols, t, d = cols[keep], t[keep], d[keep]
    m = t.size
    if m == 0:
        return
    v = d.astype(np.float64)
    v /= np.repeat(totals, counts)
    v /= med[cols]
    v32 = v.astype(np.float32)
    del v
    if tie_break == "random":
        rows = np.repeat(np.arange(n), counts)
        order = np.lexsort((t, -v32, rows))
        t_sorted = _shuffle_equal_counts(t[order], d[order], rows[order]).astype(np.int32)
        del order, rows
    elif use_keys:
        key = np.repeat(np.arange(n, dtype=np.uint64) << np.uint64(64 - _ROW_BITS), counts)
        inv = np.uint32(0x7FFFFFFF) - v32.view(np.uint32)
        key |= inv.astype(np.uint64) << np.uint64(_TOKEN_BITS)
        del inv
        key |= t.astype(np.uint64)
        # Keys are unique (a token occurs once per row), so stability is irrelevant; numpy >= 2 sorts uint64
        # with the vectorised x86-simd-sort quicksort (AVX2/AVX-512), ~2x faster than timsort here.
        key.sort()
        t_sorted = (key & np.uint64(_MAX_KEY_TOKEN)).astype(np.int32)
        del key
    else:
        order = np.lexsort((t, -v32, np.repeat(np.arange(n), counts)))
        t_sorted = t[order].astype(np.int32)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    row_base = np.arange(r0, r1, dtype=np.int64) * max_genes + int(add_cls)
    dest = np.repeat(row_base - starts, counts)
    dest += np.arange(m, dtype=np.int64)
    if counts.max() > k:
        sel = dest < np.repeat(row_base + k, counts)
        dest, t_sorted = dest[sel], t_sorted[sel]
    out_flat[dest] = t_sorted
    kept = np.minimum(counts, k)
    if add_cls:
        has = counts > 0
        out_flat[(np.arange(r0, r1, dtype=np.int64) * max_genes)[has]] = _CLS_ID
        kept = kept + has
    lengths[r0:r1] = kept


def rank_tokenize(
    X: Any,
    gene_token_ids: np.ndarray,
    gene_medians: np.ndarray,
    max_genes: int = 2048,
    add_cls: bool = False,
    chunk_size: int | None = None,
    n_jobs: int | None = None,
    tie_break: str = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise cells: their genes ranked by ``count / cell total / gene median``, descending, top ``k``.

    Parameters
    ----------
    X
        ``(n_cells, n_genes)`` raw counts, CSR. CSC / COO / other sparse formats are converted with one
        sparse ``.tocsr()`` (extra ``O(nnz)`` memory), and so is a CSR with duplicated entries (they are
        summed); a dense numpy array is converted to CSR. Never a dense copy of a sparse input; the input is
        never modified.
    gene_token_ids
        ``(n_genes,)`` token id of each column (e.g. ``GeneMatch.token_ids``); -1 for columns without a token,
        which are never emitted (their counts still enter the cell total).
    gene_medians
        ``(n_genes,)`` gene median of each column (:func:`~genemamba_scvi.data.normalize.compute_gene_medians`
        on the corpus, mapped to these columns). Entries that are NaN, infinite or <= 0 (genes never seen in
        the corpus) are replaced by :func:`fallback_median`, the median of the finite positive medians.
    max_genes
        Length of the token rows.
    add_cls
        Put ``<cls>`` (id 1) at position 0 of every non-empty cell; at most ``max_genes - 1`` genes follow.
    chunk_size
        Rows per chunk (larger values are taken as 65535); default: chunks of about 262,144 non-zeros (temporary
        memory is about 60 bytes per non-zero of a chunk, per worker, so about 16 MB).
    n_jobs
        Worker threads over chunks (numpy releases the GIL in the heavy steps); default: the CPUs this process
        may use (its affinity), at most ``OMP_NUM_THREADS`` when set, and at most 8.
    tie_break
        How genes of equal raw count in a cell are ordered. ``"median"`` (default, Geneformer's ranking):
        by ``count / total / median`` like all genes, i.e. by ascending gene median, a fixed order shared by
        every cell. ``"random"``: genes of equal count are exchangeable; the slots they occupy in the
        ``"median"`` ranking are kept, but which of them goes to which slot follows
        :func:`tie_break_keys`, a pseudo-random order seeded by the cell's own counts (reproducible, and
        independent of the row, of the other cells and of the column order). With ``"random"``, genes of
        equal count that straddle the top-``k`` cut are thus a pseudo-random subset.

    Returns
    -------
    tokens
        ``int32 (n_cells, max_genes)``, right-padded with 0 (``<pad>``).
    lengths
        ``int32 (n_cells,)``: number of real tokens per cell (``<cls>`` included).

    Notes
    -----
    - The value compared is ``float32(float64(count) / total / median)``; equal values (at float32
      precision) are ordered by ascending token id, so the result never depends on the column order of ``X``.
    - Genes with zero count are never emitted; explicitly stored zeros are ignored.
    - A cell with zero total count gives a row of length 0 (all padding, no ``<cls>``); the caller decides
      whether to drop it or to fail.
    - Counts are assumed to be raw counts (see :func:`~genemamba_scvi.data.normalize.validate_counts`);
      NaN or negative values raise ``ValueError``.
    """
    Xc = _to_csr(X)
    n_cells, n_genes = Xc.shape
    tok = _checked_token_ids(gene_token_ids, n_genes)
    if np.any((tok >= 0) & (tok < len(SPECIAL_TOKENS))):
        raise ValueError(f"gene_token_ids use special-token ids 0..{len(SPECIAL_TOKENS) - 1}; gene ids start at 3")
    med = np.asarray(gene_medians, dtype=np.float64)
    if med.ndim != 1 or med.shape[0] != n_genes:
        raise ValueError(f"gene_medians has shape {med.shape}, expected ({n_genes},) = one median per column of X")
    bad = ~(np.isfinite(med) & (med > 0))
    if bad.any():
        med = np.where(bad, fallback_median(med, tok), med)
    max_genes = int(max_genes)
    if max_genes < 1 or (add_cls and max_genes < 2):
        raise ValueError(f"max_genes must be >= {2 if add_cls else 1}, got {max_genes}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    k = max_genes - int(bool(add_cls))

    tokens = np.zeros((n_cells, max_genes), dtype=np.int32)
    lengths = np.zeros(n_cells, dtype=np.int32)
    if n_cells == 0 or Xc.nnz == 0:
        return tokens, lengths
    use_keys = bool(tok.max() <= _MAX_KEY_TOKEN)
    indptr = np.asarray(Xc.indptr, dtype=np.int64)
    bounds = _chunk_bounds(indptr, chunk_size)
    out_flat = tokens.reshape(-1)
    args = (indptr, Xc.indices, Xc.data)
    rest = (tok, med, k, bool(add_cls), out_flat, lengths, max_genes, use_keys, tie_break)
    workers = min(n_jobs or _default_workers(), len(bounds))
    if workers <= 1:
        for r0, r1 in bounds:
            _tokenize_chunk(*args, r0, r1, *rest)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_tokenize_chunk, *args, r0, r1, *rest) for r0, r1 in bounds]
            for f in futures:
                f.result()
    return tokens, lengths


_PUBLISHED_CHUNK_ELEMENTS = 1 << 22


def published_tokenize(
    X: Any,
    gene_token_ids: np.ndarray,
    max_genes: int = 2048,
    add_cls: bool = False,
    unk_id: int | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise cells as the published GeneMamba code does: every gene, ranked by its raw value.

    Written from ``permute_genes_by_expression`` (``genemamba/utils/utils.py``) and
    ``examples/annotation/cell_type_annotation.py`` of the GitHub repository MineSelf2016/mamba_dev:
    each column gets its token id (``tokenizer.convert_tokens_to_ids``, which returns the ``[UNK]`` id
    for a gene outside the vocabulary), each cell's columns are ordered by ``np.argsort(-x)`` of the
    cell's dense row, the first ``seq_len`` are kept, and ``[CLS]`` is put in front.

    Parameters
    ----------
    X
        ``(n_cells, n_genes)`` values, sparse or dense (never densified beyond a chunk of rows).
        Ranking is invariant to any per-cell positive scaling and to monotone transforms such as
        ``log1p``, so raw counts, ``normalize_total`` and ``log1p`` data give the same tokens.
    gene_token_ids
        ``(n_genes,)`` token id of each column; ``-1`` for genes outside the vocabulary.
    max_genes
        Genes per cell (the published ``--seq_len``, default 2048). ``<cls>`` comes on top.
    add_cls
        Put ``<cls>`` (id 1) at position 0, followed by ``max_genes`` genes, as the published
        annotation script does; rows are then ``max_genes + 1`` long.
    unk_id
        Token id that genes outside the vocabulary take (the official ``[UNK]`` kept as a vocabulary
        entry); ``None`` drops those columns (for vocabularies without an unknown token).
    chunk_size
        Rows densified at a time; default: about 4 million values per chunk.

    Returns
    -------
    tokens
        ``int32 (n_cells, max_genes + add_cls)``, right-padded with 0 (``<pad>``) only when fewer than
        ``max_genes`` columns take part.
    lengths
        ``int32 (n_cells,)``: ``min(max_genes, columns taking part) + add_cls`` for every cell.

    Notes
    -----
    - Genes with a zero value are ranked like any other (after all expressed genes), so every cell
      has the same length and a cell with few expressed genes is filled up with unexpressed ones.
    - Ties (equal values, in particular all the zeros) are ordered by token id, genes outside the
      vocabulary (``unk_id``) after all genes of the vocabulary, so the tokens do not depend on the order
      of ``adata.var``, and zero-count columns of unknown genes (their number varies with the reference and
      with gene filtering) do not enter a cell while zero-count genes of the vocabulary remain. The
      published ``np.argsort(-x)`` uses numpy's default, unstable sort over the columns of its data, whose
      tie order is not specified and cannot be matched; the vocabulary's order is the reproducible choice
      that is the same for every AnnData.
    - NaN or negative values raise ``ValueError``.
    """
    Xc = _to_csr(X)
    n_cells, n_genes = Xc.shape
    tok = _checked_token_ids(gene_token_ids, n_genes)
    unknown = tok < 0
    if unk_id is not None:
        if int(unk_id) < len(SPECIAL_TOKENS):
            raise ValueError(f"unk_id must be a vocabulary entry >= {len(SPECIAL_TOKENS)}, got {unk_id}")
        tok = np.where(unknown, int(unk_id), tok)
    max_genes = int(max_genes)
    if max_genes < 1:
        raise ValueError(f"max_genes must be >= 1, got {max_genes}")
    columns = np.flatnonzero(tok >= 0)
    # Columns taken in token-id order, the unknown genes after the known ones, so that the stable sort below breaks
    # ties by token id: the tokens then depend on the cell's genes and values alone, not on the order of adata.var,
    # and zero-count genes outside the vocabulary fill a cell only after every zero-count gene of the vocabulary.
    by_id = np.lexsort((tok[columns], unknown[columns]))
    columns = columns[by_id]
    col_ids = tok[columns].astype(np.int32)
    k = min(max_genes, columns.size)
    offset = int(bool(add_cls))
    tokens = np.zeros((n_cells, max_genes + offset), dtype=np.int32)
    lengths = np.full(n_cells, k + offset, dtype=np.int32)
    if add_cls:
        tokens[:, 0] = _CLS_ID
    if n_cells == 0 or k == 0:
        return tokens, lengths
    if Xc.nnz:
        dmin = Xc.data.min()
        if not dmin >= 0:
            raise ValueError(
                f"X contains {'NaN' if np.isnan(dmin) else 'negative'} values (e.g. {dmin}); "
                "published_tokenize ranks expression values, which must be >= 0"
            )
    sub = Xc if np.array_equal(columns, np.arange(n_genes)) else Xc[:, columns]
    step = int(chunk_size) if chunk_size is not None else max(1, _PUBLISHED_CHUNK_ELEMENTS // max(columns.size, 1))
    if step < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for r0 in range(0, n_cells, step):
        dense = sub[r0 : r0 + step].toarray().astype(np.float64, copy=False)
        order = np.argsort(-dense, axis=1, kind="stable")[:, :k]
        tokens[r0 : r0 + step, offset : offset + k] = col_ids[order]
    return tokens, lengths
