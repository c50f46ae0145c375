"""SSD scan: chunked (torch backend) vs sequential recurrence, packing with seq_idx, conv."""

from __future__ import annotations

import pytest
import torch

from genemamba_scvi.nn.ssd import causal_conv1d_torch, segment_ids, ssd_chunked, ssd_sequential


def _inputs(batch, L, nheads=4, headdim=8, ngroups=2, d_state=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L, nheads, headdim, generator=g, dtype=dtype)
    dt = torch.randn(batch, L, nheads, generator=g, dtype=dtype) - 1.0
    A = -(torch.rand(nheads, generator=g, dtype=dtype) * 8 + 0.5)
    B = torch.randn(batch, L, ngroups, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, L, ngroups, d_state, generator=g, dtype=dtype)
    D = torch.randn(nheads, generator=g, dtype=dtype)
    dt_bias = torch.randn(nheads, generator=g, dtype=dtype) * 0.5
    return x, dt, A, B, C, D, dt_bias


@pytest.mark.parametrize("L", [1, 5, 16, 37, 64, 100])
def test_chunked_equals_sequential(L):
    x, dt, A, B, C, D, dt_bias = _inputs(2, L, seed=L)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
    y_chunk, s_chunk = ssd_chunked(x, dt, A, B, C, chunk_size=16, return_final_states=True, **kw)
    y_seq, s_seq = ssd_sequential(x, dt, A, B, C, return_final_states=True, **kw)
    assert y_chunk.shape == x.shape
    torch.testing.assert_close(y_chunk, y_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_chunk, s_seq, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 256])
def test_chunked_independent_of_chunk_size(chunk_size):
    x, dt, A, B, C, D, dt_bias = _inputs(1, 29, ngroups=1)
    y_ref = ssd_sequential(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    y = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_chunked_initial_states_and_gradients():
    x, dt, A, B, C, D, dt_bias = _inputs(2, 23, seed=3, dtype=torch.float64)
    init = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias, init)]
    outs = []
    for fn, extra in ((ssd_chunked, {"chunk_size": 8}), (ssd_sequential, {})):
        ins = [t.detach().clone().requires_grad_() for t in leaves]
        xx, dd, aa, bb, cc, DD, bias, ii = ins
        y = fn(xx, dd, aa, bb, cc, D=DD, dt_bias=bias, dt_softplus=True, initial_states=ii, **extra)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append((y.detach(), [t.grad for t in ins]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-10, rtol=1e-9)
    for g1, g2 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g1, g2, atol=1e-9, rtol=1e-8)


def test_seq_idx_packing_equals_separate_runs():
    lens = [7, 19, 1, 13]  # 40 tokens; boundaries inside and across chunks of 8
    x, dt, A, B, C, D, dt_bias = _inputs(1, sum(lens), seed=11)
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)]).unsqueeze(0)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
    packed = ssd_chunked(x, dt, A, B, C, chunk_size=8, seq_idx=seq_idx, **kw)
    packed_seq = ssd_sequential(x, dt, A, B, C, seq_idx=seq_idx, **kw)
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        alone = ssd_chunked(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], chunk_size=8, **kw)
        torch.testing.assert_close(packed[:, sl], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed_seq[:, sl], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_segment_ids_only_boundaries_matter():
    seq_idx = torch.tensor([[5, 5, 2, 2, 2, 9], [0, 0, 0, 0, 1, 1]])
    assert segment_ids(seq_idx).tolist() == [[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 1, 1]]


def test_causal_conv_matches_conv1d_and_resets_at_boundaries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, generator=g)
    w = torch.randn(5, 4, generator=g)
    b = torch.randn(5, generator=g)
    ref = causal_conv1d_torch(x, w, b)
    same = causal_conv1d_torch(x, w, b, seq_idx=torch.zeros(2, 12, dtype=torch.long))
    torch.testing.assert_close(ref, same, atol=1e-6, rtol=1e-6)
    seq_idx = torch.tensor([[0] * 5 + [1] * 7] * 2)
    packed = causal_conv1d_torch(x, w, b, seq_idx=seq_idx)
    torch.testing.assert_close(packed[:, :5], causal_conv1d_torch(x[:, :5], w, b), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(packed[:, 5:], causal_conv1d_torch(x[:, 5:], w, b), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_inter_chunk_scan_equals_the_matrix_form(monkeypatch, packed):
    # session 19: beyond _INTER_CHUNK_MATRIX_MAX chunk states the recurrence runs chunk by chunk (the matrix grows
    # with the square of a long packed CPU batch's chunks); same outputs, final states and gradients (float64)
    import genemamba_scvi.nn.ssd as ssd

    lens = [7, 19, 1, 13, 24, 2, 30]  # 96 tokens, boundaries inside and across chunks of 4
    x, dt, A, B, C, D, dt_bias = _inputs(1, sum(lens), seed=21, dtype=torch.float64)
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)]).unsqueeze(0) if packed else None
    init = None if packed else torch.randn(1, 4, 8, 6, dtype=torch.float64)
    results = []
    for limit in (10**9, 1):  # the matrix, then the scan
        monkeypatch.setattr(ssd, "_INTER_CHUNK_MATRIX_MAX", limit)
        ins = [t.detach().clone().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
        xx, dd, aa, bb, cc, DD, bias = ins
        y, final = ssd_chunked(
            xx,
            dd,
            aa,
            bb,
            cc,
            chunk_size=4,
            D=DD,
            dt_bias=bias,
            dt_softplus=True,
            seq_idx=seq_idx,
            initial_states=init,
            return_final_states=True,
        )
        ((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + final.sum()).backward()
        results.append((y.detach(), final.detach(), [t.grad for t in ins]))
    (y1, f1, g1), (y2, f2, g2) = results
    torch.testing.assert_close(y1, y2, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(f1, f2, atol=1e-12, rtol=1e-10)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    ref = ssd_sequential(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True, seq_idx=seq_idx, initial_states=init)
    torch.testing.assert_close(y2, ref, atol=1e-10, rtol=1e-9)
