"""A warning for integer matrices that are not counts (:func:`.normalize.validate_counts` passes them)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from genemamba_scvi.data.normalize import _RAW_HINT

#: rounded log-normalised data: no gene above this in cells of many genes (log1p of counts per million stays below 14)
_ROUNDED_LOG_MAX = 15
_ROUNDED_LOG_MIN_GENES = 500  # cells of this many genes: real counts reach tens (MALAT1, mitochondrial, ribosomal)


def warn_if_rounded_log(X: Any, where: str) -> None:
    """Warn when integer values look like log-normalised data rounded, not counts (:func:`validate_counts` passes them).

    In at least 95% of the cells with 500 or more genes detected (20 such cells or more), no value above 15: raw
    counts of such cells reach tens to hundreds (on the shipped sample, every cell's largest count is 23 or more),
    while ``log1p`` of normalised counts stays below 15 (targeted panels, whose cells hold few genes, are not judged).
    """
    if sp.issparse(X):
        X = X.tocsr() if X.format != "csr" else X
        genes, largest = np.diff(X.indptr), np.asarray(X.max(axis=1).toarray()).ravel()
    elif isinstance(X, np.ndarray) and X.ndim == 2:
        genes, largest = np.count_nonzero(X, axis=1), X.max(axis=1)
    else:
        return
    rich = genes >= _ROUNDED_LOG_MIN_GENES
    n_low = int((largest[rich] <= _ROUNDED_LOG_MAX).sum())
    if rich.sum() >= 20 and n_low >= 0.95 * rich.sum():
        from genemamba_scvi._warn import user_stacklevel

        warnings.warn(
            f"{where} does not look like raw counts: in {n_low} of {int(rich.sum())} cells with "
            f"{_ROUNDED_LOG_MIN_GENES} or more genes detected no gene has a value above {_ROUNDED_LOG_MAX}, where raw "
            "counts of such cells reach tens to hundreds; log-normalised values rounded to integers look like this "
            "(so may the counts of a large imaging panel, thousands of genes at a few transcripts each: then this "
            f"warning does not apply). GeneMamba ranks genes by their counts: {_RAW_HINT}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
