"""Rank-reconstruction metrics (BLEU, Levenshtein) and the pathway AUROC against hand-computed values."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from genemamba_scvi.metrics import (
    bleu,
    gene_set_pairs,
    leak_free_held_out_sets,
    levenshtein,
    normalized_levenshtein,
    pathway_pair_auroc,
    rank_order_scores,
    rank_order_summary,
    rank_reconstruction_scores,
)


def _previous_levenshtein(a, b) -> int:
    """The hand-written, row-vectorised implementation that rapidfuzz replaced (kept as the reference)."""
    a, b = list(a), list(b)
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    codes: dict = {}
    a_ids = np.fromiter((codes.setdefault(x, len(codes)) for x in a), dtype=np.int64, count=len(a))
    b_ids = np.fromiter((codes.setdefault(y, len(codes)) for y in b), dtype=np.int64, count=len(b))
    ramp = np.arange(len(b) + 1, dtype=np.int64)
    previous = ramp.copy()
    for i, x in enumerate(a_ids, start=1):
        tmp = np.empty_like(previous)
        tmp[0] = i
        tmp[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (b_ids != x))
        previous = np.minimum.accumulate(tmp - ramp) + ramp
    return int(previous[-1])


# ----------------------------------------------------------------------------- Levenshtein
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("abcdef", "abcXef", 1),  # one substitution
        ("abc", "abXc", 1),  # one insertion
        ("abc", "xyz", 3),  # disjoint, same length
        ("ab", "ba", 2),  # a swap costs two substitutions
    ],
)
def test_levenshtein_hand_cases(a, b, expected):
    assert levenshtein(a, b) == expected
    assert levenshtein(b, a) == expected  # symmetric


def test_levenshtein_on_gene_lists_and_arrays():
    ref = ["CD3D", "CD3E", "LTB", "IL7R"]
    assert levenshtein(ref, ["CD3D", "LTB", "IL7R"]) == 1
    assert levenshtein(np.array([5, 6, 7, 8]), np.array([5, 9, 7, 8])) == 1


def test_levenshtein_matches_textbook_dynamic_programme():
    def textbook(a, b):
        prev = list(range(len(b) + 1))
        for i, x in enumerate(a, start=1):
            cur = [i]
            for j, y in enumerate(b, start=1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 8))]
        b = [rng.randint(0, 3) for _ in range(rng.randint(0, 8))]
        assert levenshtein(a, b) == textbook(a, b)


def test_levenshtein_matches_the_previous_implementation_on_gene_rankings():
    rng = np.random.default_rng(0)
    genes = np.array([f"G{i}" for i in range(40)])
    for _ in range(200):
        a = rng.choice(40, size=rng.integers(0, 60))  # repeats allowed, like argmax reconstructions
        b = rng.permutation(40)[: rng.integers(0, 40)]
        assert levenshtein(a, b) == _previous_levenshtein(a, b)
        assert levenshtein(genes[a].tolist(), genes[b].tolist()) == _previous_levenshtein(genes[a], genes[b])
    long_a, long_b = rng.integers(0, 300, 256), rng.integers(0, 300, 256)
    assert levenshtein(long_a, long_b) == _previous_levenshtein(long_a, long_b)


def test_normalized_levenshtein():
    assert normalized_levenshtein([], []) == 0.0
    assert normalized_levenshtein([1, 2, 3], [1, 2, 3]) == 0.0
    assert normalized_levenshtein([1, 2, 3], [4, 5, 6]) == 1.0
    assert normalized_levenshtein([1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 5, 6]) == pytest.approx(1 / 6)
    assert normalized_levenshtein([], [1, 2]) == 1.0
    assert normalized_levenshtein([1, 2], [1, 2, 3, 4]) == pytest.approx(2 / 4)  # divided by the longer


# ----------------------------------------------------------------------------- BLEU
def test_bleu_identical_is_one():
    seq = list(range(10))
    assert bleu(seq, seq) == pytest.approx(1.0)
    assert bleu(seq, seq, smooth=False) == pytest.approx(1.0)


def test_bleu_empty():
    assert bleu([], []) == 1.0
    assert bleu([], [1, 2]) == 0.0
    assert bleu([1, 2], []) == 0.0


def test_bleu_disjoint():
    cand, ref = [1, 2, 3, 4], [5, 6, 7, 8]
    assert bleu(cand, ref, smooth=False) == 0.0
    # exp smoothing: the k-th zero order gets 1 / (2^k * n_candidate_ngrams): 1/(2*4), 1/(4*3), 1/(8*2), 1/(16*1)
    expected = (1 / 8 * 1 / 12 * 1 / 16 * 1 / 16) ** 0.25
    assert bleu(cand, ref) == pytest.approx(expected)


def test_bleu_one_substitution():
    ref = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    cand = [1, 2, 3, 4, 5, 6, 7, 8, 0]  # last token wrong: p1..p4 = 8/9, 7/8, 6/7, 5/6 -> product 5/9
    assert bleu(cand, ref, smooth=False) == pytest.approx((5 / 9) ** 0.25)
    assert bleu(cand, ref) == pytest.approx((5 / 9) ** 0.25)  # no zero order: smoothing changes nothing


def test_bleu_one_substitution_in_the_middle_smoothed():
    ref = [1, 2, 3, 4, 5, 6]
    cand = [1, 2, 3, 0, 5, 6]  # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 -> smoothed 1/(2*3)
    assert bleu(cand, ref, smooth=False) == 0.0
    assert bleu(cand, ref) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)  # = (1/48)^(1/4)


def test_bleu_brevity_penalty():
    ref = [1, 2, 3, 4, 5, 6, 7, 8]
    cand = [1, 2, 3, 4]  # all precisions 1, c=4 < r=8: BP = exp(1 - 8/4)
    assert bleu(cand, ref) == pytest.approx(math.exp(-1))
    assert bleu(cand, ref, smooth=False) == pytest.approx(math.exp(-1))


def test_bleu_longer_candidate_has_no_brevity_penalty():
    ref = [1, 2, 3, 4]
    cand = [1, 2, 3, 4, 5, 6, 7, 8]  # p = 4/8, 3/7, 2/6, 1/5 -> product 1/70, BP = 1
    assert bleu(cand, ref, smooth=False) == pytest.approx((1 / 70) ** 0.25)


def test_bleu_clipping():
    # unigram "a" occurs once in the reference: 4 candidate copies count once
    assert bleu(["a", "a", "a", "a"], ["a", "b", "c", "d"], max_n=1) == pytest.approx(0.25)


def test_bleu_order_matters():
    ref = [1, 2, 3, 4, 5, 6, 7, 8]
    perm = [2, 1, 3, 4, 5, 6, 7, 8]  # same genes, first two swapped: p1 = 1, p2 = 5/7, p3 = 4/6, p4 = 3/5
    assert bleu(perm, ref, max_n=1) == pytest.approx(1.0)
    assert bleu(perm, ref, max_n=2) == pytest.approx(math.sqrt(5 / 7))
    assert bleu(perm, ref) == pytest.approx((5 / 7 * 4 / 6 * 3 / 5) ** 0.25)  # = (2/7)^(1/4)
    assert normalized_levenshtein(perm, ref) == pytest.approx(2 / 8)


def test_bleu_short_candidate_effective_order():
    # candidate of 2 tokens has no 3- or 4-grams: smoothed BLEU uses orders 1..2, plain BLEU-4 is 0
    assert bleu([1, 2], [1, 2]) == pytest.approx(1.0)
    assert bleu([1, 2], [1, 2], smooth=False) == 0.0
    assert bleu([1, 2], [1, 2], max_n=2, smooth=False) == pytest.approx(1.0)
    assert bleu([1, 3], [1, 2]) == pytest.approx(math.sqrt(1 / 2 * 1 / (2 * 1)))


def test_bleu_matches_nltk_exp_smoothing():
    """Chen & Cherry's method 3 in nltk equals our smoothing when the candidate has all four orders.

    (nltk returns 0 outright when no unigram matches; we smooth that order too, so such cases are skipped.)
    """
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    smooth = bleu_score.SmoothingFunction().method3
    rng = np.random.default_rng(1)
    for _ in range(100):
        ref = rng.permutation(30)[: rng.integers(4, 30)].tolist()
        cand = rng.integers(0, 30, rng.integers(4, 35)).tolist()
        if rng.random() < 0.5:  # some near-copies so that long n-grams match too
            cand = [g if rng.random() < 0.8 else int(rng.integers(0, 30)) for g in ref]
        if not set(cand) & set(ref):
            continue
        expected = bleu_score.sentence_bleu([ref], cand, smoothing_function=smooth)
        assert bleu(cand, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_bleu_rejects_bad_order():
    with pytest.raises(ValueError):
        bleu([1], [1], max_n=0)


def test_rank_reconstruction_scores():
    refs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3]]
    cands = [[1, 2, 3, 4, 5, 6, 7, 8, 0], [1, 2, 3]]
    out = rank_reconstruction_scores(cands, refs)
    assert out["n_cells"] == 2
    assert out["bleu"] == pytest.approx(((5 / 9) ** 0.25 + 1.0) / 2)
    assert out["norm_levenshtein"] == pytest.approx((1 / 9 + 0.0) / 2)
    with pytest.raises(ValueError):
        rank_reconstruction_scores(cands, refs[:1])


# ----------------------------------------------------------------------------- pathway AUROC
def test_pathway_pair_auroc_perfect_and_inverted():
    # set A = {a1, a2}, set B = {b1, b2}: members of a set share a direction, sets are orthogonal
    emb = pd.DataFrame(
        [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], index=["a1", "a2", "b1", "b2"], columns=["x", "y"]
    )
    sets = {"A": ["a1", "a2", "missing"], "B": ["b1", "b2"]}
    out = pathway_pair_auroc(emb, sets, n_negative=4)
    assert out["auroc"] == pytest.approx(1.0)
    assert out["n_positive"] == 2 and out["n_negative"] == 4 and out["n_genes"] == 4
    # crossed sets: positives (a1, b1) cos 0 and (a2, b2) cos 0.22; negatives cos 0.99, 0.11, 0.11, 0.99
    crossed = pathway_pair_auroc(emb, {"A": ["a1", "b1"], "B": ["a2", "b2"]}, n_negative=4)
    assert crossed["auroc"] == pytest.approx(2 / 8)  # only 0.22 > 0.11 (twice) of 2 x 4 comparisons
    # set weights (a set bootstrap's draw counts): B's pair counts 3 times, A's once -> (3 x 2 + 1 x 0) / (4 x 4)
    crossed_sets = {"A": ["a1", "b1"], "B": ["a2", "b2"]}
    weighted = pathway_pair_auroc(emb, crossed_sets, n_negative=4, set_weights={"A": 1, "B": 3})
    assert weighted["auroc"] == pytest.approx(6 / 16)
    ones = pathway_pair_auroc(emb, crossed_sets, n_negative=4, set_weights={"A": 1.0, "B": 1.0})
    assert ones == crossed
    # a pair in two sets weighs their mean weight: {S: 2, T: 0, U: 1} -> (a, b) 1, (a, c) and (b, c) 2, (d, e) 1,
    # T's own pairs (a, d), (b, d) 0; negatives: the 4 pairs sharing no set, all at cosine 0
    emb5 = pd.DataFrame(np.eye(5), index=["a", "b", "c", "d", "e"])
    emb5.loc["b"] = emb5.loc["a"]  # (a, b) cosine 1, every other pair 0
    overlapping = {"S": ["a", "b", "c"], "T": ["a", "b", "d"], "U": ["d", "e"]}
    w = pathway_pair_auroc(emb5, overlapping, set_weights={"S": 2, "T": 0, "U": 1})
    assert (w["n_positive"], w["n_negative"]) == (4, 4)
    assert w["auroc"] == pytest.approx((1 * 1 + 5 * 0.5) / 6)  # (a, b) above every negative, the rest tie
    with pytest.raises(ValueError, match="no same-set gene pair of the sets weighted above 0"):  # (NaN before)
        pathway_pair_auroc(emb5, {**overlapping, "one": ["e"]}, set_weights={"one": 1})
    for bad, match in (({"C": 1}, "not in gene_sets"), ({"A": -1}, ">= 0"), ({"A": 0}, "at least one")):
        with pytest.raises(ValueError, match=match):
            pathway_pair_auroc(emb, crossed_sets, set_weights=bad)


def test_pathway_pair_auroc_exclude_pairs():
    # a and b point the same way (cosine 1), every other pair is orthogonal; (a, b) shares set S but is excluded
    emb = pd.DataFrame(np.eye(5), index=["a", "b", "c", "d", "e"])
    emb.loc["b"] = emb.loc["a"]
    sets = {"S": ["a", "b", "c"], "T": ["d", "e"]}
    out = pathway_pair_auroc(emb, sets, exclude_pairs={("a", "b")}, n_negative=100)
    assert out["n_positive"] == 3  # (a, c), (b, c), (d, e)
    # the negatives are the 6 pairs sharing no set: the excluded same-set pair was drawn as a negative before
    assert out["n_negative"] == 6 and out["mean_cos_negative"] == 0.0
    assert out["seed"] == 0  # reported with the result (repro probe, session 31)
    with pytest.raises(ValueError, match="no negative pair"):
        pathway_pair_auroc(emb, {"S": ["a", "b", "c"]}, exclude_pairs={("a", "b")})
    with pytest.raises(ValueError, match="matched by exact name: are the sets' ids and the embeddings' index"):
        pathway_pair_auroc(emb, {"S": ["a", "zzz"]})
    dup = pd.concat([emb, emb.loc[["a"]]])  # a gene twice: refused by name (an IndexError with exclude_pairs before)
    with pytest.raises(ValueError, match=r"names genes more than once: \['a'\]"):
        pathway_pair_auroc(dup, sets, exclude_pairs={("a", "b")})


# ----------------------------------------------------------------------------- interpretable rank scores
def test_rank_order_scores_hand_cases():
    ref = [1, 2, 3, 4]
    same = rank_order_scores(ref, ref)
    assert same["recovered_fraction"] == 1.0 and same["position_accuracy"] == 1.0
    assert same["spearman"] == pytest.approx(1.0) and same["norm_levenshtein"] == 0.0
    rev = rank_order_scores([4, 3, 2, 1], ref)
    assert rev["recovered_fraction"] == 1.0 and rev["position_accuracy"] == 0.0
    assert rev["spearman"] == pytest.approx(-1.0)
    # genes 1, 2, 3 recovered at candidate positions 1, 2, 0 (first occurrence; the repeat of 3 is ignored)
    out = rank_order_scores([3, 1, 2, 3], ref)
    assert out["recovered_fraction"] == 0.75 and out["n_recovered"] == 3
    assert out["spearman"] == pytest.approx(-0.5)
    none = rank_order_scores([7, 8, 9, 9], ref)
    assert none["recovered_fraction"] == 0.0 and math.isnan(none["spearman"])


def test_rank_order_summary_means_and_nan_spearman():
    out = rank_order_summary([[1, 2, 3], [9, 9, 9]], [[1, 2, 3], [1, 2, 3]])
    assert out["n_cells"] == 2
    assert out["recovered_fraction"] == pytest.approx(0.5)
    assert out["spearman"] == pytest.approx(1.0)  # the second cell has no Spearman (nothing recovered)
    assert out["position_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rank_order_summary([[1]], [])


def test_leak_free_held_out_sets_keep_only_genes_in_no_training_set():
    train = {"T1": ["a", "b"], "T2": ["c"]}
    held = {"H1": ["a", "x", "y"], "H2": ["b", "c", "z"], "H3": ["w", "v", "u"]}
    free = leak_free_held_out_sets(held, train)
    assert free == {"H1": ["x", "y"], "H3": ["u", "v", "w"]}  # H2 keeps only z: dropped
    pairs = gene_set_pairs(free)
    assert pairs == {("x", "y"), ("u", "v"), ("u", "w"), ("v", "w")}
    assert not any(g in {"a", "b", "c"} for p in pairs for g in p)
    assert gene_set_pairs(held, genes={"a", "x", "b"}) == {("a", "x")}


# ---------------------------------------------------------------------------------------------- scib wrapper
@pytest.fixture(scope="module")
def scored_cells():
    import scanpy as sc

    from genemamba_scvi.datasets import load_pbmc68k_counts

    adata = load_pbmc68k_counts()[:120].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    logged = sc.pp.log1p(sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"])
    adata.obsm["X_pca"] = sc.pp.pca(logged, n_comps=20)  # the user's own PCA
    adata.obsm["X_genemamba"] = np.random.default_rng(0).normal(size=(adata.n_obs, 16)).astype(np.float32)
    return adata


def _light_metrics():
    from scib_metrics.benchmark import BatchCorrection, BioConservation

    bio = BioConservation(isolated_labels=False, nmi_ari_cluster_labels_leiden=False, clisi_knn=False)
    batch = BatchCorrection(bras=False, ilisi_knn=False, kbet_per_label=False, graph_connectivity=False)
    return {"bio_conservation_metrics": bio, "batch_correction_metrics": batch, "progress_bar": False}


def test_benchmark_integration_scores_the_users_pca_and_leaves_the_anndata_alone(scored_cells):
    from genemamba_scvi.metrics import benchmark_integration

    adata = scored_cells
    pca, keys = adata.obsm["X_pca"].copy(), (set(adata.obsm), set(adata.uns), set(adata.varm), set(adata.obs))
    table = benchmark_integration(adata, ["X_genemamba", "X_pca"], "batch", "bulk_labels", **_light_metrics())
    assert {"X_genemamba", "X_pca"} <= set(table.index)
    np.testing.assert_array_equal(adata.obsm["X_pca"], pca)  # scib-metrics' own PCA did not replace it
    assert (set(adata.obsm), set(adata.uns), set(adata.varm), set(adata.obs)) == keys
    # the user's PCA is scored, not scib's: compared with its own unintegrated PCA its PCR score is not ~0
    assert float(table.loc["X_pca", "PCR comparison"]) != pytest.approx(0.0, abs=1e-6)


def test_benchmark_integration_gives_scib_copies_of_the_embeddings(scored_cells, monkeypatch):
    # user probe: scib-metrics' KMeans centres its input in place (X -= mean; X += mean), which left rounding
    # changes in the user's obsm arrays; the Benchmarker must get copies
    import scib_metrics.benchmark

    from genemamba_scvi.metrics import benchmark_integration

    adata = scored_cells
    before = {k: adata.obsm[k].copy() for k in ("X_genemamba", "X_pca")}
    real = scib_metrics.benchmark.Benchmarker

    class Centring(real):
        def __init__(self, work, *args, **kwargs):
            for k in before:
                work.obsm[k] += np.float32(0.1)  # what an in-place metric does to the arrays it is given
            super().__init__(work, *args, **kwargs)

    monkeypatch.setattr(scib_metrics.benchmark, "Benchmarker", Centring)
    benchmark_integration(adata, list(before), "batch", "bulk_labels", **_light_metrics())
    for k, v in before.items():
        np.testing.assert_array_equal(adata.obsm[k], v)


def test_benchmark_integration_names_missing_labels_and_bad_embeddings(scored_cells):
    from genemamba_scvi.metrics import benchmark_integration

    adata = scored_cells.copy()
    adata.obs["with_nan"] = adata.obs["bulk_labels"].astype(object)
    adata.obs.iloc[:10, adata.obs.columns.get_loc("with_nan")] = np.nan
    with pytest.raises(ValueError, match=r"adata\.obs\['with_nan'\] \(label_key\) has 10 missing"):
        benchmark_integration(adata, ["X_genemamba"], "batch", "with_nan", **_light_metrics())
    adata.obsm["X_bad"] = adata.obsm["X_genemamba"].copy()
    adata.obsm["X_bad"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata\.obsm\['X_bad'\] holds NaN"):
        benchmark_integration(adata, ["X_bad"], "batch", "bulk_labels", **_light_metrics())


def test_benchmark_integration_skips_batch_metrics_when_no_cell_type_spans_two_batches(scored_cells):
    # scib-metrics' silhouette_batch then failed with pandas' "No objects to concatenate" (user probe: Leiden
    # clusters of two studies, each cluster in one batch)
    from genemamba_scvi.metrics import benchmark_integration

    adata = scored_cells.copy()
    codes = adata.obs["bulk_labels"].cat.codes.to_numpy()
    adata.obs["batch"] = np.where(codes < 5, "b1", "b2")
    metrics = {**_light_metrics(), "batch_correction_metrics": None}  # the default: every batch metric
    with pytest.warns(UserWarning, match=r"no cell type of adata.obs\['bulk_labels'\] occurs in two or more batches"):
        table = benchmark_integration(adata, ["X_genemamba"], "batch", "bulk_labels", **metrics)
    assert "X_genemamba" in table.index and "Batch correction" not in table.columns


def test_benchmark_integration_finds_exact_neighbours_on_small_data_and_never_runs_pynndescent(
    scored_cells, monkeypatch
):
    # session 34: scib-metrics' pynndescent compiled for over a minute on a process's first scoring (again, for
    # float64, in kBET's per-label diffusion neighbours): 700 cells took 2 minutes on 2 cores. Up to 20,000 cells
    # both searches are exact, nothing is compiled, and scib-metrics' own function is back afterwards
    import dataclasses

    import pynndescent
    import scib_metrics.nearest_neighbors as scib_nn

    from genemamba_scvi._knn import exact_neighbors
    from genemamba_scvi.metrics import benchmark_integration

    def refuse(*args, **kwargs):
        raise AssertionError("pynndescent ran")

    original = scib_nn.pynndescent
    monkeypatch.setattr(pynndescent.NNDescent, "__init__", refuse)
    metrics = _light_metrics()
    metrics["batch_correction_metrics"] = dataclasses.replace(metrics["batch_correction_metrics"], kbet_per_label=True)
    table = benchmark_integration(scored_cells, ["X_pca"], "batch", "bulk_labels", **metrics)
    assert np.isfinite(table.drop(index="Metric Type")[["KBET", "Silhouette label"]].astype(float)).all(axis=None)
    assert scib_nn.pynndescent is original
    X = scored_cells.obsm["X_pca"].astype(np.float64)
    found = exact_neighbors(X, 15)  # each cell itself first, then the true nearest cells
    brute = np.sort(np.linalg.norm(X[:, None] - X[None], axis=-1), axis=1)[:, :15]
    np.testing.assert_allclose(found.distances, brute, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(found.indices[:, 0], np.arange(len(X)))
    with pytest.raises(ValueError, match="neighbors must be 'auto', 'exact' or 'pynndescent', got 'umap'"):
        benchmark_integration(scored_cells, ["X_pca"], "batch", "bulk_labels", neighbors="umap")


def test_kbet_of_the_same_input_is_the_same_at_every_call():
    # session 34: scib-metrics' kBET diffusion map let ARPACK draw its start vector from a state that moves with each
    # call, so the same embedding scored 0.862 or 0.852 by how many kBETs the process had run (the third of four)
    import scanpy as sc
    from scib_metrics import kbet_per_label

    from genemamba_scvi._knn import exact_neighbors, scib_neighbors
    from genemamba_scvi.datasets import load_pbmc68k_counts

    adata = load_pbmc68k_counts()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    batch = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    neighbours = exact_neighbors(adata.obsm["X_pca"], 50)
    with scib_neighbors("exact", adata.n_obs):
        scores = [kbet_per_label(neighbours, batch, adata.obs["bulk_labels"].astype(str).to_numpy()) for _ in range(4)]
    assert len(set(scores)) == 1, scores


def test_kmeans_nmi_ari_spreads_over_initialisations_and_its_first_is_scibs_draw():
    # session 31: scib-metrics' KMeans NMI / ARI are one k-means initialisation (repro probe: PCA's ARI moved 0.47-0.62
    # with the cells' order); kmeans_nmi_ari gives the spread, initialisation 0 being scib's own value
    import scanpy as sc
    from scib_metrics import nmi_ari_cluster_labels_kmeans

    from genemamba_scvi import datasets
    from genemamba_scvi.metrics import kmeans_nmi_ari

    adata = datasets.load_pbmc68k_counts()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    adata.obsm["noise"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5))
    df = kmeans_nmi_ari(adata, ["X_pca", "noise"], "bulk_labels", n_inits=4)
    assert list(df.columns) == ["embedding", "init_seed", "nmi", "ari"] and len(df) == 8
    pca = df[df.embedding == "X_pca"]
    scib = nmi_ari_cluster_labels_kmeans(adata.obsm["X_pca"], adata.obs["bulk_labels"].astype(str).to_numpy())
    assert pca.iloc[0][["nmi", "ari"]].tolist() == pytest.approx([scib["nmi"], scib["ari"]], abs=1e-6)
    assert pca["ari"].nunique() > 1  # other initialisations, other clusterings
    assert kmeans_nmi_ari(adata, "X_pca", "bulk_labels", n_inits=1)["nmi"].tolist() == [pca.iloc[0]["nmi"]]
    assert (pca["nmi"] > df[df.embedding == "noise"]["nmi"].max() + 0.3).all()
    for bad, match in ((0, "n_inits"), (True, "n_inits")):
        with pytest.raises(ValueError, match=match):
            kmeans_nmi_ari(adata, ["X_pca"], "bulk_labels", n_inits=bad)
    with pytest.raises(ValueError, match=r"not in adata\.obsm"):
        kmeans_nmi_ari(adata, ["X_genemamba"], "bulk_labels")
    with pytest.raises(ValueError, match="not a column"):
        kmeans_nmi_ari(adata, ["X_pca"], "cell_type")
