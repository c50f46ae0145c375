"""Count validation and per-gene non-zero medians (Geneformer normalisation), streaming.

GeneMamba ranks the genes of a cell by ``count / cell total / gene median``, where the gene median is
the median of ``count / cell total`` over the cells that express the gene (non-zero entries only), as
in Geneformer. The medians are a property of the pretraining corpus and are stored with the model.

:class:`GeneMedianAccumulator` consumes CSR row chunks, so a corpus of any size is processed in one
pass over the data with bounded memory (``method="tdigest"``) or memory ``O(nnz)`` (``method="exact"``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["GeneMedianAccumulator", "NotCountsError", "compute_gene_medians", "validate_counts"]

_BLOCK = 1 << 22  # elements checked at a time by validate_counts (bounds temporary memory)
_RAW_HINT = "pass the raw-count layer with layer=..."
#: non-integer values above this are counts-like (log1p of counts per million stays below 14), so rounding is advice
_COUNT_LIKE_MAX = 50.0
#: counts corrected for ambient RNA (SoupX's default output) are non-negative and non-integer: they have a way forward
AMBIENT_HINT = (
    "counts corrected for ambient RNA (SoupX, DecontX: non-negative, non-integer) can be rounded to integers, as "
    "SoupX's roundToInt=TRUE does (e.g. X.data = np.round(X.data) for a sparse X), or the uncorrected counts used; "
    "log-transformed or scaled values cannot be ranked as counts"
)


class NotCountsError(ValueError):
    """A matrix that is not raw counts; ``problem`` says what is wrong, the message adds how to fix it."""

    def __init__(self, problem: str, hint: str | None = None):
        super().__init__(f"{problem}; GeneMamba needs raw counts — {hint or _RAW_HINT}")
        self.problem = problem
        self.hint = hint or _RAW_HINT


def find_raw_counts(adata: AnnData, checked: str | None) -> tuple[str, str | None] | None:
    """Where else ``adata`` holds raw counts: ``(expression that reads them, layer name or None)``, or ``None``.

    Looks at the layers (in order), ``adata.X`` and ``adata.raw.X`` (restricted to ``adata.var_names``), skipping
    the place already found wanting (``checked``: a layer name, or ``None`` for ``adata.X``). For error messages
    only: each candidate costs one pass over its non-zeros.
    """
    candidates = [(f"adata.layers[{k!r}]", k, X) for k, X in adata.layers.items() if k != checked]
    if checked is not None:
        candidates.append(("adata.X", None, adata.X))
    raw = adata.raw
    if raw is not None and adata.var_names.isin(raw.var_names).all():
        candidates.append(("adata.raw[:, adata.var_names].X", None, raw.X))
    for expression, layer, X in candidates:
        try:
            validate_counts(X, expression)
        except NotCountsError:
            continue
        if np.asarray(X.sum(axis=1)).ravel().max(initial=0) > 0:  # an all-zero placeholder is not counts
            return expression, layer
    return None


def raw_genes_beyond(adata: AnnData) -> int:
    """How many genes ``adata.raw`` holds raw counts of (a non-zero in some cell) that ``adata`` lacks.

    0 where ``adata.raw`` is missing, holds no raw counts, or has no more genes than ``adata``.

    A Seurat-style object keeps every gene's counts in ``.raw`` and a selection (highly variable genes) in ``X``;
    GeneMamba ranks a cell's whole transcriptome, as Geneformer (no gene selection). One pass over ``raw``'s
    non-zeros where it has more genes.
    """
    raw = adata.raw
    if raw is None or raw.n_vars <= adata.n_vars:
        return 0
    try:
        validate_counts(raw.X, "adata.raw.X")
    except NotCountsError:
        return 0
    # only genes with counts: those sc.pp.filter_genes took out of X after adata.raw = adata change no token (review)
    return int((genes_with_counts(raw.X) & ~raw.var_names.isin(adata.var_names)).sum())


def genes_with_counts(X: Any) -> np.ndarray:
    """Whether each column (gene) of ``X`` (dense or scipy sparse) holds a non-zero value (a stored zero is none)."""
    if sp.issparse(X) and X.format == "csr":
        return np.bincount(X.indices[X.data != 0], minlength=X.shape[1]) > 0
    return np.asarray((X != 0).sum(axis=0)).ravel() > 0


def warn_if_raw_holds_more_genes(adata: AnnData) -> None:
    """Warn where ``adata.raw`` holds raw counts of more genes than the AnnData (see :func:`raw_genes_beyond`)."""
    if extra := raw_genes_beyond(adata):
        from genemamba_scvi._warn import user_stacklevel

        warnings.warn(
            f"adata.raw holds raw counts of {extra} genes this AnnData lacks (it has {adata.n_vars}: a selection such "
            "as highly variable genes?); GeneMamba ranks each cell's whole transcriptome, as "
            "Geneformer does (no gene selection): for every gene, adata = adata.raw.to_adata() (obs and obsm are "
            "kept) and set up with layer=None",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def raw_counts_hint(adata: AnnData, source: str | None, hint: str | None = None) -> str:
    """Advice for the raw counts ``adata.raw`` holds (``source`` reads them for these genes): every gene first.

    ``source`` None: no place of ``adata`` holds counts; ``hint`` (a :class:`NotCountsError`'s) is kept where it is
    specific (ambient-corrected counts), else the advice is to read the counts again: ``layer=...`` cannot help
    (bad-input probe, session 33: an AnnData of log-normalised X and no layers was told to pass a layer).
    """
    if source is None:
        if hint not in (None, _RAW_HINT):
            return hint
        places = ["adata.X", *(f"adata.layers[{k!r}]" for k in adata.layers)] + ["adata.raw"] * (adata.raw is not None)
        return (
            f"none of {', '.join(places)} holds them: read the raw counts again from the file the data came from "
            "(e.g. Cell Ranger's filtered_feature_bc_matrix.h5 with sc.read_10x_h5)"
        )
    if extra := raw_genes_beyond(adata):
        return (
            f"adata.raw holds them, for {extra} more genes than this AnnData: use every gene, "
            f"adata = adata.raw.to_adata(), and set up with layer=None (only these genes: "
            f"adata.layers['counts'] = {source}, and layer='counts')"
        )
    return f"adata.raw holds them: adata.layers['counts'] = {source}, and set up with layer='counts'"


def _values_of(X: Any) -> np.ndarray:
    if sp.issparse(X):
        if X.format not in ("csr", "csc", "coo", "bsr"):
            X = X.tocsr()
        return np.asarray(X.data)
    return np.asarray(X)


def validate_counts(X: Any, where: str) -> None:
    """Check that ``X`` holds raw counts: finite, non-negative integers.

    Parameters
    ----------
    X
        Dense array or scipy sparse matrix/array (only the stored values ``.data`` are read, in blocks,
        so the check costs one pass over the non-zeros and little extra memory).
    where
        What ``X`` is, used in the message, e.g. ``"layer 'counts'"`` or ``"adata.X"``.

    Raises
    ------
    NotCountsError
        (a ``ValueError``) naming ``where`` and the problem with an example value: NaN or infinite values, negative
        values, non-integer values (e.g. log-normalised data), or a non-numeric dtype.
    """
    if X is None:
        raise NotCountsError(f"{where} is None (this AnnData has no matrix there)")
    data = _values_of(X).reshape(-1)
    if data.dtype == bool or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise NotCountsError(f"{where} has dtype {data.dtype}, not numeric counts")
    is_int = np.issubdtype(data.dtype, np.integer)
    for start in range(0, data.size, _BLOCK):
        block = data[start : start + _BLOCK]
        if not is_int:
            finite = np.isfinite(block)
            if not finite.all():
                bad = block[~finite][0]
                raise NotCountsError(f"{where} contains NaN or infinite values (e.g. {bad})")
        if block.size and block.min() < 0:
            raise NotCountsError(f"{where} contains negative values (e.g. {block.min():.4g})")
        if not is_int:
            frac = block != np.floor(block)
            if frac.any():
                bad = block[frac][0]
                off = abs(float(bad) - round(float(bad)))
                # rounding is advice for corrected counts only: log-transformed values (below ~15) rounded would pass
                # as counts (review, session 30)
                largest = float(np.max(data))
                raise NotCountsError(
                    f"{where} contains non-integer values (e.g. {_exact(bad)}, {off:.2g} from the nearest integer)",
                    f"{_RAW_HINT}; {AMBIENT_HINT}" if largest > _COUNT_LIKE_MAX else _RAW_HINT,
                )


def _exact(value: Any) -> str:
    """A value with all the digits needed to tell it from its neighbours (``1.0000001``, not ``1``)."""
    return np.format_float_positional(value, unique=True, trim="-")


def _as_csr(chunk: Any) -> sp.csr_matrix:
    if sp.issparse(chunk):
        X = chunk if chunk.format == "csr" else chunk.tocsr()
        if not X.has_canonical_format:  # duplicated entries: sum them, on a copy
            X = X.copy()
            X.sum_duplicates()
        return X
    return sp.csr_matrix(as_scipy_dtype(np.asarray(chunk)))


def as_scipy_dtype(X: np.ndarray) -> np.ndarray:
    """``X`` itself, or a float32 copy of a dense float16 array (scipy.sparse has no float16)."""
    return X.astype(np.float32) if X.dtype == np.float16 else X


class GeneMedianAccumulator:
    """Streaming per-gene median of ``count / cell total`` over the non-zero entries.

    Parameters
    ----------
    n_genes
        Number of gene columns of every chunk.
    method
        ``"exact"``: keeps every non-zero value (8 bytes per non-zero entry, plus per-chunk temporaries),
        exact medians (mean of the two middle values for an even count).
        ``"tdigest"``: one t-digest per gene (Dunning & Ertl 2019, "Computing extremely accurate quantiles
        using t-digests", arXiv:1902.04023; implementation ``fastdigest``) with at most ``max_centroids``
        centroids, so memory is bounded by ``n_genes * max_centroids`` regardless of the number of cells.
        Exact for genes seen in at most ``max_centroids`` cells; otherwise a rank error of the order of
        ``1 / max_centroids`` around the median (on resampled real counts: median relative error 0.03%,
        worst gene a few %, where the data around the median are sparse and discrete).
    max_centroids
        Compression of the t-digests (``method="tdigest"`` only).

    Attributes
    ----------
    n_cells
        Cells seen so far (including zero-count cells).
    n_empty_cells
        Cells with zero total count; they are skipped (they have no defined fractions) and counted here.
    n_nonzero
        ``int64 (n_genes,)``: number of cells expressing each gene.

    Examples
    --------
    >>> acc = GeneMedianAccumulator(adata.n_vars)  # doctest: +SKIP
    >>> for start in range(0, adata.n_obs, 10_000):  # doctest: +SKIP
    ...     acc.update(adata.X[start : start + 10_000])
    >>> medians = acc.result()  # doctest: +SKIP
    """

    def __init__(self, n_genes: int, method: Literal["exact", "tdigest"] = "exact", max_centroids: int = 1000) -> None:
        if method not in ("exact", "tdigest"):
            raise ValueError(f"method must be 'exact' or 'tdigest', got {method!r}")
        if int(n_genes) <= 0:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        self.n_genes = int(n_genes)
        self.method = method
        self.max_centroids = int(max_centroids)
        self.n_cells = 0
        self.n_empty_cells = 0
        self.n_nonzero = np.zeros(self.n_genes, dtype=np.int64)
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # exact: (gene indptr, values) per chunk
        self._digests: list[Any] = [None] * self.n_genes if method == "tdigest" else []
        if method == "tdigest":
            import fastdigest  # noqa: F401  (fail early if missing)

    def update(self, chunk: Any, totals: np.ndarray | None = None) -> None:
        """Add a chunk of cells (rows) of raw counts, CSR preferred (other formats are converted).

        Parameters
        ----------
        chunk
            ``(n_cells, n_genes)`` raw counts. Zero-valued stored entries are ignored. The counts are not
            validated here (see :func:`validate_counts`).
        totals
            Total count of each cell; default: the row sums of ``chunk``. Pass it when ``chunk`` holds only
            some of the cells' genes (e.g. aligned to a reference gene list).
        """
        X = _as_csr(chunk)
        if X.shape[1] != self.n_genes:
            raise ValueError(f"chunk has {X.shape[1]} gene columns, the accumulator was created for {self.n_genes}")
        n_rows = X.shape[0]
        self.n_cells += n_rows
        if n_rows == 0 or X.nnz == 0:
            self.n_empty_cells += n_rows if totals is None else int((np.asarray(totals) == 0).sum())
            return
        indptr = X.indptr.astype(np.int64, copy=False)
        row_nnz = np.diff(indptr)
        frac = np.array(X.data, dtype=np.float64)  # own copy, turned into count / total in place
        if totals is None:
            totals = np.zeros(n_rows, dtype=np.float64)
            nonempty = row_nnz > 0
            totals[nonempty] = np.add.reduceat(frac, indptr[:-1][nonempty])
        else:
            totals = np.asarray(totals, dtype=np.float64).reshape(-1)
            if totals.shape[0] != n_rows:
                raise ValueError(f"totals has {totals.shape[0]} entries for a chunk of {n_rows} cells")
        self.n_empty_cells += int((totals == 0).sum())
        keep = frac > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            frac /= np.repeat(totals, row_nnz)
        # Gene-major layout of this chunk's fractions (scipy's CSR -> CSC transposition, O(nnz + n_genes)).
        if keep.all():
            vals = sp.csr_matrix((frac, X.indices, X.indptr), shape=X.shape)
        else:  # drop stored zeros into new arrays (never modify the caller's matrix)
            kept_before = np.zeros(keep.size + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            vals = sp.csr_matrix((frac[keep], X.indices[keep], kept_before[indptr]), shape=X.shape)
        csc = vals.tocsc()
        del vals, frac
        gene_nnz = np.diff(csc.indptr)
        self.n_nonzero += gene_nnz
        if self.method == "exact":
            self._chunks.append((csc.indptr.astype(np.int64), csc.data.astype(np.float64, copy=False)))
            return
        import fastdigest

        digests = self._digests
        gp = csc.indptr
        d = csc.data
        for g in np.flatnonzero(gene_nnz).tolist():
            seg = d[gp[g] : gp[g + 1]]
            dg = digests[g]
            if dg is None:
                digests[g] = fastdigest.TDigest.from_values(seg, max_centroids=self.max_centroids)
            else:
                dg.batch_update(seg)

    def result(self) -> np.ndarray:
        """Per-gene medians, ``float64 (n_genes,)``; NaN for genes never expressed.

        Warns (``UserWarning``) once if zero-count cells were skipped.
        """
        if self.n_empty_cells:
            warnings.warn(
                f"skipped {self.n_empty_cells} of {self.n_cells} cells with zero total counts when computing "
                "gene medians",
                UserWarning,
                stacklevel=2,
            )
        out = np.full(self.n_genes, np.nan, dtype=np.float64)
        if self.method == "tdigest":
            for g, dg in enumerate(self._digests):
                if dg is not None:
                    out[g] = dg.median()
            return out
        # exact: gather each gene's values from all chunks into one gene-major array, then select medians.
        counts = self.n_nonzero
        starts = np.zeros(self.n_genes + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        allv = np.empty(int(starts[-1]), dtype=np.float64)
        filled = starts[:-1].copy()
        while self._chunks:  # free each chunk once copied: peak memory ~ one copy of the values
            gp, v = self._chunks.pop(0)
            seg = np.diff(gp)
            if v.size == 0:
                continue
            # destination of entry j of gene g: filled[g] + (j - gp[g])
            dest = np.repeat(filled - gp[:-1], seg) + np.arange(v.size, dtype=np.int64)
            allv[dest] = v
            filled += seg
            del gp, v, dest
        self._chunks = [(starts, allv)]  # merged, gene-major: result() can be called again, update() continue
        for g in np.flatnonzero(counts).tolist():
            seg = allv[starts[g] : starts[g + 1]]
            n = seg.size
            lo, hi = (n - 1) // 2, n // 2
            part = np.partition(seg, (lo, hi)) if n > 2 else np.sort(seg)
            out[g] = 0.5 * (part[lo] + part[hi])
        return out


def _iter_row_chunks(X: Any, chunk_size: int) -> Iterator[Any]:
    n = X.shape[0]
    for start in range(0, n, chunk_size):
        yield X[start : min(start + chunk_size, n)]


def count_matrix(adata: AnnData, layer: str | None) -> Any:
    """``adata.X`` or ``adata.layers[layer]``; a missing layer is a ``ValueError`` that lists the layers.

    A dask array of sparse chunks (anndata's lazy reading) is refused, naming the line that loads it: numpy reads it
    as an array of objects, which was told to be "not numeric counts" (probe of corrected inputs, session 30).
    """
    if layer is not None and layer not in adata.layers:
        raise _missing_layer(layer, list(adata.layers.keys()), adata.raw is not None)
    X = adata.X if layer is None else adata.layers[layer]
    if type(X).__module__.startswith("dask") and sp.issparse(getattr(X, "_meta", None)):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise TypeError(
            f"{where} is a dask array of sparse chunks, which GeneMamba does not read lazily: load it into memory "
            f"first, {where} = {where}.compute() (for data larger than memory, build a token corpus with "
            "genemamba_scvi.data.build_corpus from the .h5ad files)"
        )
    return X


def _missing_layer(layer: str, layers: list[str], has_raw: bool, path: str | None = None) -> ValueError:
    """The error for a layer an AnnData (or the ``.h5ad`` file at ``path``) does not hold."""
    raw = (
        "; adata.raw is not a layer: adata.layers['counts'] = adata.raw[:, adata.var_names].X, then layer='counts'"
        if layer == "raw" and has_raw
        else ""
    )
    where = "" if path is None else f" in {path!r}"
    return ValueError(f"layer {layer!r} not found{where}; available layers: {layers}{raw}")


def _where(layer: str | None, path: str | None = None) -> str:
    w = "adata.X" if layer is None else f"layer {layer!r}"
    return w if path is None else f"{w} of {path!r}"


def compute_gene_medians(
    source: Any,
    layer: str | None = None,
    chunk_size: int = 10_000,
    method: Literal["exact", "tdigest"] = "exact",
    genes: Sequence[str] | None = None,
    validate: bool = True,
    max_centroids: int = 1000,
) -> np.ndarray:
    """Per-gene median of ``count / cell total`` over the cells expressing the gene, in one streaming pass.

    Parameters
    ----------
    source
        An :class:`~anndata.AnnData` (in memory or opened with ``backed="r"``; row chunks of ``X`` are read one
        at a time, but anndata reads a backed file's layers whole: pass the path to stream a layer), a scipy
        sparse matrix / array (cells x genes), a dense array, or a ``.h5ad`` path or list of paths (``X`` or
        ``layer`` read in row chunks, a CSR or dense matrix never whole; a CSC one costs more memory per chunk:
        rewrite it as CSR; their genes are aligned by ``var_names`` to ``genes`` or to the first file's
        ``var_names``; genes missing from a file count as not expressed there).
    layer
        Layer with raw counts; ``None`` uses ``X``.
    chunk_size
        Cells per chunk.
    method
        ``"exact"`` or ``"tdigest"`` (bounded memory), see :class:`GeneMedianAccumulator`.
    genes
        Only for a list of paths: the gene order of the result (default: the first file's ``var_names``).
    validate
        Check every chunk with :func:`validate_counts` (one extra pass over the non-zeros).
    max_centroids
        t-digest compression (``method="tdigest"`` only); larger is more accurate and uses more memory.

    Returns
    -------
    ``float64`` array with one median per gene (columns of ``source`` or ``genes``); NaN for genes that are
    never expressed. The cell total is the sum over all genes of the cell (also those dropped by the
    alignment). Cells with zero total counts are skipped with a warning.

    Raises
    ------
    ValueError
        If the data are not raw counts (see :func:`validate_counts`), a layer is missing, or a file shares
        no gene with the reference gene list.
    """
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk_size = int(chunk_size)

    opts = {"method": method, "max_centroids": max_centroids}
    if isinstance(source, (list, tuple)):
        if not all(isinstance(p, (str, os.PathLike)) for p in source):
            raise TypeError("a list source must hold .h5ad paths (str or os.PathLike)")
        return _medians_from_files([os.fspath(p) for p in source], layer, chunk_size, opts, genes, validate)
    if isinstance(source, (str, os.PathLike)):
        return _medians_from_files([os.fspath(source)], layer, chunk_size, opts, genes, validate)
    if genes is not None:
        raise ValueError("genes= is only used with a list of .h5ad paths")
    if not (sp.issparse(source) or isinstance(source, np.ndarray) or hasattr(source, "layers")):
        raise TypeError(
            f"source must be an AnnData, a scipy sparse matrix, a numpy array or a list of .h5ad paths, "
            f"got {type(source).__name__}"
        )

    if sp.issparse(source) or isinstance(source, np.ndarray):
        X, where = source, "matrix"
        if sp.issparse(X) and X.format != "csr":
            X = X.tocsr()  # row chunks need CSR (one sparse copy, never dense)
    else:
        X, where = count_matrix(source, layer), _where(layer)
        if sp.issparse(X) and X.format != "csr":
            X = X.tocsr()
    acc = GeneMedianAccumulator(X.shape[1], **opts)
    for chunk in _iter_row_chunks(X, chunk_size):
        chunk = _as_csr(chunk)
        if validate:
            validate_counts(chunk, where)
        acc.update(chunk)
    return _result_warned(acc)


def _result_warned(acc: GeneMedianAccumulator) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = acc.result()
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=3)
    return out


def _medians_from_files(
    paths: list[str],
    layer: str | None,
    chunk_size: int,
    opts: dict[str, Any],
    genes: Sequence[str] | None,
    validate: bool,
) -> np.ndarray:
    if not paths:
        raise ValueError("no .h5ad paths given")
    ref: list[str] | None = None if genes is None else [str(g) for g in genes]
    acc: GeneMedianAccumulator | None = None
    for path in paths:
        with _file_matrix(path, layer) as (var_names, X):
            if ref is None:
                ref = var_names
            ref_index = {g: i for i, g in enumerate(ref)}
            if len(ref_index) != len(ref):
                raise ValueError("the reference gene list has duplicated names")
            if acc is None:
                acc = GeneMedianAccumulator(len(ref), **opts)
            col_map = np.array([ref_index.get(g, -1) for g in var_names], dtype=np.int64)
            if not (col_map >= 0).any():
                raise ValueError(f"{path!r} shares no gene (var_names) with the reference gene list")
            identity = len(var_names) == len(ref) and bool((col_map == np.arange(len(ref))).all())
            where = _where(layer, path)
            for chunk in _iter_row_chunks(X, chunk_size):
                chunk = _as_csr(chunk)
                if validate:
                    validate_counts(chunk, where)
                if identity:
                    acc.update(chunk)
                else:
                    acc.update(*_realign(chunk, col_map, len(ref)))
    assert acc is not None
    return _result_warned(acc)


@contextlib.contextmanager
def _file_matrix(path: str, layer: str | None) -> Iterator[tuple[list[str], Any]]:
    """``(var_names, matrix)`` of an ``.h5ad`` file, the matrix (``X`` or ``layer``) read from disk by row slices.

    anndata's backed mode backs ``X`` only and reads every layer whole when it opens a file (backed probe, session
    28: a 314 MB counts layer in memory), so the file is opened with h5py and the one matrix read lazily.
    """
    import anndata.io
    import h5py

    with h5py.File(path, "r") as f:
        matrix = h5ad_count_matrix(f, layer, path)
        yield [str(g) for g in anndata.io.read_elem(f["var"]).index], matrix


def h5ad_count_matrix(f: Any, layer: str | None, path: str | os.PathLike) -> Any:
    """``X`` or ``layer`` of an ``.h5ad`` file open in h5py, as a matrix read by row slices (never whole).

    A sparse matrix is anndata's lazy dataset (``.format`` "csr" or "csc"), a dense one the h5py dataset. The
    corpus reader and :func:`compute_gene_medians` over paths both open files this way.
    """
    import anndata.io
    import h5py

    if layer is None:
        if "X" not in f:
            raise ValueError(f"{str(path)!r} has no X matrix; pass layer=... naming the raw-count layer")
        elem = f["X"]
    else:
        layers = f["layers"] if "layers" in f else {}
        if layer not in layers:
            raise _missing_layer(layer, list(layers.keys()), "raw" in f, str(path))
        elem = layers[layer]
    return anndata.io.sparse_dataset(elem) if isinstance(elem, h5py.Group) else elem


def _realign(chunk: sp.csr_matrix, col_map: np.ndarray, n_ref: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Map a chunk's columns onto the reference genes; return it with the cells' totals over all genes."""
    totals = np.asarray(chunk.sum(axis=1, dtype=np.float64)).reshape(-1)
    new_cols = col_map[chunk.indices]
    keep = new_cols >= 0
    kept_before = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    indptr = kept_before[chunk.indptr]
    out = sp.csr_matrix((chunk.data[keep], new_cols[keep], indptr), shape=(chunk.shape[0], n_ref))
    out.sort_indices()
    return out, totals
