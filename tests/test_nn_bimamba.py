"""Bi-Mamba block: per-sequence reversal, merge gradient, pad invariance."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from genemamba_scvi.nn import (
    BiMambaBlock,
    GeneMambaEncoder,
    merge_directions,
    reversal_index,
    reversal_index_packed,
    reverse_sequences,
)


def test_reversal_index_matches_hand_built_reversal_on_ragged_batch():
    L = 7
    lengths = torch.tensor([7, 4, 0, 1, 6])
    x = torch.arange(5 * L * 2, dtype=torch.float32).view(5, L, 2)
    idx = reversal_index(lengths, L)
    got = reverse_sequences(x, idx)
    expected = x.clone()
    for b, n in enumerate(lengths.tolist()):
        for t in range(n):
            expected[b, t] = x[b, n - 1 - t]  # real tokens reversed, pads untouched at the end
    assert torch.equal(got, expected)
    assert idx[1].tolist() == [3, 2, 1, 0, 4, 5, 6]
    assert torch.equal(reverse_sequences(got, idx), x)  # an involution: the same index maps back


def test_packed_reversal_index_matches_hand_built():
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]])
    idx = reversal_index_packed(seq_idx)
    assert idx[0].tolist() == [2, 1, 0, 4, 3, 5, 9, 8, 7, 6]
    assert idx[1].tolist() == list(range(9, -1, -1))


@pytest.mark.parametrize("mode", ["gate", "concat"])
def test_merge_gradcheck_float64(mode):
    torch.manual_seed(0)
    d = 4
    f = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, 2 * d, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: merge_directions(*a[:2], mode, *a[2:]), (f, b, w, bias))


def test_gate_formula_and_simple_modes():
    torch.manual_seed(0)
    f, b = torch.randn(3, 4), torch.randn(3, 4)
    w, bias = torch.randn(4, 8), torch.randn(4)
    z = torch.sigmoid(torch.cat([f, b], -1) @ w.T + bias)
    torch.testing.assert_close(merge_directions(f, b, "gate", w, bias), z * f + (1 - z) * b)
    torch.testing.assert_close(merge_directions(f, b, "mean"), (f + b) / 2)
    torch.testing.assert_close(merge_directions(f, b, "sum"), f + b)
    with pytest.raises(ValueError):
        merge_directions(f, b, "gate")


CONFIGS = [
    dict(bidirectional=True, block="prenorm", merge="gate"),
    dict(bidirectional=True, block="official", merge="gate", shared_merge=True),
    dict(bidirectional=True, block="official", merge="concat"),
    dict(bidirectional=True, block="prenorm", merge="mean"),
    dict(bidirectional=False, block="prenorm"),
    dict(bidirectional=False, block="official"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_pad_invariance(cfg):
    torch.manual_seed(0)
    enc = GeneMambaEncoder(60, n_layers=2, **TINY, **cfg).eval()
    L = 20
    lengths = torch.tensor([20, 13, 5, 1])
    tokens = torch.randint(3, 60, (4, L))
    pad = torch.arange(L).unsqueeze(0) >= lengths.unsqueeze(1)
    tokens[pad] = 0
    real = ~pad
    ref = enc(tokens, lengths)
    # 1. pads carry other (non-zero) token ids
    other = tokens.clone()
    other[pad] = torch.randint(3, 60, (int(pad.sum()),))
    torch.testing.assert_close(enc(other, lengths)[real], ref[real], atol=1e-5, rtol=1e-5)
    # 2. more padding (crosses the chunk size)
    longer = torch.cat([tokens, torch.randint(3, 60, (4, 17))], dim=1)
    out = enc(longer, lengths)[:, :L]
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    # 3. one cell alone gives the same states as in the batch
    torch.testing.assert_close(enc(tokens[2:3, :5], lengths[2:3])[0], ref[2, :5], atol=1e-5, rtol=1e-5)


def test_block_forward_uses_per_sequence_reversal():
    """The backward direction of a right-padded cell equals running the mixer on the hand-reversed cell."""
    torch.manual_seed(0)
    blk = BiMambaBlock(merge="mean", block="prenorm", **TINY)
    x = torch.randn(1, 9, 32)
    n = 6
    out = blk(x, torch.tensor([n]))
    h = blk.norm(x)
    fwd = blk.mixer(h[:, :n])
    bwd = blk.mixer(h[:, :n].flip(1)).flip(1)
    torch.testing.assert_close(out[:, :n], x[:, :n] + 0.5 * (fwd + bwd), atol=1e-5, rtol=1e-5)


def test_official_block_matches_published_formula():
    torch.manual_seed(0)
    for mode in ("mean", "sum", "concat", "gate"):
        blk = BiMambaBlock(merge=mode, block="official", **TINY)
        assert blk.norm is None
        x = torch.randn(2, 8, 32)
        f = blk.mixer(x) + x
        b = (blk.mixer(x.flip(1)) + x.flip(1)).flip(1)
        if mode == "mean":
            ref = (f + b) / 2
        elif mode == "sum":
            ref = f + b
        else:
            proj = torch.cat([f, b], -1) @ blk.merge.weight.T + blk.merge.bias
            ref = proj if mode == "concat" else torch.sigmoid(proj) * f + (1 - torch.sigmoid(proj)) * b
        torch.testing.assert_close(blk(x), ref, atol=1e-5, rtol=1e-5)


def test_packed_encoder_equals_separate_cells():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(60, n_layers=2, **TINY).eval()
    lens = [9, 4, 14]
    cells = [torch.randint(3, 60, (n,)) for n in lens]
    row = torch.cat(cells).unsqueeze(0)
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lens)]).unsqueeze(0)
    packed = enc(row, seq_idx=seq_idx)[0]
    start = 0
    for c in cells:
        torch.testing.assert_close(packed[start : start + len(c)], enc(c.unsqueeze(0))[0], atol=1e-5, rtol=1e-5)
        start += len(c)
