"""Evaluation helpers: the scib-metrics wrapper and the paper's gene-rank reconstruction metrics."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from anndata import AnnData

from genemamba_scvi._knn import Neighbors, check_neighbors, scib_neighbors


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
    progress_bar: bool = True,
    neighbors: Neighbors = "auto",
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
        ``obsm`` key of the unintegrated embedding used by some batch metrics (default: a 50-component PCA of
        ``adata.X``, scib-metrics' default, computed here without writing it into ``adata``: scib-metrics itself
        would overwrite ``obsm["X_pca"]``, also when that is one of the embeddings scored).
    n_jobs
        Parallel jobs of the nearest-neighbour search.
    min_max_scale
        Min-max scale the scores across embeddings (scib-metrics' plotting default); ``False`` gives raw
        scores.
    bio_conservation_metrics, batch_correction_metrics
        :class:`scib_metrics.benchmark.BioConservation` / :class:`~scib_metrics.benchmark.BatchCorrection`
        settings (default: all metrics). ``batch_correction_metrics=False`` skips batch metrics, as happens
        automatically (with a warning) when ``batch_key`` holds a single batch or no cell type occurs in two
        batches.
    progress_bar
        Show scib-metrics' progress bars (``False`` in notebooks rendered to HTML, where they leave fragments).
    neighbors
        How the neighbour-based metrics find each cell's neighbours: ``"exact"`` (a brute-force search: the true
        neighbours, fast for thousands of cells; also for kBET's per-label neighbours), ``"pynndescent"``
        (scib-metrics' default: approximate, for large data; its first call of a process compiles for a minute or
        more), or ``"auto"`` (default): exact up to 20,000 cells.

    Returns
    -------
    The Benchmarker's results table (embeddings x metrics, plus a ``Metric Type`` row). ``adata`` is not changed.

    Notes
    -----
    scib-metrics' ``KMeans NMI`` / ``KMeans ARI`` are one k-means run (one k-means++ initialisation, seed 0), which
    also moves with the cells' order: one call's values are one draw, not a deterministic property of the embedding
    (PCA on the 700 pbmc68k cells of the biology benchmark: ARI 0.47-0.64 over 20 initialisations,
    ``benchmarks/results/kmeans_spread.json``). :func:`kmeans_nmi_ari` gives their spread over initialisations. The
    neighbour-based metrics (cLISI, iLISI, kBET, graph connectivity) do not depend on the order with exact
    neighbours (the default up to 20,000 cells), and only through the approximation with pynndescent's.
    """
    import scanpy as sc
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    check_neighbors(neighbors)
    keys = [*embedding_keys, *([pre_integrated_key] if pre_integrated_key is not None else [])]
    _check_scoring_input(adata, keys, {"batch_key": batch_key, "label_key": label_key})
    # scib-metrics writes its default PCA (and more) into the AnnData it is given: give it its own
    work = AnnData(
        X=adata.X,
        obs=adata.obs[[batch_key, label_key]].copy(),
        obsm={k: np.array(adata.obsm[k], copy=True) for k in keys},
    )
    if pre_integrated_key is None:
        pre_integrated_key = "_unintegrated_pca"
        work.obsm[pre_integrated_key] = sc.pp.pca(work.X, svd_solver="arpack")  # as scib-metrics does
    if batch_correction_metrics is None:
        batch_correction_metrics = BatchCorrection()
    n_batches = adata.obs[batch_key].nunique()
    if n_batches < 2 and batch_correction_metrics is not False:
        warnings.warn(
            f"adata.obs[{batch_key!r}] holds a single batch: batch-correction metrics are undefined and skipped.",
            UserWarning,
            stacklevel=2,
        )
        batch_correction_metrics = False
    shared = adata.obs.groupby(label_key, observed=True)[batch_key].nunique()
    if batch_correction_metrics is not False and n_batches >= 2 and not (shared >= 2).any():
        warnings.warn(
            f"no cell type of adata.obs[{label_key!r}] occurs in two or more batches of adata.obs[{batch_key!r}]: "
            "batch mixing within a cell type (scib-metrics' silhouette_batch) is undefined, so the batch-correction "
            "metrics are skipped.",
            UserWarning,
            stacklevel=2,
        )
        batch_correction_metrics = False
    bm = Benchmarker(
        work,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=list(embedding_keys),
        pre_integrated_embedding_obsm_key=pre_integrated_key,
        bio_conservation_metrics=bio_conservation_metrics or BioConservation(),
        batch_correction_metrics=batch_correction_metrics or None,
        n_jobs=n_jobs,
        progress_bar=progress_bar,
    )
    with scib_neighbors(neighbors, adata.n_obs) as computer:
        bm.prepare(neighbor_computer=computer)
        bm.benchmark()
    return bm.get_results(min_max_scale=min_max_scale)


