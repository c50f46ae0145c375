"""rank_tokenize against a slow per-cell reference on the real 559-cell sample."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from genemamba_scvi.data import compute_gene_medians, rank_tokenize

CLS = 1


def _reference_order(X: sp.csr_matrix, tok: np.ndarray, med: np.ndarray) -> list[list[int]]:
    """Obviously-correct per-cell ranking: (value, token) pairs sorted by (-value, token), all genes kept."""
    usable = np.isfinite(med) & (med > 0)
    fallback = np.median(med[usable & (tok >= 0)])
    med = np.where(usable, med, fallback)
    orders = []
    for i in range(X.shape[0]):
        s, e = X.indptr[i], X.indptr[i + 1]
        total = float(np.sum(X.data[s:e], dtype=np.float64))
        pairs = []
        for j, c in zip(X.indices[s:e].tolist(), X.data[s:e].tolist()):
            if tok[j] >= 0 and c > 0:
                pairs.append((np.float32(float(c) / total / med[j]), int(tok[j])))
        pairs.sort(key=lambda p: (-p[0], p[1]))
        orders.append([t for _, t in pairs])
    return orders


def _reference_tokens(orders: list[list[int]], max_genes: int, add_cls: bool) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(orders), max_genes), dtype=np.int32)
    lengths = np.zeros(len(orders), dtype=np.int32)
    for i, order in enumerate(orders):
        row = ([CLS] if add_cls and order else []) + order
        row = row[:max_genes]
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths


@pytest.fixture(scope="module")
def setup(_sample_adata_session):
    X = _sample_adata_session.X.tocsr()
    n_genes = X.shape[1]
    rng = np.random.default_rng(0)
    tok = (3 + rng.permutation(n_genes)).astype(np.int64)  # token order unrelated to column order
    tok[rng.random(n_genes) < 0.1] = -1  # genes outside the vocabulary
    med = compute_gene_medians(X)
    expressed = np.flatnonzero(np.isfinite(med))
    med[rng.choice(expressed, 200, replace=False)] = np.nan  # expressed genes "never seen in the corpus"
    orders = _reference_order(X, tok, med)
    return X, tok, med, orders


@pytest.mark.parametrize("max_genes", [16, 2048, 4096])
@pytest.mark.parametrize("add_cls", [False, True])
def test_matches_reference(setup, max_genes, add_cls):
    X, tok, med, orders = setup
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=max_genes, add_cls=add_cls)
    ref_tokens, ref_lengths = _reference_tokens(orders, max_genes, add_cls)
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32
    assert tokens.shape == (X.shape[0], max_genes)
    np.testing.assert_array_equal(lengths, ref_lengths)
    np.testing.assert_array_equal(tokens, ref_tokens)


def test_reference_cells_are_long_enough(setup):
    # the k values above only test truncation if some cells have more genes than k and some fewer
    _, _, _, orders = setup
    n = np.array([len(o) for o in orders])
    assert (n > 2048).any() and (n < 2048).any() and (n > 16).all()


def test_no_zero_count_gene_emitted(setup):
    X, tok, med, _ = setup
    X = X.copy()
    # store explicit zeros for the first entry of every cell: those genes must disappear from the output
    first = X.indptr[:-1][np.diff(X.indptr) > 0]
    X.data[first] = 0
    before = [a.copy() for a in (X.data, X.indices, X.indptr)]
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=int(np.diff(X.indptr).max()))  # no truncation
    for a, b in zip(before, (X.data, X.indices, X.indptr)):
        np.testing.assert_array_equal(a, b)  # the input is not modified
    for i in range(X.shape[0]):
        s, e = X.indptr[i], X.indptr[i + 1]
        expressed = set(tok[X.indices[s:e][X.data[s:e] > 0]].tolist()) - {-1}
        emitted = tokens[i, : lengths[i]].tolist()
        assert set(emitted) == expressed
        assert len(emitted) == len(expressed)
        assert (tokens[i, lengths[i] :] == 0).all()


def test_column_permutation_invariant(setup):
    X, tok, med, _ = setup
    perm = np.random.default_rng(1).permutation(X.shape[1])
    a = rank_tokenize(X, tok, med, max_genes=2048)
    b = rank_tokenize(X[:, perm], tok[perm], med[perm], max_genes=2048)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("fmt", ["csc", "coo", "dense", "csr_array"])
def test_input_formats(setup, fmt):
    X, tok, med, _ = setup
    sub = X[:40]
    expected = rank_tokenize(sub, tok, med, max_genes=512)
    other = {
        "csc": lambda m: m.tocsc(),
        "coo": lambda m: m.tocoo(),
        "dense": lambda m: m.toarray(),
        "csr_array": sp.csr_array,
    }[fmt](sub)
    got = rank_tokenize(other, tok, med, max_genes=512)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(("chunk_size", "n_jobs"), [(7, 1), (7, 2), (100, 2), (None, 1)])
def test_chunking_and_threads(setup, chunk_size, n_jobs):
    X, tok, med, orders = setup
    ref_tokens, ref_lengths = _reference_tokens(orders, 2048, True)
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=2048, add_cls=True, chunk_size=chunk_size, n_jobs=n_jobs)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(lengths, ref_lengths)


def test_large_token_ids_use_lexsort_path(setup):
    X, tok, med, orders = setup
    shift = 200_000  # ids >= 2**17 do not fit in the packed sort key
    big = np.where(tok >= 0, tok + shift, -1)
    tokens, lengths = rank_tokenize(X, big, med, max_genes=2048)
    ref_tokens, ref_lengths = _reference_tokens(orders, 2048, False)
    np.testing.assert_array_equal(lengths, ref_lengths)
    np.testing.assert_array_equal(np.where(tokens > 0, tokens - shift, 0), ref_tokens)


def test_hand_computed_example_and_ties():
    # values count/total/median: cell 0 -> 5/9/1, 1/9/0.5, 3/9/3; cell 1 -> 2/8/1 = 0.25 (token 10),
    # 2/8/0.5 = 0.5 (token 11), 4/8/2 = 0.25 (token 9): the tie goes to the smaller token id, 9 before 10
    X = sp.csr_matrix(np.array([[5, 1, 3, 0], [2, 2, 0, 4]], dtype=np.float32))
    med = np.array([1.0, 0.5, 3.0, 2.0])
    tok = np.array([10, 11, 12, 9])
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=4)
    np.testing.assert_array_equal(tokens, [[10, 11, 12, 0], [11, 9, 10, 0]])
    np.testing.assert_array_equal(lengths, [3, 3])
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=3, add_cls=True)
    np.testing.assert_array_equal(tokens, [[CLS, 10, 11], [CLS, 11, 9]])
    np.testing.assert_array_equal(lengths, [3, 3])


def test_fallback_median_for_unseen_genes():
    # gene 1 has no median: it is ranked with the median of the finite medians (2.0), between the others
    X = sp.csr_matrix(np.array([[3, 3, 3]], dtype=np.float32))
    tok = np.array([5, 6, 7])
    tokens, _ = rank_tokenize(X, tok, np.array([1.0, np.nan, 3.0]), max_genes=3)
    np.testing.assert_array_equal(tokens, [[5, 6, 7]])
    tokens, _ = rank_tokenize(X, tok, np.array([1.0, 0.0, 1.5]), max_genes=3)  # fallback 1.25
    np.testing.assert_array_equal(tokens, [[5, 6, 7]])
    tokens, _ = rank_tokenize(X, tok, np.array([4.0, np.inf, 3.0]), max_genes=3)  # fallback 3.5
    np.testing.assert_array_equal(tokens, [[7, 6, 5]])


def test_zero_count_cells_give_empty_rows():
    X = sp.csr_matrix(np.array([[0, 0, 0], [1, 0, 2], [0, 0, 0]], dtype=np.float32))
    tokens, lengths = rank_tokenize(X, np.array([3, 4, 5]), np.ones(3), max_genes=4, add_cls=True)
    np.testing.assert_array_equal(lengths, [0, 3, 0])
    np.testing.assert_array_equal(tokens, [[0, 0, 0, 0], [CLS, 5, 3, 0], [0, 0, 0, 0]])


def test_genes_without_token_still_count_in_total():
    # the total includes tokenless genes; the ranking within the cell does not change, only via rounding
    X = sp.csr_matrix(np.array([[1, 4, 2]], dtype=np.float32))
    tokens, lengths = rank_tokenize(X, np.array([3, -1, 4]), np.ones(3), max_genes=3)
    np.testing.assert_array_equal(tokens, [[4, 3, 0]])
    np.testing.assert_array_equal(lengths, [2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gene_token_ids": np.array([3, 4])}, "gene_token_ids has shape"),
        ({"gene_medians": np.ones(2)}, "gene_medians has shape"),
        ({"gene_token_ids": np.array([3.0, 4.0, 5.0])}, "must be integers"),
        ({"gene_token_ids": np.array([3, -2, 5])}, ">= -1"),
        ({"gene_token_ids": np.array([3, 1, 5])}, "special-token ids"),
        ({"max_genes": 0}, "max_genes must be >= 1"),
        ({"max_genes": 1, "add_cls": True}, "max_genes must be >= 2"),
        ({"chunk_size": 0}, "chunk_size must be positive"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {
        "X": sp.csr_matrix(np.array([[1, 2, 3]], dtype=np.float32)),
        "gene_token_ids": np.array([3, 4, 5]),
        "gene_medians": np.ones(3),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rank_tokenize(**args)


@pytest.mark.parametrize(("value", "match"), [(-1.0, "negative"), (np.nan, "NaN")])
def test_bad_counts(value, match):
    X = sp.csr_matrix(np.array([[1, 2, 3]], dtype=np.float32))
    X.data[1] = value
    with pytest.raises(ValueError, match=match):
        rank_tokenize(X, np.array([3, 4, 5]), np.ones(3))


def test_rejects_non_matrix():
    with pytest.raises(TypeError, match="scipy sparse"):
        rank_tokenize([[1, 2]], np.array([3, 4]), np.ones(2))


def test_duplicated_entries_are_summed():
    # the same (cell, gene) stored twice: counts 1 + 2 for token 4, so it ranks above token 3 (count 2)
    X = sp.csr_matrix((np.array([2, 1, 2], dtype=np.float32), np.array([0, 1, 1]), np.array([0, 3])), shape=(1, 2))
    assert not X.has_canonical_format
    tokens, lengths = rank_tokenize(X, np.array([3, 4]), np.ones(2), max_genes=3)
    np.testing.assert_array_equal(tokens, [[4, 3, 0]])
    np.testing.assert_array_equal(lengths, [2])
    assert X.nnz == 3  # input untouched


def test_speed_benchmark_runs_small(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tokenize_speed.py"
    if not script.is_file():
        pytest.skip("benchmarks/ not available")
    spec = importlib.util.spec_from_file_location("tokenize_speed", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "speed.json"
    result = module.main(["--out", str(out), "--n-cells", "300", "--n-genes", "12000", "--n-baseline", "40"])
    assert json.loads(out.read_text()) == result
    assert result["data"]["n_cells"] == 300 and result["data"]["n_genes"] == 12000
    assert result["baseline"]["matches_python_reference"] and result["baseline"]["matches_numpy_per_cell_loop"]


# ----------------------------------------------------------------------------- tie_break="random"
def _reference_random_ties(X: sp.csr_matrix, tok: np.ndarray, med: np.ndarray) -> list[list[int]]:
    """Per cell: the "median" ranking, then each equal-count group's genes re-dealt to that group's slots.

    The genes of a group go to its slots (in rank order) sorted by ``tie_break_keys`` of the cell.
    """
    from genemamba_scvi.data.tokenize import tie_break_keys

    out = []
    for i, order in enumerate(_reference_order(X, tok, med)):
        s, e = X.indptr[i], X.indptr[i + 1]
        count = {int(tok[j]): float(c) for j, c in zip(X.indices[s:e], X.data[s:e]) if tok[j] >= 0 and c > 0}
        t = np.array(order, dtype=np.int64)
        c = np.array([count[g] for g in order], dtype=np.float32)
        key = tie_break_keys(t, c, np.zeros(t.size, dtype=np.int64))
        row = list(order)
        for value in np.unique(c):
            slots = np.flatnonzero(c == value)
            genes = t[slots][np.argsort(key[slots], kind="stable")]
            for slot, g in zip(slots, genes):
                row[slot] = int(g)
        out.append(row)
    return out


@pytest.mark.parametrize("max_genes", [64, 4096])
def test_random_tie_break_matches_reference(setup, max_genes):
    X, tok, med, _ = setup
    X = X[:120]
    ref_tokens, ref_lengths = _reference_tokens(_reference_random_ties(X, tok, med), max_genes, False)
    tokens, lengths = rank_tokenize(X, tok, med, max_genes=max_genes, tie_break="random", n_jobs=1)
    np.testing.assert_array_equal(lengths, ref_lengths)
    np.testing.assert_array_equal(tokens, ref_tokens)


def test_random_tie_break_reorders_only_equal_counts_and_depends_on_the_cell_only(setup):
    X, tok, med, _ = setup
    X = X[:200]
    base, lengths = rank_tokenize(X, tok, med, max_genes=4096)
    rand, lengths_r = rank_tokenize(X, tok, med, max_genes=4096, tie_break="random")
    np.testing.assert_array_equal(lengths, lengths_r)
    col = np.full(int(tok.max()) + 1, -1)
    col[tok[tok >= 0]] = np.flatnonzero(tok >= 0)
    dense = X.toarray()
    changed = 0
    for i in range(X.shape[0]):
        n = lengths[i]
        counts_base = dense[i, col[base[i, :n]]]
        counts_rand = dense[i, col[rand[i, :n]]]
        np.testing.assert_array_equal(counts_base, counts_rand)  # every slot keeps its count
        assert sorted(base[i, :n]) == sorted(rand[i, :n])  # same genes
        changed += int((base[i, :n] != rand[i, :n]).sum())
    assert changed > 0.2 * lengths.sum()  # count-1 genes are about half of a cell's genes
    perm = np.random.default_rng(3).permutation(X.shape[0])  # other rows around it: same tokens
    np.testing.assert_array_equal(rank_tokenize(X[perm], tok, med, 4096, tie_break="random")[0], rand[perm])
    cols = np.random.default_rng(4).permutation(X.shape[1])  # column order: same tokens
    np.testing.assert_array_equal(rank_tokenize(X[:, cols], tok[cols], med[cols], 4096, tie_break="random")[0], rand)


def test_unknown_tie_break_is_refused(setup):
    X, tok, med, _ = setup
    with pytest.raises(ValueError, match="tie_break"):
        rank_tokenize(X[:2], tok, med, tie_break="alphabetical")


def test_default_threads_follow_the_process_allocation(monkeypatch):
    # pipeline probe: a Snakemake job of `threads: 1` (OMP_NUM_THREADS=1, one CPU of affinity) started 8 threads
    from genemamba_scvi.data.tokenize import _default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _default_workers() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _default_workers() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert _default_workers() == 8
