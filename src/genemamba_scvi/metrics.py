"""Evaluation helpers: the scib-metrics wrapper and the paper's gene-rank reconstruction metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData


def benchmark_integration(
    adata: AnnData,
    embedding_keys: Sequence[str],
    batch_key: str,
    label_key: str,
    pre_integrated_key: str | None = None,
    n_jobs: int = 1,
    min_max_scale: bool = False,
    bio_conservation_metrics=None,
    batch_correction_metrics=None,
) -> pd.DataFrame:
    """Score embeddings in ``adata.obsm`` with :class:`scib_metrics.benchmark.Benchmarker`.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``obsm``.
    embedding_keys
        ``obsm`` keys to score, e.g. ``["X_genemamba", "X_pca"]``.
    batch_key, label_key
        ``obs`` columns with batches and cell-type labels.
    pre_integrated_key
        ``obsm`` key of the unintegrated embedding used by some batch metrics (default: a PCA computed by
        scib-metrics).
    n_jobs
        Parallel jobs of the nearest-neighbour search.
    min_max_scale
        Min-max scale the scores across embeddings (scib-metrics' plotting default); ``False`` gives raw
        scores.
    bio_conservation_metrics, batch_correction_metrics
        :class:`scib_metrics.benchmark.BioConservation` / :class:`~scib_metrics.benchmark.BatchCorrection`
        settings (default: all metrics).

    Returns
    -------
    The Benchmarker's results table (embeddings x metrics, plus a ``Metric Type`` row).
    """
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    missing = [k for k in embedding_keys if k not in adata.obsm]
    if missing:
        raise ValueError(f"embedding keys {missing} are not in adata.obsm (keys: {list(adata.obsm.keys())}).")
    for key, what in ((batch_key, "batch_key"), (label_key, "label_key")):
        if key not in adata.obs:
            raise ValueError(f"{what}={key!r} is not a column of adata.obs.")
    bm = Benchmarker(
        adata,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=list(embedding_keys),
        pre_integrated_embedding_obsm_key=pre_integrated_key,
        bio_conservation_metrics=bio_conservation_metrics or BioConservation(),
        batch_correction_metrics=batch_correction_metrics or BatchCorrection(),
        n_jobs=n_jobs,
    )
    bm.benchmark()
    return bm.get_results(min_max_scale=min_max_scale)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions of one token cost 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalized_levenshtein(a: Sequence, b: Sequence) -> float:
    """Levenshtein distance divided by the longer length (0 = identical, 1 = nothing in common)."""
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else levenshtein(a, b) / longest


def bleu(candidate: Sequence, reference: Sequence, max_n: int = 4, smooth: bool = True) -> float:
    """Sentence BLEU of a token sequence against one reference (Papineni et al., 2002).

    Geometric mean of clipped n-gram precisions for n = 1..``max_n`` times the brevity penalty. With
    ``smooth`` an n-gram order with no match counts as 1/(2 x its number of candidate n-grams)
    (Lin & Och 2004, "smoothing 1"-like add-epsilon), so short sequences do not collapse to 0.
    """
    if len(candidate) == 0:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        cand = Counter(tuple(candidate[i : i + n]) for i in range(len(candidate) - n + 1))
        ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        total = sum(cand.values())
        if total == 0:
            return 0.0 if not smooth else float(np.exp(log_precision / n))  # shorter than n: use orders so far
        matched = sum(min(c, ref[g]) for g, c in cand.items())
        if matched == 0:
            if not smooth:
                return 0.0
            precision = 1.0 / (2.0 * total)
        else:
            precision = matched / total
        log_precision += np.log(precision)
    c, r = len(candidate), len(reference)
    brevity = 1.0 if c > r else float(np.exp(1 - r / c))
    return float(brevity * np.exp(log_precision / max_n))