def _check_scoring_input(adata: AnnData, keys: Sequence[str], columns: Mapping[str, str]) -> None:
    """Refuse ``obsm`` keys that are missing or hold non-finite values, and ``obs`` columns missing or with NaN."""
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise ValueError(f"embedding keys {missing} are not in adata.obsm (keys: {list(adata.obsm.keys())}).")
    for key in keys:
        if not np.isfinite(np.asarray(adata.obsm[key], dtype=np.float64)).all():
            raise ValueError(f"adata.obsm[{key!r}] holds NaN or infinite values; scib-metrics cannot score it.")
    for what, key in columns.items():
        if key not in adata.obs:
            raise ValueError(f"{what}={key!r} is not a column of adata.obs.")
        n_missing = int(adata.obs[key].isna().sum())
        if n_missing:
            raise ValueError(
                f"adata.obs[{key!r}] ({what}) has {n_missing} missing (NaN) values; score the cells that have one "
                f"(adata[adata.obs[{key!r}].notna()].copy())."
            )


def kmeans_nmi_ari(
    adata: AnnData, embedding_keys: Sequence[str], label_key: str, n_inits: int = 10, seed: int = 0
) -> pd.DataFrame:
    """scib-metrics' ``KMeans NMI`` / ``KMeans ARI`` of each embedding over ``n_inits`` k-means initialisations.

    :func:`benchmark_integration` (scib-metrics) clusters each embedding once, k-means with k = the number of labels
    and one k-means++ initialisation, so its two k-means scores are one draw that changes with the cells' order. Here
    the same clustering (scib-metrics' own ``KMeans``) runs with initialisation seeds ``seed, ..., seed + n_inits - 1``
    on the cells as they are; initialisation ``seed=0`` is :func:`benchmark_integration`'s draw.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``obsm``.
    embedding_keys
        ``obsm`` keys to score.
    label_key
        ``obs`` column of cell-type labels (k = its number of distinct values).
    n_inits
        Number of initialisations (>= 1).
    seed
        The first initialisation seed.

    Returns
    -------
    One row per embedding and initialisation: ``embedding``, ``init_seed``, ``nmi``, ``ari``. Summarise with
    ``df.groupby("embedding")[["nmi", "ari"]].agg(["mean", "std", "min", "max"])``.
    """
    from scib_metrics.utils import KMeans
    from sklearn.metrics.cluster import adjusted_rand_score, normalized_mutual_info_score

    if isinstance(embedding_keys, str):  # one key, not its characters
        embedding_keys = [embedding_keys]
    if isinstance(n_inits, bool) or not isinstance(n_inits, int | np.integer) or n_inits < 1:
        raise ValueError(f"n_inits must be a positive integer, got {n_inits!r}")
    _check_scoring_input(adata, embedding_keys, {"label_key": label_key})
    labels = np.asarray(adata.obs[label_key].astype(str))
    k = len(np.unique(labels))
    rows = []
    for key in embedding_keys:
        x = np.asarray(adata.obsm[key], dtype=np.float32)
        for init in range(int(seed), int(seed) + int(n_inits)):
            km = KMeans(k, seed=init)
            km.fit(x)
            pred = np.asarray(km.labels_)
            nmi = normalized_mutual_info_score(labels, pred, average_method="arithmetic")
            rows.append(
                {
                    "embedding": key,
                    "init_seed": init,
                    "nmi": float(nmi),
                    "ari": float(adjusted_rand_score(labels, pred)),
                }
            )
    return pd.DataFrame(rows)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance between two token sequences (insertion, deletion and substitution of one token cost 1).

    Computed by :func:`rapidfuzz.distance.Levenshtein.distance` (C++) on the sequences as lists, so tokens
    are compared as hashable values (gene symbols, token ids, ...; numpy scalars are converted to Python
    ones first).

    Examples
    --------
    >>> levenshtein("kitten", "sitting")
    3
    >>> levenshtein(["CD3D", "CD3E", "LTB"], ["CD3D", "LTB"])
    1
    """
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(_as_list(a), _as_list(b)))


def _as_list(x: Sequence) -> list:
    return x.tolist() if isinstance(x, np.ndarray) else list(x)


def normalized_levenshtein(a: Sequence, b: Sequence) -> float:
    """Levenshtein distance divided by the longer length: 0 = identical, 1 = no token in place in common.

    Two empty sequences are identical (0.0).
    """
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else levenshtein(a, b) / longest


def _ngram_counts(tokens: Sequence, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidate: Sequence, reference: Sequence, max_n: int = 4, smooth: bool = True) -> float:
    """Sentence BLEU of a token sequence against one reference (Papineni et al., 2002).

    ``BP * exp(mean_n log p_n)`` over n-gram orders ``n = 1..max_n`` (uniform weights), where ``p_n`` is the
    clipped n-gram precision (each candidate n-gram counts at most as often as it occurs in the reference) and
    the brevity penalty is ``BP = 1`` if ``c > r`` else ``exp(1 - r / c)`` for candidate / reference lengths
    ``c`` and ``r``.

    Parameters
    ----------
    candidate, reference
        Token sequences (e.g. gene symbols or token ids in rank order).
    max_n
        Highest n-gram order (4: BLEU-4).
    smooth
        ``False``: plain BLEU, 0 as soon as one order has no match or the candidate is shorter than ``max_n``.
        ``True`` (default, sentence-level use): the "exp" smoothing of Chen & Cherry (2014, method 3; NIST,
        sacrebleu's default), where the k-th order with no match gets ``p_n = 1 / (2**k * n_candidate_ngrams)``,
        and the effective order of sacrebleu: orders longer than the candidate are left out of the mean.

    Returns
    -------
    A float in ``[0, 1]``; 1 for identical non-empty sequences (with ``smooth`` or length ``>= max_n``), 1 for
    two empty sequences, 0 when only one of them is empty.

    Examples
    --------
    >>> bleu([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 0], smooth=False)  # (8/9 7/8 6/7 5/6)^(1/4)
    0.8633400213704505
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    candidate, reference = list(candidate), list(reference)
    c, r = len(candidate), len(reference)
    if c == 0 or r == 0:
        return 1.0 if c == r else 0.0
    log_precisions = []
    k = 0
    for n in range(1, max_n + 1):
        cand = _ngram_counts(candidate, n)
        total = sum(cand.values())
        if total == 0:  # candidate shorter than n
            if not smooth:
                return 0.0
            break  # effective order: only orders the candidate has
        ref = _ngram_counts(reference, n)
        matched = sum(min(count, ref[g]) for g, count in cand.items())
        if matched == 0:
            if not smooth:
                return 0.0
            k += 1
            log_precisions.append(-np.log(2.0**k * total))
        else:
            log_precisions.append(np.log(matched / total))
    brevity = 1.0 if c > r else float(np.exp(1.0 - r / c))
    return float(brevity * np.exp(np.mean(log_precisions)))


def rank_reconstruction_scores(
    candidates: Sequence[Sequence], references: Sequence[Sequence], max_n: int = 4, smooth: bool = True
) -> dict[str, float]:
    """Mean and standard deviation over cells of BLEU and normalised Levenshtein distance.

    Parameters
    ----------
    candidates
        Predicted gene sequence (rank order) of each cell.
    references
        Input gene sequence of each cell.
    max_n, smooth
        As in :func:`bleu`.

    Returns
    -------
    ``{"bleu", "bleu_std", "norm_levenshtein", "norm_levenshtein_std", "n_cells"}``.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    b = np.array([bleu(c, r, max_n=max_n, smooth=smooth) for c, r in zip(candidates, references)])
    d = np.array([normalized_levenshtein(c, r) for c, r in zip(candidates, references)])
    empty = float("nan")
    return {
        "bleu": float(b.mean()) if b.size else empty,
        "bleu_std": float(b.std()) if b.size else empty,
        "norm_levenshtein": float(d.mean()) if d.size else empty,
        "norm_levenshtein_std": float(d.std()) if d.size else empty,
        "n_cells": len(b),
    }


def rank_order_scores(candidate: Sequence, reference: Sequence) -> dict[str, float]:
    """Interpretable scores of one reconstructed gene ranking against the input ranking.

    Parameters
    ----------
    candidate
        Reconstructed sequence (one predicted gene per position, repeats allowed).
    reference
        Input gene ranking (distinct genes, most highly ranked first).

    Returns
    -------
    dict
        - ``recovered_fraction``: fraction of the reference genes that occur anywhere in the candidate
          (order-free; 1 = every gene named);
        - ``position_accuracy``: fraction of positions holding the reference gene;
        - ``spearman``: Spearman rank correlation between the reference rank and the rank of first
          occurrence in the candidate, over the recovered genes (NaN with fewer than 3 of them);
        - ``norm_levenshtein``: :func:`normalized_levenshtein` (0 = identical, 1 = nothing in place);
        - ``n_recovered``.

    Examples
    --------
    >>> r = rank_order_scores([3, 1, 2, 9], [1, 2, 3, 4])
    >>> r["recovered_fraction"], r["position_accuracy"], r["spearman"]
    (0.75, 0.0, -0.5)
    """
    from scipy.stats import spearmanr

    cand, ref = _as_list(candidate), _as_list(reference)
    first: dict = {}
    for i, g in enumerate(cand):
        first.setdefault(g, i)
    ref_pos = [i for i, g in enumerate(ref) if g in first]
    cand_pos = [first[ref[i]] for i in ref_pos]
    n = len(ref_pos)
    rho = float(spearmanr(ref_pos, cand_pos).statistic) if n >= 3 else float("nan")
    m = min(len(cand), len(ref))
    return {
        "recovered_fraction": n / len(ref) if ref else float("nan"),
        "position_accuracy": (sum(c == r for c, r in zip(cand[:m], ref[:m])) / len(ref)) if ref else float("nan"),
        "spearman": rho,
        "norm_levenshtein": normalized_levenshtein(cand, ref),
        "n_recovered": n,
    }


def rank_order_summary(candidates: Sequence[Sequence], references: Sequence[Sequence]) -> dict[str, float]:
    """Means (NaN-aware for ``spearman``) over cells of :func:`rank_order_scores`, with their standard errors.

    Returns
    -------
    ``{score: mean, score + "_se": standard error over cells}`` for each score, and ``n_cells``.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    rows = pd.DataFrame([rank_order_scores(c, r) for c, r in zip(candidates, references)])
    out: dict[str, float] = {"n_cells": len(rows)}
    for col in ("recovered_fraction", "position_accuracy", "spearman", "norm_levenshtein"):
        v = rows[col].dropna().to_numpy() if len(rows) else np.array([])
        out[col] = float(v.mean()) if v.size else float("nan")
        out[f"{col}_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return out


def gene_set_pairs(gene_sets: Mapping[str, Sequence[str]], genes: set[str] | None = None) -> set[tuple[str, str]]:
    """All unordered gene pairs ``(g1, g2)``, ``g1 < g2``, that share a set (genes restricted to ``genes``)."""
    out: set[tuple[str, str]] = set()
    for members in gene_sets.values():
        kept = sorted({str(g) for g in members if genes is None or str(g) in genes})
        out.update(combinations(kept, 2))
    return out


def leak_free_held_out_sets(
    held_out: Mapping[str, Sequence[str]], train_sets: Mapping[str, Sequence[str]], min_size: int = 2
) -> dict[str, list[str]]:
    """Held-out sets reduced to their genes that belong to no training set.

    A pair of such genes never entered the pathway loss, directly or through a shared gene: their
    embeddings were moved only by the masked-gene loss and by the (unlabelled) context. Sets left with fewer
    than ``min_size`` genes are dropped.
    """
    in_train = {str(g) for members in train_sets.values() for g in members}
    out = {k: sorted({str(g) for g in v} - in_train) for k, v in held_out.items()}
    return {k: v for k, v in out.items() if len(v) >= min_size}


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys`` (binary search: no concatenation as in ``np.isin``)."""
    at = np.searchsorted(sorted_keys, keys).clip(max=max(sorted_keys.size - 1, 0))
    return (sorted_keys[at] == keys) if sorted_keys.size else np.zeros(keys.shape, dtype=bool)


def _pair_cosines(x: np.ndarray, keys: np.ndarray, n: int, chunk: int = 2**20) -> np.ndarray:
    """Dot products of the rows ``i, j`` of each pair key ``i * n + j``, a chunk at a time (gigabytes at once)."""
    out = np.empty(keys.size)
    for a in range(0, keys.size, chunk):
        k = keys[a : a + chunk]
        out[a : a + chunk] = np.einsum("ij,ij->i", x[k // n], x[k % n])
    return out


def _checked_set_weights(
    set_weights: Mapping[str, float] | None, gene_sets: Mapping[str, Sequence[str]]
) -> dict[str, float] | None:
    """``set_weights`` as floats, refusing unknown sets, negative or non-finite weights and all-zero weights."""
    if set_weights is None:
        return None
    unknown = [k for k in set_weights if k not in gene_sets]
    if unknown:
        raise ValueError(f"set_weights names sets that are not in gene_sets: {unknown[:5]}")
    weights = {k: float(v) for k, v in set_weights.items()}
    if not all(np.isfinite(v) and v >= 0 for v in weights.values()) or not any(v > 0 for v in weights.values()):
        raise ValueError("set_weights must be finite and >= 0, with at least one set above 0")
    return weights


def _merge_pairs(
    keys: np.ndarray, weight: np.ndarray, count: np.ndarray, batch: list[tuple[np.ndarray, float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted unique pair keys of ``keys`` and ``batch``, each with its summed weight and number of sets."""
    all_keys = np.concatenate([keys, *(k for k, _ in batch)])
    all_weight = np.concatenate([weight, *(np.full(k.size, w) for k, w in batch)])
    all_count = np.concatenate([count, *(np.ones(k.size) for k, _ in batch)])
    unique, inverse = np.unique(all_keys, return_inverse=True)
    return (
        unique,
        np.bincount(inverse, weights=all_weight, minlength=unique.size),
        np.bincount(inverse, weights=all_count, minlength=unique.size),
    )


def pathway_pair_auroc(
    embeddings: pd.DataFrame,
    gene_sets: Mapping[str, Sequence[str]],
    n_negative: int | None = None,
    exclude_pairs: set[tuple[str, str]] | None = None,
    seed: int = 0,
    set_weights: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """How well cosine similarity of gene embeddings separates same-set gene pairs from random pairs (AUROC).

    Positives are all unordered pairs of distinct genes that share a set of ``gene_sets`` (genes missing from
    ``embeddings`` are dropped). Negatives are random unordered pairs of genes from the union of the sets that
    share none of them. AUROC = probability that a random positive pair is more similar than a random negative
    pair (0.5: no signal).

    Parameters
    ----------
    embeddings
        Genes x dimensions, indexed by gene.
    gene_sets
        Set name -> genes (e.g. held-out pathways).
    n_negative
        Number of negative pairs (default: as many as positives, at least 1,000).
    exclude_pairs
        Pairs ``(g1, g2)`` with ``g1 < g2`` to drop from the positives (e.g. pairs that also share a set used in
        training).
    seed
        Seed of the negative sampling. The genes are drawn by their row in ``embeddings``, so the same seed on the
        same genes in another row order draws other negatives (the AUROC moves in its third decimal, about as much
        as between seeds); report the seed, or the spread over several.
    set_weights
        Set name -> weight >= 0 (default: none, every same-set pair counted once). Given, a positive pair counts
        with the mean weight of the sets it is in (a set not named weighs 0), pairs of weight 0 are left out, the
        negatives come from the genes of sets above 0 (still sharing no set at all), and the AUROC is weighted so.
        A set bootstrap passes each set's number of draws: a set drawn twice counts twice, and each pair weighs 1
        on average over the draws (the replicates' negatives come from the drawn sets' genes, so their mean can still
        sit below the unweighted AUROC).

    Returns
    -------
    ``{"auroc", "n_genes", "n_positive", "n_negative", "mean_cos_positive", "mean_cos_negative", "seed"}``.
    """
    from sklearn.metrics import roc_auc_score

    labels = pd.Index(map(str, embeddings.index))
    if labels.has_duplicates:  # a gene's row would be chosen silently (or an index fail with exclude_pairs)
        raise ValueError(f"the embeddings' index names genes more than once: {list(labels[labels.duplicated()][:5])}")
    index = {g: i for i, g in enumerate(labels)}
    n = len(labels)
    # pairs as int64 keys i * n + j (i < j), sorted and unique: the same order as sorted (i, j) tuples, at 8 bytes a
    # pair (a Python set of tuples took ~11 GB for the shipped GO sets over a 16k-gene vocabulary; gene probe)
    weights = _checked_set_weights(set_weights, gene_sets)
    same_set, weight_sum, n_sets = np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    genes = np.zeros(0, dtype=np.int64)
    batch: list[tuple[np.ndarray, float]] = []
    for name, members in gene_sets.items():
        w = weights.get(name, 0.0) if weights is not None else 1.0
        ids = np.unique(np.fromiter((index[g] for g in members if g in index), dtype=np.int64))
        if w > 0:
            genes = np.union1d(genes, ids)
        a, b = np.triu_indices(len(ids), k=1)
        batch.append((ids[a] * n + ids[b], w))
        if sum(k.size for k, _ in batch) > 2**24:  # merged in batches: memory stays ~ the unique pairs
            same_set, weight_sum, n_sets = _merge_pairs(same_set, weight_sum, n_sets, batch)
            batch = []
    if batch:
        same_set, weight_sum, n_sets = _merge_pairs(same_set, weight_sum, n_sets, batch)
    # a pair's weight: the mean weight of the sets it is in (1 without set_weights; in a set bootstrap's replicates
    # every pair weighs 1 on average, as in the unweighted AUROC); pairs of weight 0 are no positives
    pair_weight = weight_sum / np.maximum(n_sets, 1)
    if not same_set.size:
        raise ValueError(
            f"no same-set gene pair has both genes in the embeddings (e.g. {list(labels[:3])}); genes are matched by "
            "exact name: are the sets' ids and the embeddings' index the same kind (symbols, Ensembl ids)?"
        )
    # negatives share no set (of any weight), whether or not a pair is excluded from the positives
    positives, pair_weight = same_set[pair_weight > 0], pair_weight[pair_weight > 0]
    if not positives.size:  # (set weights above 0 only on sets without a pair of the embeddings' genes)
        raise ValueError("no same-set gene pair of the sets weighted above 0 has both genes in the embeddings")
    if exclude_pairs:
        drop = [min(index[a], index[b]) * n + max(index[a], index[b]) for a, b in exclude_pairs
                if a in index and b in index and a <= b]  # fmt: skip
        n_before = positives.size
        kept = ~np.isin(positives, np.asarray(drop, dtype=np.int64))
        positives, pair_weight = positives[kept], pair_weight[kept]
        if not positives.size:
            raise ValueError(f"exclude_pairs removes all {n_before} same-set gene pairs of the embeddings' genes")
    pool = genes
    n_neg = n_negative or max(positives.size, 1000)
    rng = np.random.default_rng(seed)
    in_pool = same_set if weights is None else same_set[np.isin(same_set // n, pool) & np.isin(same_set % n, pool)]
    max_pairs = len(pool) * (len(pool) - 1) // 2 - in_pool.size
    if max_pairs < 1:
        raise ValueError("every pair of the embeddings' genes shares a set: there is no negative pair")
    n_neg = min(n_neg, max_pairs)
    negatives = np.zeros(0, dtype=np.int64)  # in the order drawn; the first n_neg distinct pairs sharing no set
    while negatives.size < n_neg:
        pairs = rng.choice(pool, size=(2 * (n_neg - negatives.size) + 16, 2))
        i, j = pairs.min(axis=1), pairs.max(axis=1)
        keys = (i * n + j)[(i != j)]
        keys = keys[~_sorted_contains(same_set, keys)]
        if negatives.size:
            keys = keys[~_sorted_contains(np.sort(negatives), keys)]
        _, first = np.unique(keys, return_index=True)
        negatives = np.concatenate([negatives, keys[np.sort(first)][: n_neg - negatives.size]])
    x = embeddings.to_numpy(dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cos_pos, cos_neg = _pair_cosines(x, positives, n), _pair_cosines(x, np.sort(negatives), n)
    y = np.r_[np.ones(len(cos_pos)), np.zeros(len(cos_neg))]
    sample_weight = None if weights is None else np.r_[pair_weight, np.ones(len(cos_neg))]
    return {
        "auroc": float(roc_auc_score(y, np.r_[cos_pos, cos_neg], sample_weight=sample_weight)),
        "n_genes": len(pool),
        "n_positive": len(cos_pos),
        "n_negative": len(cos_neg),
        "mean_cos_positive": float(cos_pos.mean()),
        "mean_cos_negative": float(cos_neg.mean()),
        "seed": seed,
    }
