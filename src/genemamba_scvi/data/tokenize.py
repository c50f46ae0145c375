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

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from .vocab import CLS_TOKEN, SPECIAL_TOKENS

__all__ = ["TOKENIZATIONS", "fallback_median", "published_tokenize", "rank_tokenize"]

TOKENIZATIONS: tuple[str, ...] = ("ranked", "published")
"""``"ranked"``: :func:`rank_tokenize` (the paper's median-normalised ranks, our default);
``"published"``: :func:`published_tokenize` (what the published GeneMamba code feeds its weights)."""

_CLS_ID = SPECIAL_TOKENS.index(CLS_TOKEN)
_TOKEN_BITS = 17
_ROW_BITS = 16
_MAX_KEY_TOKEN = (1 << _TOKEN_BITS) - 1
_MAX_CHUNK_ROWS = (1 << _ROW_BITS) - 1
_TARGET_CHUNK_NNZ = 1 << 18


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
    if use_keys:
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
        Rows per chunk (at most 65535); default: chunks of about 262,144 non-zeros (temporary memory is
        about 60 bytes per non-zero of a chunk, per worker, so about 16 MB).
    n_jobs
        Worker threads over chunks (numpy releases the GIL in the heavy steps); default ``os.cpu_count()``,
        at most 8.

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
    tok = np.asarray(gene_token_ids)
    if tok.ndim != 1 or tok.shape[0] != n_genes:
        raise ValueError(f"gene_token_ids has shape {tok.shape}, expected ({n_genes},) = one id per column of X")
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"gene_token_ids must be integers, got dtype {tok.dtype}")
    tok = tok.astype(np.int64, copy=False)
    if n_genes and tok.min() < -1:
        raise ValueError(f"gene_token_ids must be >= -1 (-1: no token), got {int(tok.min())}")
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
    rest = (tok, med, k, bool(add_cls), out_flat, lengths, max_genes, use_keys)
    workers = min(n_jobs or min(os.cpu_count() or 1, 8), len(bounds))
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
    - Ties (equal values, in particular all the zeros) are ordered by column, i.e. by the order of
      ``adata.var``. The published ``np.argsort(-x)`` uses numpy's default, unstable sort, whose tie
      order is not specified; the stable order is the reproducible choice closest to it.
    - NaN or negative values raise ``ValueError``.
    """
    Xc = _to_csr(X)
    n_cells, n_genes = Xc.shape
    tok = np.asarray(gene_token_ids)
    if tok.ndim != 1 or tok.shape[0] != n_genes:
        raise ValueError(f"gene_token_ids has shape {tok.shape}, expected ({n_genes},) = one id per column of X")
    if not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"gene_token_ids must be integers, got dtype {tok.dtype}")
    tok = tok.astype(np.int64)
    if n_genes and tok.min() < -1:
        raise ValueError(f"gene_token_ids must be >= -1 (-1: no token), got {int(tok.min())}")
    if unk_id is not None:
        if int(unk_id) < len(SPECIAL_TOKENS):
            raise ValueError(f"unk_id must be a vocabulary entry >= {len(SPECIAL_TOKENS)}, got {unk_id}")
        tok = np.where(tok < 0, int(unk_id), tok)
    max_genes = int(max_genes)
    if max_genes < 1:
        raise ValueError(f"max_genes must be >= 1, got {max_genes}")
    columns = np.flatnonzero(tok >= 0)
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
    sub = Xc[:, columns] if columns.size < n_genes else Xc
    step = int(chunk_size) if chunk_size is not None else max(1, _PUBLISHED_CHUNK_ELEMENTS // max(columns.size, 1))
    if step < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for r0 in range(0, n_cells, step):
        dense = sub[r0 : r0 + step].toarray().astype(np.float64, copy=False)
        order = np.argsort(-dense, axis=1, kind="stable")[:, :k]
        tokens[r0 : r0 + step, offset : offset + k] = col_ids[order]
    return tokens, lengths
