"""Kernels of the training path: the SSD backward's state walks per sequence (``nn.fused_ssd_bwd``,
``nn._triton_states``) and the residual stream's add + RMSNorm (``nn.fused_norm``).

Each kernel is checked against a step-by-step torch transcription of the recurrence that mamba-ssm's
``_state_passing_fwd/_bwd`` kernels compute over the whole packed row (one walk over every chunk, the scale set to
zero where a chunk ends in another sequence than the chunk before). Under Triton's interpreter on a CPU; compiled
on a GPU, where the last test also compares the whole backward with mamba-ssm's.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="the state walks are Triton kernels (pip install triton)")

from fused_steps import fused_encoder_two_ways
from genemamba_scvi.nn import fused_ssd_bwd
from genemamba_scvi.nn.fused_ssd_bwd import state_passing_runs_bwd, state_passing_runs_fwd

CUDA = torch.cuda.is_available()
# every kernel access checked against its tensors' bounds under the interpreter (conftest.triton_bounds)
pytestmark = pytest.mark.usefixtures("triton_bounds")
DEVICE = torch.device("cuda" if CUDA else "cpu")


def _last_seqs(seq: torch.Tensor, nchunks: int, Q: int) -> list[int]:
    L = seq.numel()
    return [int(seq[min((c + 1) * Q, L) - 1]) for c in range(nchunks)]


def walk_reference(states, dA_last, dout, seq, Q):
    """One walk over all chunks, as mamba-ssm's kernels (no initial or final state): ``out``, ``dstates``, ``ddA``."""
    nchunks = states.shape[0]
    last = _last_seqs(seq, nchunks, Q)
    scale = [0.0 if last[c] != (last[c - 1] if c else 0) else None for c in range(nchunks)]
    s = [torch.zeros_like(dA_last[:, c]) if scale[c] == 0.0 else dA_last[:, c].exp() for c in range(nchunks)]
    out = torch.zeros_like(states)
    r = torch.zeros_like(states[0])
    for c in range(nchunks):
        r = s[c][:, None] * r + states[c]
        if c + 1 < nchunks:
            out[c + 1] = r
    dstates = torch.zeros_like(states)
    ddA = torch.zeros_like(dA_last)
    g = torch.zeros_like(states[0])
    for k in range(nchunks - 1, 0, -1):
        ddA[:, k] = s[k] * (out[k] * g).sum(-1)
        g = s[k][:, None] * g + dout[k]
        dstates[k - 1] = g
    return out, dstates, ddA


@pytest.mark.parametrize(
    ("lengths", "Q"),
    [
        ([5, 1, 3, 17, 2, 9, 11], 4),  # boundaries inside chunks, a cell within one chunk, several chunks per cell
        ([8, 4, 12], 4),  # boundaries exactly at chunk ends
        ([30], 4),  # one sequence: one run over every chunk
        ([3], 8),  # a single, partial chunk
    ],
)
def test_state_walks_per_run_equal_the_walk_over_all_chunks(monkeypatch, lengths, Q):
    monkeypatch.setattr(fused_ssd_bwd, "_STATES_BLOCK", 8)  # several blocks of the state, the last partial
    torch.manual_seed(0)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32).to(DEVICE)
    nchunks, H, dim = math.ceil(seq.numel() / Q), 3, 12
    states = torch.randn(nchunks, H, dim, device=DEVICE)
    dA_last = -torch.rand(H, nchunks, device=DEVICE) * 2
    dout = torch.randn(nchunks, H, dim, device=DEVICE)
    out_ref, dstates_ref, ddA_ref = walk_reference(states, dA_last, dout, seq.cpu(), Q)
    out = state_passing_runs_fwd(states, dA_last, seq, Q)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    dstates, ddA, states_lo = state_passing_runs_bwd(out, dA_last, dout, seq, Q, torch.bfloat16)
    assert dstates.dtype == states_lo.dtype == torch.bfloat16
    torch.testing.assert_close(dstates.float(), dstates_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(states_lo.float(), out_ref, rtol=1e-2, atol=1e-2)
    dstates32, ddA32, _ = state_passing_runs_bwd(out, dA_last, dout, seq, Q, torch.float32)
    torch.testing.assert_close(dstates32, dstates_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddA32, ddA_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ddA, ddA32)


def test_state_walk_runs_never_mix_sequences():
    """Changing one sequence's chunk states changes no state entering a chunk that ends in another sequence."""
    torch.manual_seed(1)
    Q, lengths = 4, [9, 10, 7]
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)).to(torch.int32).to(DEVICE)
    nchunks = math.ceil(seq.numel() / Q)
    states = torch.randn(nchunks, 2, 16, device=DEVICE)
    dA_last = -torch.rand(2, nchunks, device=DEVICE)
    last = _last_seqs(seq.cpu(), nchunks, Q)
    first = state_passing_runs_fwd(states, dA_last, seq, Q)
    changed = states.clone()
    changed[[c for c in range(nchunks) if last[c] == 1]] += 1.0
    second = state_passing_runs_fwd(changed, dA_last, seq, Q)
    # out[c] is the state leaving chunk c - 1: untouched unless chunk c - 1 ends in sequence 1
    for c in range(1, nchunks):
        same = torch.equal(first[c], second[c])
        assert same == (last[c - 1] != 1), c


