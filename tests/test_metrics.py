"""Rank-reconstruction metrics (BLEU, Levenshtein) and the pathway AUROC against hand-computed values."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from genemamba_scvi.metrics import (
    bleu,
    levenshtein,
    normalized_levenshtein,
    pathway_pair_auroc,
    rank_reconstruction_scores,
)


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


def test_pathway_pair_auroc_exclude_pairs():
    emb = pd.DataFrame(np.eye(4), index=["a", "b", "c", "d"])
    out = pathway_pair_auroc(emb, {"S": ["a", "b", "c"]}, exclude_pairs={("a", "b")}, n_negative=1)
    assert out["n_positive"] == 2  # (a, c), (b, c)
    with pytest.raises(ValueError):
        pathway_pair_auroc(emb, {"S": ["a", "zzz"]})