def dcb_ddA_reference(x, dt, cs, dy, CB, seq, Q):
    """mamba-ssm's ``_chunk_scan_bwd_dcb`` and ``_chunk_scan_bwd_ddAcs_stable`` transcribed pair by pair.

    ``x``, ``dy`` ``[L, H, P]``; ``dt``, ``cs`` ``[H, nchunks, Q]``; ``CB`` ``[nchunks, G, Q, Q]``; ``seq`` ``[L]``.
    Returns ``dcb`` ``[nchunks, G, Q, Q]`` and ``ddA`` ``[H, nchunks, Q]``: at position ``k`` the sum of
    ``W_mn = (dy_m . x_n) dt_n exp(cs_m - cs_n) CB_mn`` over the pairs of one sequence with ``n < k <= m``.
    """
    L, H, _ = x.shape
    nchunks, G = CB.shape[:2]
    dcb = torch.zeros(nchunks, G, Q, Q, dtype=torch.float64)
    ddA = torch.zeros(H, nchunks, Q, dtype=torch.float64)
    for c in range(nchunks):
        s, lim = c * Q, min(Q, L - c * Q)
        i = torch.arange(lim)
        sq = seq[s : s + lim]
        pair = (i[:, None] >= i[None, :]) & (sq[:, None] == sq[None, :])
        for h in range(H):
            g = h // (H // G)
            a = cs[h, c, :lim].double()
            d = (dy[s : s + lim, h].double() @ x[s : s + lim, h].double().T) * dt[h, c, :lim].double()[None, :]
            d = torch.where(pair, d * torch.exp(a[:, None] - a[None, :]), 0.0)
            dcb[c, g, :lim, :lim] += d
            w = d * CB[c, g, :lim, :lim].double()
            for k in range(1, lim):
                ddA[h, c, k] = w[k:, :k].sum()
    return dcb, ddA


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize(
    ("lengths", "Q", "G"), [([5, 1, 40, 17, 30], 32, 2), ([64], 32, 1), ([7, 20], 64, 1), ([20, 1, 30, 1, 9], 64, 1)]
)
def test_dcb_pass_also_gives_the_intra_chunk_ddA(monkeypatch, lengths, Q, G, split):
    """``ssd_dcb_ddacs`` writes mamba-ssm's d(CB) and, after a reverse cumulative sum, its straddling-pair ddA; with
    the decay per pair or, on the tiles below the diagonal, split in a row and a column factor."""
    cfg = {"BM": 16, "BN": 16, "num_warps": 4, "num_stages": 1, "split": split}
    monkeypatch.setattr(fused_ssd_bwd, "DCB_DDA_CONFIG", cfg)
    torch.manual_seed(3)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32)
    L, H, P = seq.numel(), 4, 16
    nchunks = math.ceil(L / Q)
    x, dy = (torch.randn(L, H, P).to(torch.bfloat16) for _ in range(2))
    dt = torch.rand(H, nchunks, Q) * 0.5
    cs = torch.cumsum(-dt * (torch.rand(H, 1, 1) + 0.2), dim=-1)
    CB = torch.randn(nchunks, G, Q, Q)
    dcb_ref, ddA_ref = dcb_ddA_reference(x, dt, cs, dy, CB, seq, Q)
    ddacs = torch.randn(1, H, nchunks, Q)  # added into: an earlier share of the gradient
    start = ddacs.clone()
    dev = dict(device=DEVICE)
    ddacs = ddacs.to(**dev)
    dcb = fused_ssd_bwd.ssd_dcb_ddacs(x[None].to(**dev), dt[None].to(**dev), cs[None].to(**dev), dy[None].to(**dev),
                                      CB[None].to(**dev), seq[None].to(**dev), ddacs)  # fmt: skip
    torch.testing.assert_close(dcb[0].cpu().double(), dcb_ref, rtol=1e-4, atol=1e-4)
    intra = ddacs - start.to(**dev)
    got = fused_ssd_bwd.reverse_sum_by_sequence(intra, seq[None].to(**dev), Q)[0].cpu().double()
    torch.testing.assert_close(got, ddA_ref, rtol=1e-4, atol=1e-3)
    assert float(ddA_ref.abs().max()) > 1.0  # the comparison is not between zeros
    _assert_one_token_cells_get_zero(got, lengths, Q)
    # stored in bf16 (what mamba-ssm's _bmm_chunk_bwd rounds it to): the fp32 result rounded once
    args = (x[None], dt[None], cs[None], dy[None], CB[None], seq[None], ddacs.clone())
    low = fused_ssd_bwd.ssd_dcb_ddacs(*(a.to(**dev) for a in args), out_dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    # (compiled, the cast rounds to nearest even; Triton 3.6's interpreter truncates)
    want = dcb.to(torch.bfloat16) if CUDA else (dcb.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    torch.testing.assert_close(low, want, rtol=0, atol=0)


def _assert_one_token_cells_get_zero(ddA, lengths, Q):
    """No pair straddles a one-token cell (a pack's pad cell): its ddA is exactly zero, also with later cells in
    its chunk, whose cancelling row and column sums leave a float32 remainder in a plain reverse cumulative sum
    (that remainder, multiplied by 1/sqrt(eps) per layer at a pad token, grew to NaN on an H200)."""
    starts = [sum(lengths[:i]) for i, n in enumerate(lengths) if n == 1]
    for t in starts:
        assert torch.equal(ddA[:, t // Q, t % Q], torch.zeros_like(ddA[:, 0, 0])), t


@pytest.mark.parametrize(("lengths", "Q"), [([5, 1, 40, 17, 30], 32), ([70], 32), ([3, 1], 16)])
def test_reverse_sum_by_sequence_restarts_at_every_sequence(lengths, Q):
    """At each position the sum of ``r`` over the later positions of its chunk and sequence (loop reference)."""
    torch.manual_seed(2)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32)
    L, H = seq.numel(), 3
    nchunks = math.ceil(L / Q)
    r = torch.randn(1, H, nchunks, Q)
    r.view(H, -1)[:, L:] = 0.0  # past the row (the kernels write zeros there)
    want = torch.zeros(H, nchunks, Q, dtype=torch.float64)
    for c in range(nchunks):
        for j in range(min(Q, L - c * Q)):
            for k in range(j, min(Q, L - c * Q)):
                if seq[c * Q + k] == seq[c * Q + j]:
                    want[:, c, j] += r[0, :, c, k].double()
    got = fused_ssd_bwd.reverse_sum_by_sequence(r.to(DEVICE), seq[None].to(DEVICE), Q)[0].cpu().double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    plain = fused_ssd_bwd.reverse_sum_by_sequence(r, None, Q)[0].double()  # no sequences: the plain reverse sum
    torch.testing.assert_close(plain, r[0].double().flip([-1]).cumsum(-1).flip([-1]))


@pytest.mark.parametrize(("lengths", "Q"), [([5, 1, 40, 17, 30], 32), ([3, 1], 16)])
def test_reverse_sum_adds_the_inter_chunk_share_in_the_same_pass(lengths, Q):
    """``inter``: the kernel adds ``next + reverse cumsum(prev, last at the chunk's end)`` as the torch ops do."""
    torch.manual_seed(3)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32)
    L, H = seq.numel(), 3
    nchunks = math.ceil(L / Q)
    r, prev, nxt = (torch.randn(1, H, nchunks, Q) for _ in range(3))
    r.view(H, -1)[:, L:] = 0.0
    last = torch.randn(H, nchunks)
    dev = dict(device=DEVICE)
    want = fused_ssd_bwd.reverse_sum_by_sequence(r.to(**dev), seq[None].to(**dev), Q).cpu()
    want = want + fused_ssd_bwd.inter_chunk_dda(prev.clone(), last, nxt)
    inter = (prev.to(**dev), last.t().contiguous().t().to(**dev), nxt.to(**dev))  # last: a strided [H, nchunks]
    got = fused_ssd_bwd.reverse_sum_by_sequence(r.to(**dev), seq[None].to(**dev), Q, inter)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(inter[0].cpu(), prev)  # prev is read, not modified
    # next_raw: next's per-position shares, summed over the chunk from its first position by the kernel
    raw = torch.diff(nxt, dim=-1, prepend=torch.zeros_like(nxt[..., :1]))
    inter_raw = (prev.to(**dev), last.to(**dev), raw.to(**dev))
    got_raw = fused_ssd_bwd.reverse_sum_by_sequence(r.to(**dev), seq[None].to(**dev), Q, inter_raw, next_raw=True)
    torch.testing.assert_close(got_raw.cpu(), want, rtol=1e-5, atol=1e-5)
    # the torch path (no sequence ids; inter_chunk_dda adds into prev in place, hence the copies)
    got_raw = fused_ssd_bwd.reverse_sum_by_sequence(r, None, Q, (prev.clone(), last, raw), next_raw=True)
    want_none = fused_ssd_bwd.reverse_sum_by_sequence(r, None, Q, (prev.clone(), last, nxt))
    torch.testing.assert_close(got_raw, want_none, rtol=1e-5, atol=1e-5)
    share = fused_ssd_bwd.inter_chunk_dda(prev.clone(), last, nxt)  # at a chunk's first position: all of prev, last
    torch.testing.assert_close(share[0, :, :, 0], nxt[0, :, :, 0] + prev[0].sum(-1) + last)
    with pytest.raises(ValueError, match="inter needs"):
        fused_ssd_bwd.reverse_sum_by_sequence(r.to(**dev), seq[None].to(**dev), Q, (prev.to(**dev), last[:1], nxt))


def _chunk_inputs(lengths, Q, G, seed, H=4, P=16, N=16):
    """Random inputs of the intra-chunk backward on a packed row of sequences of ``lengths`` (CPU, bf16 activations):
    ``seq``, ``x``, ``dy`` ``[L, H, P]``, ``B`` ``[L, G, N]``, ``dstates``, ``dt``, ``cs`` (non-increasing along each
    chunk), ``CB`` ``[nchunks, G, Q, Q]`` and ``D``."""
    torch.manual_seed(seed)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32)
    L = seq.numel()
    nchunks = math.ceil(L / Q)
    x, dy = (torch.randn(L, H, P).to(torch.bfloat16) for _ in range(2))
    B = torch.randn(L, G, N).to(torch.bfloat16)
    dstates = torch.randn(nchunks, H, P, N).to(torch.bfloat16)
    dt = torch.rand(H, nchunks, Q) * 0.5
    cs = torch.cumsum(-dt * (torch.rand(H, 1, 1) + 0.2), dim=-1)
    return seq, x, dy, B, dstates, dt, cs, torch.randn(nchunks, G, Q, Q), torch.randn(H)


def chunk_bwd_reference(x, dy, B, CB, dt, cs, seq, dstates, D, Q, round_bf16=CUDA):
    """mamba-ssm's ``_chunk_scan_chunk_state_bwd_dx`` (``dx``, ``ddt``, ``dD``) transcribed pair by pair, in fp64.

    As in the compiled kernels, the weights ``(C_m . B_n) exp(a_m - a_n)`` are rounded to bf16 before their
    product with ``dy`` (``round_bf16``; Triton's interpreter would truncate them, so there they stay fp32).

    ``x``, ``dy`` ``[L, H, P]``; ``B`` ``[L, G, N]``; ``dstates`` ``[nchunks, H, P, N]`` (gradient of the state
    leaving each chunk, which reaches the tokens of the chunk's last sequence); ``dt``, ``cs`` ``[H, nchunks, Q]``.
    """
    L, H, P = x.shape
    nchunks, G = CB.shape[:2]
    dx = torch.zeros(L, H, P, dtype=torch.float64)
    ddt = torch.zeros(H, nchunks, Q, dtype=torch.float64)
    dD = torch.zeros(H, dtype=torch.float64)
    for c in range(nchunks):
        s, lim = c * Q, min(Q, L - c * Q)
        i = torch.arange(lim)
        sq = seq[s : s + lim]
        pair = (i[:, None] >= i[None, :]) & (sq[:, None] == sq[None, :])
        tail = sq == sq[-1]
        for h in range(H):
            g = h // (H // G)
            a = cs[h, c, :lim].double()
            w = torch.where(pair, CB[c, g, :lim, :lim].double() * torch.exp(a[:, None] - a[None, :]), 0.0)
            if round_bf16:  # the compiled kernels' dot takes C B^T x decay in bf16, as dy
                w = w.to(torch.bfloat16).double()
            acc = w.T @ dy[s : s + lim, h].double()  # [n, P]
            inter = B[s : s + lim, g].double() @ dstates[c, h].double().T  # [n, P]
            acc += torch.where(tail, torch.exp(a[-1] - a), 0.0)[:, None] * inter
            xs, dys = x[s : s + lim, h].double(), dy[s : s + lim, h].double()
            dx[s : s + lim, h] = acc * dt[h, c, :lim].double()[:, None] + D[h].double() * dys
            ddt[h, c, :lim] = (acc * xs).sum(-1)
            dD[h] += (dys * xs).sum()
    return dx, ddt, dD


@pytest.mark.parametrize(
    ("lengths", "Q", "G", "BN", "split"),
    [([5, 1, 40, 17, 30], 32, 2, 16, True), ([64], 32, 1, 32, True), ([7, 20, 50], 64, 1, 16, True),
     ([7, 20, 50], 64, 1, 16, False)],
)  # fmt: skip
def test_chunk_bwd_pass_equals_the_pairs(monkeypatch, lengths, Q, G, BN, split):
    """``ssd_chunk_bwd`` returns mamba-ssm's dx, ddt, dD, d(CB) and (after a reverse cumulative sum) intra-chunk ddA."""
    cfg = {"BN": BN, "num_warps": 4, "num_stages": 1, "split_rows": split}  # split: the second half's rows alone
    monkeypatch.setattr(fused_ssd_bwd, "CHUNK_BWD_CONFIG", cfg)
    seq, x, dy, B, dstates, dt, cs, CB, D = _chunk_inputs(lengths, Q, G, seed=5)
    L, H, P = x.shape
    nchunks = CB.shape[0]
    dx_ref, ddt_ref, dD_ref = chunk_bwd_reference(x, dy, B, CB, dt, cs, seq, dstates, D, Q)
    dcb_ref, ddA_ref = dcb_ddA_reference(x, dt, cs, dy, CB, seq, Q)
    dev = dict(device=DEVICE)
    dx = torch.full((1, L, H, P), float("nan"), dtype=torch.bfloat16, **dev)
    CB = CB.to(**dev)
    ddt, dD, dcb, raw = fused_ssd_bwd.ssd_chunk_bwd(
        x[None].to(**dev), dy[None].to(**dev), B[None].to(**dev), CB[None], dt[None].to(**dev),
        cs[None].to(**dev), seq[None].to(**dev), dstates[None].to(**dev), D.to(**dev), dx,
    )  # fmt: skip
    torch.testing.assert_close(dx[0].cpu().double(), dx_ref, rtol=2e-2, atol=2e-2)  # bf16 output
    lim = L - (nchunks - 1) * Q
    torch.testing.assert_close(ddt[0, :, -1, lim:].cpu(), torch.zeros(H, Q - lim))  # past the row: zeros
    torch.testing.assert_close(ddt[0].cpu().double(), ddt_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(dD.cpu().double(), dD_ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(dcb[0].cpu().double(), dcb_ref, rtol=1e-4, atol=1e-4)
    got = fused_ssd_bwd.reverse_sum_by_sequence(raw.contiguous(), seq[None].to(**dev), Q)[0].cpu().double()
    torch.testing.assert_close(got, ddA_ref, rtol=1e-4, atol=1e-3)
    assert float(ddA_ref.abs().max()) > 1.0 and float(ddt_ref.abs().max()) > 1.0  # not a comparison of zeros
    _assert_one_token_cells_get_zero(got, lengths, Q)


@pytest.mark.parametrize(
    ("lengths", "Q", "G", "BM", "BK", "with_seq", "with_D"),
    [([5, 1, 40, 17, 30, 19], 32, 2, 16, 16, True, True), ([5, 1, 40, 17, 30], 64, 2, 32, 16, True, True),
     ([64], 32, 1, 32, 32, True, True), ([7, 20, 50], 64, 1, 16, 32, True, False), ([77], 32, 1, 16, 16, False, True)],
)  # fmt: skip
def test_dx_pass_with_heads_side_by_side_equals_the_pairs(monkeypatch, lengths, Q, G, BM, BK, with_seq, with_D):
    """``ssd_chunk_dx`` returns mamba-ssm's dx, ddt and dD (pair by pair in fp64): pairs only within a sequence,
    the leaving state's gradient only for the chunk's last sequence, zeros past the row; tiles smaller than the
    chunk in both directions, a partial last chunk, groups of heads."""
    monkeypatch.setattr(fused_ssd_bwd, "DX_CONFIG", {"BM": BM, "BK": BK, "num_warps": 4, "num_stages": 1})
    seq, x, dy, B, dstates, dt, cs, CB, D = _chunk_inputs(lengths, Q, G, seed=6)
    L, H, P = x.shape
    nchunks = CB.shape[0]
    ref_seq = seq if with_seq else torch.zeros_like(seq)
    dx_ref, ddt_ref, dD_ref = chunk_bwd_reference(x, dy, B, CB, dt, cs, ref_seq, dstates, D, Q)
    if not with_D:
        dx_ref = dx_ref - D.double()[None, :, None] * dy.double()
    dev = dict(device=DEVICE)
    dx = torch.full((1, L, H, P), float("nan"), dtype=torch.bfloat16, **dev)
    out, ddt, dD = fused_ssd_bwd.ssd_chunk_dx(
        x[None].to(**dev), dt[None].to(**dev), cs[None].to(**dev), B[None].to(**dev), CB[None].to(**dev),
        dy[None].to(**dev), dstates[None].to(**dev), D.to(**dev) if with_D else None,
        seq[None].to(**dev) if with_seq else None, dx,
    )  # fmt: skip
    assert out is dx
    torch.testing.assert_close(dx[0].cpu().double(), dx_ref, rtol=2e-2, atol=2e-2)  # bf16 output
    lim = L - (nchunks - 1) * Q
    torch.testing.assert_close(ddt[0, :, -1, lim:].cpu(), torch.zeros(H, Q - lim))  # past the row: zeros
    torch.testing.assert_close(ddt[0].cpu().double(), ddt_ref, rtol=1e-3, atol=1e-3)
    if with_D:
        torch.testing.assert_close(dD.cpu().double(), dD_ref, rtol=1e-4, atol=1e-3)
    else:
        assert dD is None
    assert float(ddt_ref.abs().max()) > 1.0 and float(dx_ref.abs().max()) > 1.0  # not a comparison of zeros


def test_dx_pass_refuses_shapes_it_cannot_tile(monkeypatch):
    """A tile under 16 rows, a chunk that is not a power of two, or a D per channel is refused with the reason."""

    def call(Q, D=None):  # ssd_chunk_dx on zeros: 2 heads of 16, d_state 16, one chunk of Q tokens
        x = torch.zeros(1, Q, 2, 16, dtype=torch.bfloat16)
        dt, B = torch.zeros(1, 2, 1, Q), torch.zeros(1, Q, 1, 16, dtype=torch.bfloat16)
        CB, dst = torch.zeros(1, 1, 1, Q, Q), torch.zeros(1, 1, 2, 16, 16, dtype=torch.bfloat16)
        return fused_ssd_bwd.ssd_chunk_dx(x, dt, dt, B, CB, x, dst, D, None, torch.empty_like(x))

    monkeypatch.setattr(fused_ssd_bwd, "DX_CONFIG", {"BM": 16, "BK": 8, "num_warps": 4, "num_stages": 1})
    with pytest.raises(ValueError, match="at least 16"):  # tensor-core dots need 16
        call(32)
    monkeypatch.setattr(fused_ssd_bwd, "DX_CONFIG", {"BM": 16, "BK": 16, "num_warps": 4, "num_stages": 1})
    with pytest.raises(ValueError, match="powers of two"):
        call(24)
    with pytest.raises(ValueError, match="one value per head"):
        call(24, D=torch.zeros(2, 16))


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
@pytest.mark.parametrize(
    ("dda", "intra", "dx"), [("fused", "mamba", "mamba"), ("mamba", "mamba", "mamba"), ("mamba", "fused", "mamba"),
                             ("fused", "mamba", "heads")],
)  # fmt: skip
def test_ssd_backward_with_state_walks_per_run_equals_mamba_ssm(monkeypatch, dda, intra, dx):
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    torch.manual_seed(2)
    lengths = [300, 5, 700, 256, 1000, 90]
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32).cuda()[None]
    L, H, P, N, Q = seq.shape[1], 4, 64, 64, 256
    x = torch.randn(1, L, H, P, device="cuda", dtype=torch.bfloat16)
    dt = torch.randn(1, L, H, device="cuda")
    A = -torch.rand(H, device="cuda") - 0.5
    B, C = (torch.randn(1, L, 1, N, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    D, dt_bias = torch.randn(H, device="cuda"), torch.randn(H, device="cuda") * 0.1
    dy = torch.randn(1, L, H, P, device="cuda", dtype=torch.bfloat16)
    got, want = {}, {}
    monkeypatch.setattr(fused_ssd_bwd, "_SSD_BWD_DDA", dda)  # d(CB) + ddA: our one pass, or mamba-ssm's two
    monkeypatch.setattr(fused_ssd_bwd, "_SSD_BWD_DX", dx)  # dx, ddt, dD: mamba-ssm's kernel or ssd_chunk_dx
    for mode, store in (("mamba", want), ("runs", got)):
        monkeypatch.setattr(fused_ssd_bwd, "_SSD_BWD_STATES", mode)
        # the intra-chunk backward (dx, ddt, dD, d(CB), ddA): our one pass or mamba-ssm's kernels
        monkeypatch.setattr(fused_ssd_bwd, "_SSD_BWD_INTRA", intra if mode == "runs" else "mamba")
        dx, dB, dC = torch.empty_like(x), torch.empty_like(B), torch.empty_like(C)
        ddt, dA, dD, ddt_bias = fused_ssd_bwd.ssd_varlen_bwd(dy, x, dt, A, B, C, Q, D, dt_bias, seq, True, dx, dB, dC)
        store.update(dx=dx, dB=dB, dC=dC, ddt=ddt, dA=dA, dD=dD, ddt_bias=ddt_bias)
    for name, w in want.items():
        g = got[name].double()
        rel = float((g - w.double()).norm() / w.double().norm())
        # the same chunk kernels and the same walk in fp32 (bf16 roundings of dstates may flip); with "fused", ddA
        # (in ddt, dA, ddt_bias) is summed in another order. Bound: bf16's unit roundoff (2^-8 = 3.9e-3); on an H100
        # (session 21) dx differed by 2.08e-3 in three of the four cases, run after run (2e-3 had been set on H200s)
        assert rel < 2.0**-8, (name, rel)


def _model_shaped_ssd_inputs(lengths, device="cuda"):
    """SSD inputs at the model's shapes (16 heads of 64, one group, d_state 64; bf16 x, dy, B, C) for packed cells
    of ``lengths``: ``seq`` ``[1, L]`` int32, ``x``, ``dy``, ``B``, ``C``, ``dt`` (fp32, ~softplus(-2)) and ``A``."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32).to(device)[None]
    L, H, P, N = seq.shape[1], 16, 64, 64
    x, dy = (torch.randn(1, L, H, P, device=device, dtype=torch.bfloat16) for _ in range(2))
    B, C = (torch.randn(1, L, 1, N, device=device, dtype=torch.bfloat16) for _ in range(2))
    dt, A = torch.randn(1, L, H, device=device) - 2, -torch.rand(H, device=device) * 4 - 0.5
    return seq, x, dy, B, C, dt, A


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
def test_own_state_gradients_without_the_split_sum_equal_mamba_ssm_wrappers():
    """``_own_state_grad`` (dB and dC of the chunks' own states, no sum over one head split) against mamba-ssm's
    ``_chunk_state_bwd_db`` and ``_chunk_scan_bwd_dC``, with enough chunks (>= the GPU's multiprocessors) that every
    head of the group is in one program, as in a training batch."""
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    from mamba_ssm.ops.triton import ssd_chunk_scan, ssd_chunk_state

    torch.manual_seed(6)
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    seq, x, dy, B, C, dt, A = _model_shaped_ssd_inputs([700, 5, 1000, 256, 2048, 90] * (n_sm // 12 + 2))
    H, P, N, Q = 16, 64, 64, 256
    dA_cs, dt_c = ssd_chunk_state._chunk_cumsum_fwd(dt, A, Q, dt_bias=None, dt_softplus=True)
    nchunks = dA_cs.shape[2]
    assert nchunks >= n_sm
    st = torch.randn(1, nchunks, H, P, N, device="cuda")
    st_lo = st.to(torch.bfloat16)
    want_b = ssd_chunk_state._chunk_state_bwd_db(x, dt_c, dA_cs, st, seq_idx=seq, B=B, ngroups=1)
    want_c = ssd_chunk_scan._chunk_scan_bwd_dC(st_lo, dA_cs, dy, seq_idx=seq, C=C, ngroups=1)
    got_b = fused_ssd_bwd._own_state_grad("db", x, st, B, dA_cs, seq, dt=dt_c)
    got_c = fused_ssd_bwd._own_state_grad("dc", dy, st_lo, C, dA_cs, seq)
    assert got_b[2] and got_c[2]  # the ddA shares summed (cumsum=True, the default)
    for name, g, w in (("dB", got_b[0], want_b[0]), ("ddA_next", got_b[1], want_b[1]), ("dC", got_c[0], want_c[0]),
                       ("ddA_prev", got_c[1], want_c[1])):  # fmt: skip
        assert g.shape == w.shape, name
        rel = float((g.double() - w.double()).norm() / w.double().norm())
        assert rel < 1e-6, (name, rel)  # the same kernels; ddA's tiles are added atomically, in any order


def _backward_per_switch(monkeypatch, switch, values, lengths, seed):
    """The whole packed SSD backward (``ssd_varlen_bwd``, model shapes) for each value of a ``fused_ssd_bwd`` switch,
    on the same inputs: one dict of gradients per value."""
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    torch.manual_seed(seed)
    seq, x, dy, B, C, dt, A = _model_shaped_ssd_inputs(lengths)
    D, dt_bias = torch.randn(16, device="cuda"), torch.randn(16, device="cuda") * 0.1
    out = []
    for value in values:
        monkeypatch.setattr(fused_ssd_bwd, switch, value)
        dx, dB, dC = torch.empty_like(x), torch.empty_like(B), torch.empty_like(C)
        ddt, dA, dD, ddt_bias = fused_ssd_bwd.ssd_varlen_bwd(dy, x, dt, A, B, C, 256, D, dt_bias, seq, True, dx, dB, dC)
        out.append(dict(dx=dx, dB=dB, dC=dC, ddt=ddt, dA=dA, dD=dD, ddt_bias=ddt_bias))
    return out


def _rel_each(got: dict, want: dict) -> dict:
    return {n: float((got[n].double() - w.double()).norm() / w.double().norm()) for n, w in want.items()}


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
def test_dcb_in_the_dot_dtype_gives_the_same_db_and_dc(monkeypatch):
    """``_DCB_IN_DOT_DTYPE``: d(CB) stored in bf16, which ``_bmm_chunk_bwd`` rounds it to anyway: dB and dC are
    bit-identical to those from the fp32 buffer."""
    low, full = _backward_per_switch(monkeypatch, "_DCB_IN_DOT_DTYPE", (True, False), [300, 5, 700, 256, 1000, 90], 7)
    assert torch.equal(low["dB"], full["dB"]) and torch.equal(low["dC"], full["dC"])
    assert float(low["dB"].float().abs().max()) > 0


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
def test_db_cumsum_in_the_reverse_sum_gives_the_same_gradients(monkeypatch):
    """``_DB_CUMSUM_IN_REV_SUM`` (an option): the ``ddA`` shares of the chunks' own states summed inside the
    reverse-sum kernel, not by ``torch.cumsum``: the same gradients (fp32 sums in another order). Enough chunks for
    the split-free launch of the db kernel."""
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    lengths = [700, 5, 1000, 256, 2048, 90] * (n_sm // 12 + 2)
    off, on = _backward_per_switch(monkeypatch, "_DB_CUMSUM_IN_REV_SUM", (False, True), lengths, 11)
    rel = _rel_each(on, off)
    assert all(r < 1e-4 for r in rel.values()), rel


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
def test_cb_in_bf16_stays_in_the_bf16_band(monkeypatch):
    """``_CB_IN_BF16`` (an option): the whole SSD backward with ``C B^T`` recomputed in bf16 against fp32, every
    gradient within bf16 rounding (one more rounding before the decay)."""
    full, low = _backward_per_switch(monkeypatch, "_CB_IN_BF16", (False, True), [300, 5, 700, 256, 1000, 90, 2048], 10)
    rel = _rel_each(low, full)
    assert all(r < 1e-2 for r in rel.values()), rel
    assert rel["dx"] > 0  # the option changed something


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
def test_dcb_ddacs_equals_mamba_ssm_kernels():
    """At the model's shapes (chunk 256, 16 heads of 64), d(CB) and ddA equal mamba-ssm's two kernels' output."""
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state

    torch.manual_seed(4)
    seq, x, dy, B, C, dt, A = _model_shaped_ssd_inputs([300, 5, 700, 256, 1000, 90, 2048])
    Q = 256
    dA_cs, dt_c = ssd_chunk_state._chunk_cumsum_fwd(dt, A, Q, dt_bias=None, dt_softplus=True)
    CB = ssd_bmm._bmm_chunk_fwd(C, B, Q, seq_idx=seq, output_dtype=torch.float32)
    want_dcb = ssd_chunk_scan._chunk_scan_bwd_dcb(x, dt_c, dA_cs, dy, seq_idx=seq, ngroups=1)
    want_ddA = ssd_chunk_scan._chunk_scan_bwd_ddAcs_stable(x, dt_c, dA_cs, dy, CB)
    ddacs = torch.zeros_like(dA_cs)
    dcb = fused_ssd_bwd.ssd_dcb_ddacs(x, dt_c, dA_cs, dy, CB, seq, ddacs)
    ddA = ddacs.flip([-1]).cumsum(-1).flip([-1])
    for name, g, w in (("dcb", dcb, want_dcb), ("ddA", ddA, want_ddA)):
        rel = float((g.double() - w.double()).norm() / w.double().norm())
        assert rel < 1e-4, (name, rel)


@pytest.mark.skipif(not CUDA, reason="mamba-ssm's chunk kernels run on CUDA only")
@pytest.mark.parametrize("shape", [(64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 2)])
def test_dx_pass_equals_mamba_ssm_kernel(monkeypatch, shape):
    """At the model's shapes (chunk 256, 16 heads of 64, d_state 64), ``ssd_chunk_dx`` returns what mamba-ssm's
    ``_chunk_scan_chunk_state_bwd_dx`` returns (the same bf16 roundings; sums in another order)."""
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_state, ssd_combined

    bm, bk, warps, stages = shape
    monkeypatch.setattr(fused_ssd_bwd, "DX_CONFIG", {"BM": bm, "BK": bk, "num_warps": warps, "num_stages": stages})
    torch.manual_seed(7)
    lengths = [300, 5, 700, 256, 1000, 90, 2048, 1]
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(torch.int32).cuda()[None]
    L, H, P, N, Q = seq.shape[1], 16, 64, 64, 256
    x, dy = (torch.randn(1, L, H, P, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    B, C = (torch.randn(1, L, 1, N, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dt, A = torch.randn(1, L, H, device="cuda") - 2, -torch.rand(H, device="cuda") * 4 - 0.5
    D = torch.randn(H, device="cuda")
    dA_cs, dt_c = ssd_chunk_state._chunk_cumsum_fwd(dt, A, Q, dt_bias=None, dt_softplus=True)
    CB = ssd_bmm._bmm_chunk_fwd(C, B, Q, seq_idx=seq, output_dtype=torch.float32)
    dstates = torch.randn(1, CB.shape[1], H, P, N, device="cuda", dtype=torch.bfloat16)
    want = ssd_combined._chunk_scan_chunk_state_bwd_dx(x, dt_c, dA_cs, B, CB, dy, dstates, D=D, seq_idx=seq)
    got = fused_ssd_bwd.ssd_chunk_dx(x, dt_c, dA_cs, B, CB, dy, dstates, D, seq, torch.empty_like(x))
    for name, g, w in zip(("dx", "ddt", "dD"), got, want, strict=True):
        rel = float((g.double() - w.double()).norm() / w.double().norm())
        assert rel < 1e-3, (name, rel)


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("D", [16, 12])
def test_add_rms_norm_equals_the_torch_stream(monkeypatch, nan_empty, with_residual, D):
    """``nn.fused_norm.add_rms_norm``: ``h = RMSNorm(res + x) * w`` (dtype of x) and ``r = res + x`` (fp32), and the
    gradients of x, res and w, against torch; several programs and a partial last one, a width not a power of two.
    New buffers start as NaN (the weight's partial sums are not zero-filled: each must be written)."""
    from genemamba_scvi.nn import fused_norm

    monkeypatch.setattr(fused_norm, "_ADD_NORM_BLOCK", (2, 3, 4))
    torch.manual_seed(5)
    T = 23
    x = torch.randn(T, D, device=DEVICE, requires_grad=True)
    res = torch.randn(T, D, device=DEVICE, requires_grad=True) if with_residual else None
    w = (torch.rand(D, device=DEVICE) + 0.5).requires_grad_(True)
    h, r = fused_norm.add_rms_norm(x, w, None, residual=res, eps=1e-5)
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    res2 = res.detach().clone().requires_grad_(True) if with_residual else None
    r2 = x2 + res2 if with_residual else x2
    h2 = r2 * torch.rsqrt(r2.square().mean(-1, keepdim=True) + 1e-5) * w2
    assert r.dtype == torch.float32 and h.dtype == x.dtype
    torch.testing.assert_close(r, r2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, h2, rtol=1e-5, atol=1e-5)
    gh, gr = torch.randn_like(h), torch.randn_like(r)  # the norm's output and the stream both feed later layers
    (h * gh + r * gr).sum().backward()
    (h2 * gh + r2 * gr).sum().backward()
    pairs = [(x.grad, x2.grad), (w.grad, w2.grad)] + ([(res.grad, res2.grad)] if with_residual else [])
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        fused_norm.add_rms_norm(x, w[:-1])


@pytest.mark.parametrize("bmm", [False, True])
@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("bias,db_in_kernel", [(True, True), (True, False), (False, True)])
def test_gate_merge_train_equals_the_torch_merge_with_gradients(monkeypatch, nan_empty, bias, db_in_kernel, lean, bmm):
    """``nn.fused_merge.gate_merge_train`` against ``merge_packed(mode="gate")``: output and the gradients of the
    two-direction rows, the weight and the bias (from the kernel's per-block column sums, or a column sum after
    it); ragged cells, an empty one, several partial blocks. With the weight's gradient written half by half into
    one buffer (``_LEAN_LAUNCHES``, new buffers NaN) and concatenated; by two GEMMs a pair or one batched GEMM."""
    from genemamba_scvi.nn import fused_merge, fused_split
    from genemamba_scvi.nn.bimamba import merge_packed, pack_cells

    monkeypatch.setattr(fused_merge, "_MERGE_BLOCK", (4, 8))
    monkeypatch.setattr(fused_merge, "_MERGE_DB_IN_KERNEL", db_in_kernel)
    monkeypatch.setattr(fused_split, "_LEAN_LAUNCHES", lean)
    monkeypatch.setattr(fused_split, "_GRAD_GEMM_FP32_OUT", lean)
    monkeypatch.setattr(fused_merge, "_MERGE_BMM", bmm)  # one batched GEMM a pair, the bias in the kernels
    torch.manual_seed(6)
    lens = torch.tensor([5, 1, 3, 0, 17, 2, 9])
    p = pack_cells(torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE))
    T, d = p.n_tokens, 12
    leaves = [torch.randn(2 * T, d), torch.randn(d, 2 * d) * 0.3, torch.randn(d)]
    a = [t.to(DEVICE).requires_grad_(True) for t in leaves]
    b = [t.detach().to(DEVICE).clone().requires_grad_(True) for t in leaves]
    got = fused_merge.gate_merge_train(a[0], p.rev, a[1], a[2] if bias else None)
    want = merge_packed(b[0], p.rev, "gate", b[1], b[2] if bias else None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(got)
    (got * g).sum().backward()
    (want * g).sum().backward()
    for x, y in zip(a[:3] if bias else a[:2], b[:3] if bias else b[:2]):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        fused_merge.gate_merge_train(a[0][:-1], p.rev, a[1], None)


@pytest.mark.parametrize("fp32_out", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grad_gives_the_fp32_product_with_and_without_an_out_view(monkeypatch, dtype, fp32_out):
    """``fused_split.weight_grad``: ``a @ b`` in fp32 from fp32 or bf16 operands, returned or written into a column
    block of a wider fp32 buffer without touching the rest (on CUDA with bf16 and ``_GRAD_GEMM_FP32_OUT``: cuBLAS's
    fp32 output)."""
    from genemamba_scvi.nn import fused_split
    from genemamba_scvi.nn.fused_split import weight_grad

    monkeypatch.setattr(fused_split, "_GRAD_GEMM_FP32_OUT", fp32_out)

    torch.manual_seed(2)
    a, b = torch.randn(6, 40, device=DEVICE).to(dtype), torch.randn(40, 5, device=DEVICE).to(dtype)
    want = a.double() @ b.double()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    got = weight_grad(a, b, torch.float32)
    assert got.dtype == torch.float32 and got.shape == (6, 5)
    assert float((got.double() - want).abs().max() / want.abs().max()) < tol
    buf = torch.full((6, 12), 7.0, device=DEVICE)
    res = weight_grad(a, b, torch.float32, out=buf[:, 5:10])
    assert res.data_ptr() == buf[:, 5:10].data_ptr()
    assert float((buf[:, 5:10].double() - want).abs().max() / want.abs().max()) < tol
    assert bool((buf[:, :5] == 7).all()) and bool((buf[:, 10:] == 7).all())


def _packed_batch(lengths, d_model, device):
    """Cell starts, random tokens (vocabulary 200) and an output gradient ``[T, d_model]`` for packed cells."""
    n = sum(lengths)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)]).to(device)
    return cu, torch.randint(3, 200, (n,), device=device), torch.randn(n, d_model, device=device)


@pytest.mark.skipif(not CUDA, reason="the fused training path runs on CUDA only (with mamba-ssm)")
def test_encoder_training_step_on_the_fused_path_equals_the_torch_backend(monkeypatch):
    """A packed training step of the encoder through every kernel of the training path (conv and gated-norm
    backwards, the SSD backward with per-run state walks, the training merge, the stream's add + RMSNorm) gives the
    torch backend's output and parameter gradients (fp32; tf32 dots in the SSD kernels)."""
    from genemamba_scvi.nn import GeneMambaEncoder, fused_merge, fused_norm
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    calls = {"merge": 0, "norm": 0}
    for mod, name, key in ((fused_merge, "_GateMergeTrain", "merge"), (fused_norm, "_AddRMSNorm", "norm")):
        real = getattr(mod, name).apply

        def counted(*args, _real=real, _key=key):
            calls[_key] += 1
            return _real(*args)

        monkeypatch.setattr(getattr(mod, name), "apply", counted)
    torch.manual_seed(7)
    kw = dict(d_model=128, n_layers=2, chunk_size=64, d_state=64, headdim=64)
    enc = GeneMambaEncoder(200, backend="auto", **kw).cuda()
    ref = GeneMambaEncoder(200, backend="torch", **kw).cuda()
    ref.load_state_dict(enc.state_dict())
    cu, tokens, g = _packed_batch([150, 77, 9, 1, 300], 128, "cuda")
    outs = []
    for model in (enc, ref):
        model.zero_grad(set_to_none=True)
        h = model.forward_packed(tokens, cu)
        (h * g).sum().backward()
        outs.append(
            (h.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    assert calls["merge"] >= 2 and calls["norm"] >= 2  # the fused training pieces ran in both layers
    (h1, g1), (h2, g2) = outs
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert rel(h1, h2) < 1e-2
    assert g1.keys() == g2.keys()
    bad = {n: rel(g1[n], g2[n]) for n in g2 if rel(g1[n], g2[n]) > 3e-2}
    assert not bad, bad


@pytest.mark.skipif(not CUDA, reason="the fused training path runs on CUDA only (with mamba-ssm)")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_encoder_every_layers_a_at_once_equals_per_layer_on_the_fused_path(monkeypatch, checkpointing):
    """The encoder's stacked ``-exp(A_log)`` (``fused_ssd._A_ONCE``), with and without activation checkpointing
    (each layer recomputed in the backward reads the same cached tensors): the same output and gradients. bf16
    autocast at the shipped kernel configurations' sizes (d_model 256, chunk 256), so nothing autotunes."""
    from genemamba_scvi.nn import GeneMambaEncoder, fused_ssd
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    if load_mamba_ssm_ops()["chunk_scan"] is None:
        pytest.skip("mamba-ssm is not installed")
    torch.manual_seed(8)
    enc = GeneMambaEncoder(200, backend="auto", d_model=256, n_layers=3, chunk_size=256, d_state=64, headdim=64)
    enc = enc.cuda()
    enc.gradient_checkpointing = checkpointing
    cu, tokens, g = _packed_batch([150, 77, 9, 1, 300], 256, "cuda")
    outs = []
    for once in (True, False):
        monkeypatch.setattr(fused_ssd, "_A_ONCE", once)
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = enc.forward_packed(tokens, cu)
        (h.float() * g).sum().backward()
        outs.append((h.detach(), {n: q.grad.detach().clone() for n, q in enc.named_parameters() if q.grad is not None}))
    (h1, g1), (h2, g2) = outs
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
    assert rel(h1, h2) < 1e-6  # the same A values: the forward is the same computation
    assert g1.keys() == g2.keys() and any("A_log" in n for n in g1)
    bad = {n: rel(g1[n], g2[n]) for n in g2 if rel(g1[n], g2[n]) > 1e-2}  # (atomic adds' order in the backward)
    assert not bad, bad


def test_split_projection_gradient_equals_torch_split_and_keeps_in_place_blocks():
    """The split's gradient is torch.split's; blocks written in place by their consumer are not copied."""
    from genemamba_scvi.nn.fused_split import GradSlab, split_projection

    torch.manual_seed(5)
    sizes = [3, 5, 2]
    proj = torch.randn(7, 10, requires_grad=True)
    (a, b, c), slab = split_projection(proj, sizes)
    assert [t.shape[1] for t in (a, b, c)] == sizes and torch.equal(torch.cat([a, b, c], 1), proj)
    kept = []

    class InPlace(torch.autograd.Function):  # a consumer whose backward writes into the slab, as conv_both's does
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            out = slab.block(1)
            out.copy_(g * 2)
            kept.append(out)
            return out

    copies = []
    take = GradSlab.take
    GradSlab.take = lambda self, grads: (
        copies.append([not self.holds(i, g) for i, g in enumerate(grads)]) or take(self, grads)
    )
    try:
        w = torch.randn(7, 5)
        loss = (a.sin()).sum() + (InPlace.apply(b) * w).sum()  # c unused: a zero block
        (g,) = torch.autograd.grad(loss, proj, retain_graph=True)
        assert copies == [[True, False, True]]  # a copied, b held in place, c zero-filled
        assert g.data_ptr() == kept[0].data_ptr() - 3 * g.element_size()  # the slab itself is the gradient
        ref = torch.cat([a.detach().cos(), 2 * w, torch.zeros(7, 2)], 1)
        torch.testing.assert_close(g, ref)
        (g2,) = torch.autograd.grad(loss, proj)  # a second backward gets a fresh buffer, same values
        assert g2.data_ptr() != g.data_ptr()
        torch.testing.assert_close(g2, ref)
    finally:
        GradSlab.take = take
    with pytest.raises(ValueError, match="do not add up"):
        split_projection(proj, [3, 3])


def test_mixer_training_writes_z_and_xbc_gradients_in_place(monkeypatch):
    """On the fused training path only dt's gradient is copied into the projection's gradient buffer."""
    from genemamba_scvi.nn import GeneMambaConfig
    from genemamba_scvi.nn.bimamba import BiMambaBlock, pack_cells
    from genemamba_scvi.nn.fused import mixer_both
    from genemamba_scvi.nn.fused_split import GradSlab

    torch.manual_seed(6)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=8, backend="torch")
    block = BiMambaBlock(config=cfg).to(DEVICE)
    p = pack_cells(torch.tensor([0, 5, 14, 17], device=DEVICE))
    h = torch.randn(p.n_tokens, 16, device=DEVICE, requires_grad=True)
    copied = []
    take = GradSlab.take
    monkeypatch.setattr(
        GradSlab,
        "take",
        lambda self, grads: copied.append([not self.holds(i, g) for i, g in enumerate(grads)]) or take(self, grads),
    )
    out = mixer_both(block.mixer, block.mixer.in_proj(h), p.rev, p.seq_idx[0], p.seq_idx_both, cu_seqlens=p.cu_seqlens)
    out.square().sum().backward()
    assert copied == [[False, False, False]]  # z, xBC and dt (dt_both's kernel) in place
    g = h.grad.clone()
    from genemamba_scvi.nn import fused, fused_split

    monkeypatch.setattr(fused_split, "_DT_BOTH_KERNEL", False)
    for in_place in (True, False):  # torch's dt: its gradient is copied into the slab
        monkeypatch.setattr(fused, "_SPLIT_GRAD_IN_PLACE", in_place)
        copied.clear()
        h.grad = None
        out = mixer_both(block.mixer, block.mixer.in_proj(h), p.rev, p.seq_idx[0], p.seq_idx_both,
                         cu_seqlens=p.cu_seqlens)  # fmt: skip
        out.square().sum().backward()
        assert copied == ([[False, False, True]] if in_place else [])
        torch.testing.assert_close(h.grad, g)


def test_every_layers_a_from_one_stack_gives_the_same_outputs_and_gradients(monkeypatch):
    """``neg_exp_a``: the layers' ``-exp(A_log)`` from one stacked computation, read by ``mixer_both`` from the
    batch's cache: outputs and every gradient (``A_log``'s included) as with each layer's own."""
    from genemamba_scvi.nn import GeneMambaConfig, fused_ssd
    from genemamba_scvi.nn.bimamba import BiMambaBlock, pack_cells
    from genemamba_scvi.nn.fused import mixer_both

    torch.manual_seed(9)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=8, backend="torch")
    blocks = [BiMambaBlock(config=cfg).to(DEVICE) for _ in range(2)]
    for b in blocks:
        with torch.no_grad():
            b.mixer.A_log.uniform_(-1.0, 1.5)  # distinct per layer
    p = pack_cells(torch.tensor([0, 5, 14, 17], device=DEVICE))
    h = torch.randn(p.n_tokens, 16, device=DEVICE)
    params = [q for b in blocks for q in b.mixer.parameters()]

    def run(cache):
        out = sum(mixer_both(b.mixer, b.mixer.in_proj(h), p.rev, p.seq_idx[0], p.seq_idx_both, cu_seqlens=p.cu_seqlens,
                             batch_cache=cache).square().sum() for b in blocks)  # fmt: skip
        return out, torch.autograd.grad(out, params)

    cache = {"A": fused_ssd.neg_exp_a(b.mixer for b in blocks)}
    assert set(cache["A"]) == {id(b.mixer.A_log) for b in blocks}
    got, g_got = run(cache)
    want, g_want = run({})
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
    a_logs = [i for i, q in enumerate(params) if any(q is b.mixer.A_log for b in blocks)]
    assert len(a_logs) == 2 and all(float(g_got[i].abs().sum()) > 0 for i in a_logs)  # A_log's gradient arrives
    monkeypatch.setattr(fused_ssd, "_A_ONCE", False)
    assert fused_ssd.neg_exp_a(b.mixer for b in blocks) == {}


@pytest.mark.parametrize("once", [True, False])
def test_fused_training_path_under_activation_checkpointing(monkeypatch, once):
    """The encoder's fused training path (forced on under Triton's interpreter) with activation checkpointing: the
    output and every gradient as without it, and the fused kernels not given up. Non-reentrant checkpointing stops
    a layer's recomputation by raising from inside it; ``_run_fused`` used to take that for a kernel failure, turn
    the fused path off for the process and break the backward ("early_stop is set")."""
    from genemamba_scvi.nn import fused_ssd

    monkeypatch.setattr(fused_ssd, "_A_ONCE", once)

    def checkpointing(enc, on):
        enc.gradient_checkpointing = on

    (h1, g1), (h2, g2) = fused_encoder_two_ways(monkeypatch, checkpointing, seed=8, chunk_size=8, force=True)
    torch.testing.assert_close(h2, h1)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], msg=n)


def test_lean_launches_leave_the_fused_training_step_bit_identical(monkeypatch, nan_empty):
    """``fused_split._LEAN_LAUNCHES`` only drops launches: unfilled partial sums (every entry written), the forward's
    weight casts reused, the conv weight by ``squeeze``. The encoder's fused training step (forced on under Triton's
    interpreter; on a GPU compiled) gives bit-identical outputs and parameter gradients with it on and off, new
    buffers NaN-filled so that an unwritten entry would show."""
    from genemamba_scvi.nn import fused_split

    def lean(enc, on):
        monkeypatch.setattr(fused_split, "_LEAN_LAUNCHES", on)

    (h1, g1), (h2, g2) = fused_encoder_two_ways(monkeypatch, lean, seed=9)
    assert torch.equal(h1, h2)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.equal(g1[n], g2[n]), n
        assert bool(torch.isfinite(g2[n]).all()), n


def test_dt_both_equals_cat_of_dt_and_its_reversal():
    """``dt_both``: ``[dt; dt[rev]]`` from a strided ``[T, H]`` view, its gradient ``g[:T] + g[T:][rev]`` (into a
    slab block when given), for ragged cells including empty and one-token ones."""
    from genemamba_scvi.nn.bimamba import pack_cells
    from genemamba_scvi.nn.fused_split import dt_both, split_projection

    torch.manual_seed(8)
    p = pack_cells(torch.tensor([0, 5, 5, 6, 300, 303], device=DEVICE))  # > one 256-token block, empty, one token
    T, H = p.n_tokens, 6
    proj = torch.randn(T, 4 + H, device=DEVICE, requires_grad=True)
    (_, dt), slab = split_projection(proj, [4, H])
    out = dt_both(dt, p.rev, (slab, 1))
    ref_in = proj.detach()[:, 4:].clone().requires_grad_(True)
    ref = torch.cat([ref_in, ref_in.index_select(0, p.rev)])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn(2 * T, H, device=DEVICE)
    (got,) = torch.autograd.grad(out, proj, g)
    (want,) = torch.autograd.grad(ref, ref_in, g)
    torch.testing.assert_close(got[:, 4:], want)
    assert torch.count_nonzero(got[:, :4]) == 0
    # without a slab: a new tensor; the reversal is its own inverse, so g[:T] + g[T:][rev]
    x = torch.randn(T, H, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(dt_both(x, p.rev), x, g)
    torch.testing.assert_close(gx, g[:T] + g[T:].index_select(0, p.rev))
