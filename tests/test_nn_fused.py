"""The fused Bi-Mamba mixer (``nn.fused``): its Triton kernels equal the pure-torch path.

On a CPU machine the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before the
kernels are first compiled); on a CUDA machine the same checks run the compiled kernels on the GPU.
"""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()  # without CUDA, conftest.py runs the kernels through Triton's interpreter
# every kernel access checked against its tensors' bounds under the interpreter (conftest.triton_bounds)
pytestmark = pytest.mark.usefixtures("triton_bounds")

pytest.importorskip("triton", reason="the fused kernels are written in Triton (pip install triton)")

import torch.nn.functional as F  # noqa: E402

from genemamba_scvi.nn import GeneMambaConfig  # noqa: E402
from genemamba_scvi.nn.bimamba import BiMambaBlock, bipack, pack_cells  # noqa: E402
from genemamba_scvi.nn.fused import conv_both, gated_norm_out_proj_both, mixer_both  # noqa: E402
from genemamba_scvi.nn.ssd import causal_conv1d_torch, ssd_chunked  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
# the one-pass SSD (ssd_varlen): compiled on a GPU, tl.dot takes fp32 inputs as tf32 (as mamba-ssm's kernels
# do) and the backward is mamba-ssm's chunked one, so agreement is to tf32 precision; exact fp32 in the interpreter
SSD_TOL = 5e-3 if CUDA else 1e-5
# ragged cells, an empty one, cells shorter than the convolution and longer than a chunk of 8
LENGTHS = [5, 1, 3, 0, 17, 2, 9]


# ----------------------------------------------------------------------------------------------------
# Pure-torch references: gather the reversed copies, then the per-direction functions of the mixer
# ----------------------------------------------------------------------------------------------------
def conv_both_reference(xbc, weight, bias, rev, seq, silu=True):
    """``conv_both`` by gathering ``[x; x[rev]]``, then the causal convolution per sequence."""
    both = torch.cat([xbc, xbc.index_select(0, rev)])
    seq = seq.to(torch.long)
    seq_both = torch.cat([seq, seq + int(seq.max()) + 1]) if seq.numel() else seq
    act = "silu" if silu else None
    return causal_conv1d_torch(both.unsqueeze(0), weight, bias, seq_both.unsqueeze(0), act)[0]


def gated_norm_out_proj_both_reference(y, z, rev, norm_weight, out_weight, out_bias=None, eps=1e-5, group_size=None):
    """``gated_norm_out_proj_both`` with the gates gathered (``RMSNormGated`` of Mamba-2, then out_proj)."""
    D = y.shape[-1]
    group_size = group_size or D
    zb = torch.cat([z, z.index_select(0, rev)])
    xs = (y * F.silu(zb)).reshape(y.shape[0], D // group_size, group_size)
    xs = xs * torch.rsqrt(xs.square().mean(-1, keepdim=True) + eps)
    yn = xs.reshape(y.shape[0], D) * norm_weight
    return F.linear(yn, out_weight, out_bias)


def _pack(lengths=LENGTHS):
    lens = torch.tensor(lengths)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE)
    return pack_cells(cu)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _leaves(*tensors):
    a = [t.detach().to(DEVICE).clone().requires_grad_(True) for t in tensors]
    b = [t.detach().to(DEVICE).clone().requires_grad_(True) for t in tensors]
    return a, b


def _record_calls(monkeypatch, module, name: str, record=lambda *a, **k: 1) -> list:
    """Wrap ``module.name`` so each call appends ``record(*args, **kwargs)`` to the returned list, then runs it."""
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(record(*a, **k)) or real(*a, **k))
    return calls


def _tiny_block(seed: int | None):
    """A torch-backend Bi-Mamba block (d_model 16, sizes the one-pass kernels take), a packed batch and its tokens."""
    if seed is not None:
        torch.manual_seed(seed)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=8, backend="torch")
    block = BiMambaBlock(config=cfg).to(DEVICE)
    p = _pack()
    return block, p, torch.randn(p.n_tokens, 16, device=DEVICE)


@pytest.fixture(params=["v2", "bf16dpre", "fused", "tokens", "span", "rows2d", "tokens2d"])
def conv_bwd_variant(request, monkeypatch):
    """Each backward of ``conv_both`` (``nn.fused._CONV_BWD_VARIANT``), restored after the test."""
    from genemamba_scvi.nn import fused

    monkeypatch.setattr(fused, "_CONV_BWD_VARIANT", request.param)
    if request.param == "fused":  # several token blocks per program and a partial last block
        monkeypatch.setattr(fused, "_CONV_BWD_FUSED_BLOCK", (8, 8, 2, 4))
    if request.param in ("tokens", "span"):  # several programs, several row blocks each, partial channel block
        monkeypatch.setattr(fused, "_CONV_BWD_BLOCK", (8, 8, 2))
    if request.param == "rows2d":
        monkeypatch.setattr(fused, "_CONV_BWD_2D_BLOCK", (8, 8, 2, 4))
    if request.param == "tokens2d":
        monkeypatch.setattr(fused, "_CONV_BWD_TOK2D_BLOCK", (8, 8, 2, 4))
    return request.param


@pytest.mark.parametrize("silu,dx_bounds", [(True, True), (False, True), (True, False)])
def test_conv_both_equals_gather_then_causal_conv_outputs_and_gradients(monkeypatch, silu, dx_bounds, conv_bwd_variant):
    """``dx_bounds``: the two-pass backward's second pass checks taps against the cell bounds (or cell ids)."""
    from genemamba_scvi.nn import fused

    monkeypatch.setattr(fused, "_CONV_DX_BOUNDS", dx_bounds)
    torch.manual_seed(1)
    p = _pack()
    T, C, K = p.n_tokens, 12, 4
    # the kernel reads a strided column slice of the projection, as in the mixer
    (full, w, b), (full_r, w_r, b_r) = _leaves(torch.randn(T, C + 7), torch.randn(C, K), torch.randn(C))
    out = conv_both(full[:, 3 : 3 + C], w, b, p.rev, p.seq_idx[0], silu, cu_seqlens=p.cu_seqlens)
    ref = conv_both_reference(full_r[:, 3 : 3 + C], w_r, b_r, p.rev, p.seq_idx[0], silu)
    assert out.shape == (2 * T, C)
    assert _rel(out, ref) < 1e-5
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for got, want in ((full, full_r), (w, w_r), (b, b_r)):
        assert _rel(got.grad, want.grad) < 1e-5
    assert torch.count_nonzero(full.grad[:, :3]) == 0  # nothing leaks into other columns
    assert torch.count_nonzero(full.grad[:, 3 + C :]) == 0


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", ["tokens", "lean"])
def test_conv_both_token_forward_equals_the_row_forward_and_the_reference(monkeypatch, bias, variant):
    """``_CONV_FWD_VARIANT = "tokens"`` (taps checked against the cell bounds) and ``"lean"`` (blocks inside one
    cell unmasked): ragged and empty cells, cells shorter than the taps, token blocks inside one cell (the 30- and
    41-token cells) and across cells, a partial last token block and channel block, a strided column slice."""
    from genemamba_scvi.nn import fused

    monkeypatch.setattr(fused, "_CONV_TOK_BLOCK", (8, 8, 4))
    torch.manual_seed(13)
    p = _pack([5, 1, 3, 0, 17, 2, 9, 30, 41])
    T, C, K = p.n_tokens, 12, 4
    full = torch.randn(T, C + 7, device=DEVICE)
    w, b = torch.randn(C, K, device=DEVICE), torch.randn(C, device=DEVICE) if bias else None
    args = (full[:, 3 : 3 + C], w, b, p.rev, p.seq_idx[0])
    ref = conv_both_reference(*args)
    monkeypatch.setattr(fused, "_CONV_FWD_VARIANT", variant)
    got = conv_both(*args, cu_seqlens=p.cu_seqlens)
    assert _rel(got, ref) < 1e-5
    monkeypatch.setattr(fused, "_CONV_FWD_VARIANT", "rows")
    assert torch.equal(conv_both(*args, cu_seqlens=p.cu_seqlens), conv_both(*args))  # rows: cu_seqlens unused
    assert _rel(conv_both(*args), ref) < 1e-5


def test_conv_both_without_bias_and_every_variant_gives_the_same_gradients(monkeypatch):
    from genemamba_scvi.nn import fused

    torch.manual_seed(5)
    p = _pack()
    T, C, K = p.n_tokens, 12, 4
    x, w = torch.randn(T, C, device=DEVICE), torch.randn(C, K, device=DEVICE)
    g = torch.randn(2 * T, C, device=DEVICE)
    (x_r, w_r), _ = _leaves(x, w)
    ref = conv_both_reference(x_r, w_r, None, p.rev, p.seq_idx[0])
    want = torch.autograd.grad(ref, [x_r, w_r], g)
    for variant in ("v2", "bf16dpre", "fused", "tokens", "rows2d", "tokens2d"):
        monkeypatch.setattr(fused, "_CONV_BWD_VARIANT", variant)
        (xx, ww), _ = _leaves(x, w)
        got = torch.autograd.grad(conv_both(xx, ww, None, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens), [xx, ww], g)
        for a, b in zip(got, want):
            assert _rel(a, b) < 1e-5, variant
    monkeypatch.setattr(fused, "_CONV_BWD_VARIANT", "no-such-variant")
    (xx, ww), _ = _leaves(x, w)
    with pytest.raises(ValueError, match="_CONV_BWD_VARIANT"):
        conv_both(xx, ww, None, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens).backward(g)


def test_conv_both_bf16_inputs_match_the_fp32_reference_loosely(conv_bwd_variant):
    """bf16 tensors (the GPU's autocast dtype; ``bf16dpre`` then keeps its gradient buffer in bf16)."""
    torch.manual_seed(6)
    p = _pack()
    T, C, K = p.n_tokens, 12, 4
    full = torch.randn(T, C + 5, device=DEVICE).to(torch.bfloat16)
    w, b = torch.randn(C, K, device=DEVICE), torch.randn(C, device=DEVICE)
    g = torch.randn(2 * T, C, device=DEVICE).to(torch.bfloat16)
    (xx, ww, bb), _ = _leaves(full, w, b)
    try:
        out = conv_both(xx[:, 2 : 2 + C], ww, bb, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens)
        got = torch.autograd.grad(out, [xx, ww, bb], g)
    except Exception as e:  # pragma: no cover - depends on the Triton interpreter's dtype support
        if CUDA:
            raise
        pytest.skip(f"Triton's interpreter cannot run the conv kernels on bf16 tensors: {e!r}")
    (xr, wr, br), _ = _leaves(full.float(), w, b)
    ref = conv_both_reference(xr[:, 2 : 2 + C], wr, br, p.rev, p.seq_idx[0])
    want = torch.autograd.grad(ref, [xr, wr, br], g.float())
    assert out.dtype == torch.bfloat16 and got[0].dtype == torch.bfloat16
    assert _rel(out, ref) < 1e-2
    for a, b_ in zip(got, want):
        assert _rel(a, b_) < 1e-2
    assert torch.count_nonzero(got[0][:, :2]) == 0 and torch.count_nonzero(got[0][:, 2 + C :]) == 0


def test_conv_both_never_mixes_tokens_of_different_cells(conv_bwd_variant):
    torch.manual_seed(2)
    p = _pack([4, 6])
    T, C = p.n_tokens, 8
    x = torch.randn(T, C, device=DEVICE)
    w, b = torch.randn(C, 4, device=DEVICE), torch.randn(C, device=DEVICE)
    out = conv_both(x, w, b, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens)
    x2 = x.clone()
    x2[4:] = torch.randn(6, C, device=DEVICE)  # change only the second cell
    out2 = conv_both(x2, w, b, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens)
    first_cell_rows = torch.cat([torch.arange(4), T + torch.arange(4)]).to(DEVICE)
    torch.testing.assert_close(out[first_cell_rows], out2[first_cell_rows], rtol=0, atol=0)
    # backward: gradients of the second cell's rows reach only the second cell's tokens
    xx = x.clone().requires_grad_(True)
    g = torch.zeros(2 * T, C, device=DEVICE)
    second_cell_rows = torch.cat([torch.arange(4, T), T + torch.arange(4, T)]).to(DEVICE)
    g[second_cell_rows] = torch.randn(len(second_cell_rows), C, device=DEVICE)
    (dx,) = torch.autograd.grad(conv_both(xx, w, b, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens), [xx], g)
    assert torch.count_nonzero(dx[:4]) == 0
    assert torch.count_nonzero(dx[4:]) > 0


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("variant", ["rows2d", "tokens2d"])
def test_conv_both_two_dimensional_backward_takes_any_tap_count(monkeypatch, K, variant):
    """``"rows2d"`` and ``"tokens2d"`` keep one accumulator per tap for up to 4 taps (unused ones neither loaded nor
    stored) and fall back to a 3-D kernel past 4: gradients equal the reference's for each count."""
    from genemamba_scvi.nn import fused

    monkeypatch.setattr(fused, "_CONV_BWD_VARIANT", variant)
    monkeypatch.setattr(fused, "_CONV_BWD_2D_BLOCK", (8, 8, 3, 4))
    monkeypatch.setattr(fused, "_CONV_BWD_TOK2D_BLOCK", (8, 8, 3, 4))
    torch.manual_seed(17)
    p = _pack([5, 1, 3, 17, 2])
    T, C = p.n_tokens, 10
    (x, w, b), (x_r, w_r, b_r) = _leaves(torch.randn(T, C), torch.randn(C, K), torch.randn(C))
    g = torch.randn(2 * T, C, device=DEVICE)
    got = torch.autograd.grad(conv_both(x, w, b, p.rev, p.seq_idx[0], cu_seqlens=p.cu_seqlens), [x, w, b], g)
    want = torch.autograd.grad(conv_both_reference(x_r, w_r, b_r, p.rev, p.seq_idx[0]), [x_r, w_r, b_r], g)
    for a, b_ in zip(got, want):
        assert _rel(a, b_) < 1e-5


@pytest.mark.parametrize("bwd", ["rows", "tiles2d"])
@pytest.mark.parametrize("variant", ["rows", "tokens"])
@pytest.mark.parametrize("group_size", [16, 8])
def test_gated_norm_out_proj_both_equals_gathered_gate_reference(monkeypatch, nan_empty, group_size, variant, bwd):
    """Forward by row or by token; backward by token or by ``[tokens, group]`` tile (here 2 tokens x 3 blocks a
    program: several programs, the last one partial). New buffers start as NaN: the tiles' weight-gradient partial
    sums are not zero-filled (``fused_split._LEAN_LAUNCHES``), so every one must be written."""
    import genemamba_scvi.nn.fused as fused

    monkeypatch.setattr(fused, "_NORM_FWD_VARIANT", variant)
    monkeypatch.setattr(fused, "_NORM_BWD_VARIANT", bwd)
    monkeypatch.setattr(fused, "_NORM_BWD_2D", (2, 3, 4))
    torch.manual_seed(3)
    p = _pack()
    T, D, dm = p.n_tokens, 16, 6
    leaves, leaves_r = _leaves(
        torch.randn(2 * T, D), torch.randn(T, D + 5), torch.rand(D) + 0.5, torch.randn(dm, D), torch.randn(dm)
    )
    y, zf, nw, ow, ob = leaves
    out = gated_norm_out_proj_both(y, zf[:, 2 : 2 + D], p.rev, nw, ow, ob, 1e-5, group_size)
    y_r, zf_r, nw_r, ow_r, ob_r = leaves_r
    ref = gated_norm_out_proj_both_reference(y_r, zf_r[:, 2 : 2 + D], p.rev, nw_r, ow_r, ob_r, 1e-5, group_size)
    assert _rel(out, ref) < 1e-5
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for got, want in zip(leaves, leaves_r):
        assert _rel(got.grad, want.grad) < 1e-5


def _torch_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, seq_idx=None):
    assert z is None
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, seq_idx=seq_idx)


@pytest.mark.parametrize("one_pass_ssd", [False, True])
def test_mixer_both_equals_the_gathered_two_direction_mixer(one_pass_ssd):
    """With the pure-torch scan, and with the one-pass SSD forward (``cu_seqlens``; dots need sizes >= 16)."""
    torch.manual_seed(4)
    size = 16 if one_pass_ssd else 8
    cfg = GeneMambaConfig(d_model=16, d_state=size, headdim=size, expand=2, chunk_size=8, backend="torch")
    block = BiMambaBlock(config=cfg).to(DEVICE)
    p = _pack()
    h = torch.randn(p.n_tokens, 16, device=DEVICE)
    (h1,), (h2,) = _leaves(h)
    kw = {"cu_seqlens": p.cu_seqlens} if one_pass_ssd else {"scan": _torch_scan}
    tol = SSD_TOL if one_pass_ssd else 1e-5
    out = mixer_both(block.mixer, block.mixer.in_proj(h1), p.rev, p.seq_idx[0], p.seq_idx_both, **kw)
    params = list(block.mixer.parameters())
    grads = torch.autograd.grad(
        (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)).sum(), [h1, *params]
    )
    ref = block.mixer(bipack(h2, p).unsqueeze(0), seq_idx=p.seq_idx_both)[0]
    grads_r = torch.autograd.grad(
        (ref * torch.linspace(-1, 1, ref.numel(), device=DEVICE).view_as(ref)).sum(), [h2, *params]
    )
    assert _rel(out, ref) < tol
    # the per-head parameters' gradients (2 entries each) sum over all tokens with cancellation: with tf32 dots in
    # mamba-ssm's backward they land near 1e-2 relative on a GPU (9.6e-3 seen once in three compiled runs)
    for got, want in zip(grads, grads_r):
        assert _rel(got, want) < (2e-2 if one_pass_ssd and CUDA else max(tol, 1e-4))


def test_mixer_both_is_bit_identical_with_and_without_lean_launches(monkeypatch, nan_empty):
    """``fused_split._LEAN_LAUNCHES`` (conv weight by ``squeeze``, the gated norm's partial sums unfilled, the
    forward's ``out_proj`` cast reused) changes no value of the two-direction mixer's output or gradients."""
    from genemamba_scvi.nn import fused_split

    torch.manual_seed(4)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=8, backend="torch")
    block = BiMambaBlock(config=cfg).to(DEVICE)
    p = _pack()
    h = torch.randn(p.n_tokens, 16, device=DEVICE)
    params = list(block.mixer.parameters())
    res = []
    for lean in (False, True):
        monkeypatch.setattr(fused_split, "_LEAN_LAUNCHES", lean)
        (h1,) = _leaves(h)[0]
        out = mixer_both(block.mixer, block.mixer.in_proj(h1), p.rev, p.seq_idx[0], p.seq_idx_both,
                         cu_seqlens=p.cu_seqlens)  # fmt: skip
        w = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)
        res.append((out.detach(), torch.autograd.grad((out * w).sum(), [h1, *params])))
    (o1, g1), (o2, g2) = res
    assert torch.equal(o1, o2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b) and bool(torch.isfinite(b).all())


# ----------------------------------------------------------------------------------------------------
# One-pass SSD forward (ssd_varlen)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "ngroups", "heads"), [(16, 1, 1), (64, 2, 1), (16, 1, 4), (32, 2, 2)])
def test_ssd_varlen_equals_the_chunked_scan_outputs_and_gradients(monkeypatch, q, ngroups, heads):
    """Ragged, empty, one-row and multi-chunk sequences; the state restarts at every sequence; one head per
    program, or several heads of a group per program (``SSD_FWD_CONFIG["heads"]``)."""
    import genemamba_scvi.nn.fused as fused

    monkeypatch.setitem(fused.SSD_FWD_CONFIG, "Q", q)
    monkeypatch.setitem(fused.SSD_FWD_CONFIG, "heads", heads)
    torch.manual_seed(5)
    H, P, N = 4, 16, 16
    lens = torch.tensor([70, 1, 0, 33, 130, 5])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE)
    L = int(cu[-1])
    seq = torch.repeat_interleave(torch.arange(lens.numel()), lens).to(DEVICE, torch.int32).unsqueeze(0)
    xbc = torch.randn(L, H * P + 2 * ngroups * N, device=DEVICE)
    dt = torch.randn(L, H, device=DEVICE)
    A = -torch.rand(H, device=DEVICE) - 0.5
    D = torch.randn(H, device=DEVICE)
    dt_bias = torch.randn(H, device=DEVICE)
    (a, b) = _leaves(xbc, dt, A, D, dt_bias)
    y = fused.ssd_varlen(a[0], a[1], a[2], cu, seq, nheads=H, headdim=P, ngroups=ngroups, d_state=N, D=a[3],
                         dt_bias=a[4], chunk_size=32)  # fmt: skip
    x, B, C = torch.split(b[0], [H * P, ngroups * N, ngroups * N], dim=-1)
    ref = ssd_chunked(
        x.reshape(1, L, H, P), b[1].unsqueeze(0), b[2], B.reshape(1, L, ngroups, N), C.reshape(1, L, ngroups, N),
        32, D=b[3], dt_bias=b[4], dt_softplus=True, seq_idx=seq,
    ).reshape(L, H * P)  # fmt: skip
    assert _rel(y, ref) < SSD_TOL
    w = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad((y * w).sum(), a), torch.autograd.grad((ref * w).sum(), b)):
        assert _rel(got, want) < max(SSD_TOL, 1e-4)


def test_ssd_split_plan_covers_every_sequence_once_in_near_equal_segments(monkeypatch):
    """The work items of a split scan: longest sequence first, a long one in near-equal segments of whole chunk
    steps (the last shorter), short and empty ones one item each, the rest of the bound empty."""
    import genemamba_scvi.nn.fused_ssd as fused_ssd

    monkeypatch.setitem(fused_ssd.SSD_FWD_CONFIG, "Q", 16)
    lens = torch.tensor([70, 1, 0, 33, 130, 5, 200])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    order = fused_ssd.ssd_order(cu)
    items = fused_ssd.ssd_split_plan(cu, order, int(cu[-1]), 32).tolist()  # split above 48 rows
    assert len(items) == 7 + 444 // 32 + 1
    seen: dict[int, list] = {}
    for w, (s0, s1, c0, c1, first) in enumerate(items):
        if (s0, s1, c0, c1) == (0, 0, 0, 0):  # past the last item: empty, its own first
            assert first == w and w >= 19  # 7 + 5 + 3 segments of the long ones, 4 short or empty
            continue
        seen.setdefault((s0, s1), []).append((w, c0, c1, first))
    for i in order.tolist():
        s0, s1 = int(cu[i]), int(cu[i + 1])
        segs = seen[(s0, s1)]
        ws = [w for w, *_ in segs]
        assert ws == list(range(ws[0], ws[0] + len(ws))) and all(f == ws[0] for *_, f in segs)
        assert segs[0][1] == s0 and segs[-1][2] == s1
        assert all(segs[i][2] == segs[i + 1][1] for i in range(len(segs) - 1))  # contiguous, in order
        n = s1 - s0
        assert len(segs) == (-(-n // 32) if n > 48 else 1)
        assert all((c1 - c0) % 16 == 0 for _, c0, c1, _ in segs[:-1])
    assert [len(seen[(int(cu[i]), int(cu[i + 1]))]) for i in (6, 4, 0)] == [7, 5, 3]  # 200, 130, 70 rows
    assert sum(len(v) for v in seen.values()) == 7 + 5 + 3 + 4  # and 33, 1, 5 rows and the empty one: one each


@pytest.mark.parametrize(("heads", "split_rows"), [(2, 32), (4, 16), (4, 64)])
def test_split_ssd_varlen_equals_the_unsplit_scan(monkeypatch, heads, split_rows):
    """Long sequences walked in segments by separate programs (``_SSD_SPLIT_ROWS``): the same outputs as one walk
    per sequence and as the chunked scan, the same gradients; the gated two-direction form too."""
    import genemamba_scvi.nn.fused_ssd as fused_ssd

    monkeypatch.setitem(fused_ssd.SSD_FWD_CONFIG, "heads", heads)
    torch.manual_seed(17)
    H, P, N = 4, 16, 16
    p = _pack([70, 1, 0, 33, 130, 5, 200])
    L = p.n_tokens
    xbc = torch.randn(L, H * P + 2 * N, device=DEVICE)
    dt, A = torch.randn(L, H, device=DEVICE), -torch.rand(H, device=DEVICE) - 0.5
    D, dt_bias = torch.randn(H, device=DEVICE), torch.randn(H, device=DEVICE)
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N, D=D, dt_bias=dt_bias)
    real = fused_ssd._ssd_kernels()
    used = []

    class Spy:
        def __getattr__(self, name):
            used.append(name)
            return getattr(real, name)

    monkeypatch.setattr(fused_ssd, "_ssd_kernels", lambda: Spy())
    with torch.no_grad():
        whole = fused_ssd.ssd_varlen(xbc, dt, A, p.cu_seqlens, p.seq_idx, **kw)
        monkeypatch.setattr(fused_ssd, "_SSD_SPLIT_ROWS", split_rows)
        cache: dict = {}
        split = fused_ssd.ssd_varlen(xbc, dt, A, p.cu_seqlens, p.seq_idx, cache=cache, **kw)
    assert used == ["ssd_varlen_heads_fwd_kernel", "ssd_split_states_kernel", "ssd_varlen_heads_fwd_kernel"]
    assert list(cache) == [f"ssd_split_{split_rows}"]  # the work items, kept for the batch's other layers
    assert _rel(split, whole) < SSD_TOL
    x, B, C = torch.split(xbc, [H * P, N, N], dim=-1)
    ref = ssd_chunked(x.reshape(1, L, H, P), dt.unsqueeze(0), A, B.reshape(1, L, 1, N), C.reshape(1, L, 1, N), 32,
                      D=D, dt_bias=dt_bias, dt_softplus=True, seq_idx=p.seq_idx).reshape(L, H * P)  # fmt: skip
    assert _rel(split, ref) < SSD_TOL
    a, b = _leaves(xbc, dt)
    y = fused_ssd.ssd_varlen(a[0], a[1], A, p.cu_seqlens, p.seq_idx, **kw)
    monkeypatch.setattr(fused_ssd, "_SSD_SPLIT_ROWS", None)
    y0 = fused_ssd.ssd_varlen(b[0], b[1], A, p.cu_seqlens, p.seq_idx, **kw)
    w = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad((y * w).sum(), a), torch.autograd.grad((y0 * w).sum(), b)):
        assert _rel(got, want) < SSD_TOL
    # the gated inference form on the two-direction row, dt and z read at the token
    cu2 = torch.cat([p.cu_seqlens[:-1], p.cu_seqlens + L])
    xbc2 = torch.randn(2 * L, H * P + 2 * N, device=DEVICE)
    z = torch.randn(L, H * P, device=DEVICE)
    with torch.no_grad():
        g0, ssq0 = fused_ssd.ssd_varlen_both(xbc2, dt, A, cu2, z, **kw)
        monkeypatch.setattr(fused_ssd, "_SSD_SPLIT_ROWS", split_rows)
        g1, ssq1 = fused_ssd.ssd_varlen_both(xbc2, dt, A, cu2, z, **kw)
    assert _rel(g1, g0) < SSD_TOL and _rel(ssq1, ssq0) < SSD_TOL


def test_ssd_split_target_splits_only_when_one_walk_would_set_the_time(monkeypatch):
    """A split needs the longest sequence (``max_seqlen``) to be over 2x an even share of the walk and 65,536 rows in
    all; never on a CPU, with the switch off (on by default), or without ``max_seqlen``."""
    import genemamba_scvi.nn.fused_ssd as fused_ssd

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(fused_ssd, "_sm_count", lambda index: 132)
    assert fused_ssd._SSD_SPLIT
    assert fused_ssd.ssd_split_target(90_000, 4, torch.device("cpu"), 4096) is None
    assert fused_ssd.ssd_split_target(90_000, 4, cuda) is None  # no bound on the sequences' length
    # 24 cells of top-4096 in both directions: ~90k rows, 4 programs a sequence, 264 slots -> ~85 steps of 16
    assert fused_ssd.ssd_split_target(90_000, 4, cuda, 4096) == 16 * 86
    assert fused_ssd.ssd_split_target(90_000, 4, cuda, 2048) is None  # not over 2 x 1,376 rows
    # 32 cells of top-2048 (the model's default batch): a share of 1,360 rows, 2,048-gene cells stay whole
    assert fused_ssd.ssd_split_target(89_000, 4, cuda, 2048) is None
    # 256 cells (inference): a segment would be ~10.6k rows, more than any cell of 4,096 genes
    assert fused_ssd.ssd_split_target(700_000, 4, cuda, 4096) is None
    assert fused_ssd.ssd_split_target(700_000, 4, cuda, 30_000) == 16 * 663
    # 16 cells of top-2048 (~44.5k rows): a host-bound step, never split; the shortest segment is 256 rows
    assert fused_ssd.ssd_split_target(44_500, 4, cuda, 2048) is None
    monkeypatch.setattr(fused_ssd, "_SSD_SPLIT_MIN_TOTAL_ROWS", 0)
    assert fused_ssd.ssd_split_target(44_500, 4, cuda, 2048) == 16 * 43
    assert fused_ssd.ssd_split_target(2_000, 4, cuda, 2_000) == 256
    monkeypatch.setattr(fused_ssd, "_SSD_SPLIT", False)
    assert fused_ssd.ssd_split_target(90_000, 4, cuda, 4096) is None


def test_the_encoder_passes_its_bound_on_a_cells_length_to_the_scan(monkeypatch):
    """``forward(packed=True)`` and ``embed_cells`` give the padded width as ``max_seqlen``; ``forward_packed``
    passes what it is given (nothing: None)."""
    import genemamba_scvi.nn.bimamba as bimamba
    import genemamba_scvi.nn.fused_ssd as fused_ssd
    from genemamba_scvi.nn import GeneMambaEncoder
    from genemamba_scvi.nn.encoder import pack_tokens
    from genemamba_scvi.nn.mamba2 import Mamba2Mixer

    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(Mamba2Mixer, "resolved_backend", lambda self, device=None: "mamba_ssm")
    seen = _record_calls(monkeypatch, fused_ssd, "ssd_split_target", lambda *a, **k: a[3] if len(a) > 3 else None)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=4, chunk_size=16, n_layers=1, backend="torch")
    enc = GeneMambaEncoder(50, config=cfg).to(DEVICE)
    tokens = torch.randint(1, 50, (3, 20), device=DEVICE)
    lengths = torch.tensor([20, 7, 12], device=DEVICE)
    with torch.no_grad():
        enc(tokens, lengths, packed=True)
        enc.embed_cells(tokens, lengths, packed=True)
        packed, cu = pack_tokens(tokens, lengths)
        enc.forward_packed(packed, cu)
        enc.forward_packed(packed, cu, max_seqlen=20)
    assert seen == [20, 20, None, 20]
    for bad in (-1, 2.5, True, "20"):
        with pytest.raises(ValueError, match="max_seqlen must be a whole number"):
            enc.forward_packed(packed, cu, max_seqlen=bad)


def test_ssd_varlen_restarts_the_state_at_every_sequence():
    """Changing one sequence's inputs leaves every other sequence's outputs bit-identical."""
    from genemamba_scvi.nn.fused import ssd_varlen

    torch.manual_seed(6)
    H, P, N = 2, 16, 16
    lens = torch.tensor([20, 40, 9])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE)
    seq = torch.repeat_interleave(torch.arange(3), lens).to(DEVICE, torch.int32).unsqueeze(0)
    xbc = torch.randn(69, H * P + 2 * N, device=DEVICE)
    dt, A = torch.randn(69, H, device=DEVICE), -torch.rand(H, device=DEVICE)
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N)
    y1 = ssd_varlen(xbc, dt, A, cu, seq, **kw)
    xbc2 = xbc.clone()
    xbc2[20:60] = torch.randn(40, xbc.shape[1], device=DEVICE)
    y2 = ssd_varlen(xbc2, dt, A, cu, seq, **kw)
    assert torch.equal(y1[:20], y2[:20]) and torch.equal(y1[60:], y2[60:])
    assert not torch.equal(y1[20:60], y2[20:60])


@pytest.mark.parametrize(("q", "ngroups", "conv_bias"), [(16, 1, True), (32, 2, False)])
def test_ssd_conv_varlen_equals_conv_both_then_the_chunked_scan(monkeypatch, q, ngroups, conv_bias):
    """Inference kernel with the convolution inside the scan: both directions, ragged cells (empty, shorter than
    the taps, several chunks), read from a column slice of a wider projection; the state restarts per cell."""
    import genemamba_scvi.nn.fused as fused

    monkeypatch.setitem(fused.SSD_CONV_FWD_CONFIG, "Q", q)
    torch.manual_seed(11)
    H, P, N, K = 4, 16, 16, 4
    p = _pack([70, 1, 0, 3, 33, 2, 50])
    T, C = p.n_tokens, H * P + 2 * ngroups * N
    proj = torch.randn(T, 8 + C + H, device=DEVICE)  # [z | xBC | dt] as the projection lays them out
    xbc, dt = proj[:, 8 : 8 + C], proj[:, 8 + C :]
    w = torch.randn(C, K, device=DEVICE) / 2
    b = torch.randn(C, device=DEVICE) if conv_bias else None
    A, D, dt_bias = -torch.rand(H, device=DEVICE) - 0.5, torch.randn(H, device=DEVICE), torch.randn(H, device=DEVICE)
    kw = dict(nheads=H, headdim=P, ngroups=ngroups, d_state=N, D=D, dt_bias=dt_bias)
    with torch.no_grad():
        y = fused.ssd_conv_varlen(xbc, dt, w, b, A, p.cu_seqlens, **kw)
        xbc2 = conv_both_reference(xbc, w, b, p.rev, p.seq_idx[0])
        x, B, Cm = torch.split(xbc2, [H * P, ngroups * N, ngroups * N], dim=-1)
        dt2 = torch.cat([dt, dt.index_select(0, p.rev)])
        ref = ssd_chunked(
            x.reshape(1, 2 * T, H, P), dt2.unsqueeze(0), A, B.reshape(1, 2 * T, ngroups, N),
            Cm.reshape(1, 2 * T, ngroups, N), 8, D=D, dt_bias=dt_bias, dt_softplus=True, seq_idx=p.seq_idx_both,
        ).reshape(2 * T, H * P)  # fmt: skip
    assert y.shape == (2 * T, H * P)
    assert _rel(y, ref) < SSD_TOL
    with pytest.raises(RuntimeError, match="no backward"):
        fused.ssd_conv_varlen(xbc, dt, w.requires_grad_(), b, A, p.cu_seqlens, **kw)


def test_convolution_inside_the_scan_only_without_gradients_and_when_switched_on(monkeypatch):
    """``mixer_both(conv_in_scan=True)``: same outputs; training keeps the convolved row; the block's switch."""
    import genemamba_scvi.nn.bimamba as bimamba
    import genemamba_scvi.nn.fused as fused

    block, p, h = _tiny_block(12)
    zxbcdt = block.mixer.in_proj(h)
    calls = _record_calls(monkeypatch, fused, "ssd_conv_varlen")
    args = (block.mixer, zxbcdt, p.rev, p.seq_idx[0], p.seq_idx_both)
    with torch.no_grad():
        got = mixer_both(*args, cu_seqlens=p.cu_seqlens, batch_cache=p.cache)
        assert calls and "order_both" in p.cache
        ref = mixer_both(*args, cu_seqlens=p.cu_seqlens, conv_in_scan=False)
    assert _rel(got, ref) < SSD_TOL
    n = len(calls)
    mixer_both(*args, cu_seqlens=p.cu_seqlens).sum().backward()  # gradients: conv_both, then ssd_varlen
    assert len(calls) == n
    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)  # the block's switch, as on a GPU
    monkeypatch.setattr(block.mixer, "resolved_backend", lambda device: "mamba_ssm")
    switches = []
    spy = lambda *a, **k: switches.append(k["conv_in_scan"]) or mixer_both(*a, **k)
    monkeypatch.setattr(bimamba, "mixer_both", spy)
    with torch.no_grad():
        block.mix_packed(h, p)  # off by default (slower on an H200)
        monkeypatch.setattr(BiMambaBlock, "fused_conv_ssd", True)
        block.mix_packed(h, p)
    assert switches == [False, True]


def test_mixer_both_falls_back_to_the_chunked_scan_for_sizes_the_one_pass_kernel_cannot_take():
    """headdim 8 is below Triton's smallest dot: ``ssd_varlen`` refuses it by name, ``mixer_both`` falls back."""
    from genemamba_scvi.nn.fused import ssd_varlen, ssd_varlen_supports

    assert ssd_varlen_supports(64, 64) and ssd_varlen_supports(16, 128)
    assert not ssd_varlen_supports(8, 64) and not ssd_varlen_supports(48, 64)
    p = _pack()
    with pytest.raises(ValueError, match="powers of two"):
        ssd_varlen(torch.zeros(p.n_tokens, 24), torch.zeros(p.n_tokens, 2), torch.zeros(2), p.cu_seqlens,
                   p.seq_idx, nheads=2, headdim=8, ngroups=1, d_state=4)  # fmt: skip
    if not CUDA:  # the fallback is mamba-ssm's scan, a GPU library; on CPU check the refusal only
        return
    torch.manual_seed(8)
    cfg = GeneMambaConfig(d_model=16, d_state=8, headdim=8, expand=2, chunk_size=8, backend="torch")
    block = BiMambaBlock(config=cfg).to(DEVICE)
    h = torch.randn(p.n_tokens, 16, device=DEVICE)
    out = mixer_both(block.mixer, block.mixer.in_proj(h), p.rev, p.seq_idx[0], p.seq_idx_both, cu_seqlens=p.cu_seqlens)
    ref = block.mixer(bipack(h, p).unsqueeze(0), seq_idx=p.seq_idx_both)[0]
    assert _rel(out, ref) < 5e-3


def test_block_falls_back_to_mamba_ssms_layer_once_when_the_fused_kernels_fail(monkeypatch, caplog):
    """A GPU on which Triton cannot build the kernels gets one warning and the unfused layer, not a crash."""
    import genemamba_scvi.nn.bimamba as bimamba

    block, p, h = _tiny_block(None)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTX assembly failed (simulated)")

    # pretend to be a GPU with mamba-ssm whose fused kernels fail
    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(bimamba, "mixer_both", broken)
    monkeypatch.setattr(block.mixer, "resolved_backend", lambda device: "mamba_ssm")
    monkeypatch.setattr(bimamba, "_FUSED_FAILED", {})
    ref = block.mixer(bipack(h, p).unsqueeze(0), seq_idx=p.seq_idx_both)[0]
    with caplog.at_level("WARNING", logger="genemamba_scvi"):
        out1 = block._mix_both(h, p)[0]
        out2 = block._mix_both(h, p)[0]
    assert _rel(out1, ref) < 1e-5 and _rel(out2, ref) < 1e-5
    assert len(calls) == 1  # not tried again on that device
    assert "fused Bi-Mamba kernels failed" in caplog.text and "simulated" in caplog.text

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(bimamba, "mixer_both", oom)
    monkeypatch.setattr(bimamba, "_FUSED_FAILED", {})
    with pytest.raises(torch.cuda.OutOfMemoryError):  # out of memory is the user's to see, not a kernel problem
        block._mix_both(h, p)


@pytest.mark.parametrize("bmm", [False, True])
def test_gate_merge_both_equals_merge_packed_and_refuses_gradients(monkeypatch, bmm):
    """Two GEMMs, or one batched GEMM over both directions with the bias added in the kernel (``_MERGE_BMM``)."""
    from genemamba_scvi.nn import fused_merge
    from genemamba_scvi.nn.bimamba import merge_packed
    from genemamba_scvi.nn.fused import gate_merge_both

    monkeypatch.setattr(fused_merge, "_MERGE_BMM", bmm)

    torch.manual_seed(9)
    p = _pack()
    d = 24  # not a multiple of the channel block: the column mask is exercised
    out2 = torch.randn(2 * p.n_tokens, d, device=DEVICE)
    weight, bias = torch.randn(d, 2 * d, device=DEVICE) / d**0.5, torch.randn(d, device=DEVICE)
    with torch.no_grad():
        got = gate_merge_both(out2, p.rev, weight, bias)
        want = merge_packed(out2, p.rev, "gate", weight, bias)
        assert _rel(got, want) < (5e-3 if CUDA else 1e-5)
        assert _rel(gate_merge_both(out2, p.rev, weight, None), merge_packed(out2, p.rev, "gate", weight)) < (
            5e-3 if CUDA else 1e-5
        )
    with pytest.raises(RuntimeError, match="no backward"):
        gate_merge_both(out2.requires_grad_(), p.rev, weight, bias)


def test_block_uses_the_one_pass_merge_only_when_switched_on_and_without_gradients(monkeypatch):
    import genemamba_scvi.nn.bimamba as bimamba

    block, p, h = _tiny_block(10)
    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)  # as on a GPU with Triton
    calls = _record_calls(monkeypatch, bimamba, "gate_merge_both")
    with torch.no_grad():
        monkeypatch.setattr(BiMambaBlock, "fused_merge", False)
        ref = block.mix_packed(h, p)
        assert not calls
        monkeypatch.setattr(BiMambaBlock, "fused_merge", True)  # the default
        got = block.mix_packed(h, p)
    assert calls and _rel(got, ref) < (5e-3 if CUDA else 1e-5)
    n = len(calls)
    block.mix_packed(h, p).sum().backward()  # with gradients: the differentiable merge
    assert len(calls) == n

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed (simulated)")

    monkeypatch.setattr(bimamba, "gate_merge_both", broken)  # a merge kernel that fails: warned, then the torch merge
    monkeypatch.setattr(bimamba, "_FUSED_FAILED", {})
    with torch.no_grad():
        assert _rel(block.mix_packed(h, p), ref) < 1e-5
    assert "simulated" in bimamba._FUSED_FAILED[str(h.device)]


# ----------------------------------------------------------------------------------------------------
# The gated norm folded into the scan and the merge (inference)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2])
def test_ssd_varlen_both_equals_the_scan_and_the_gate_on_the_two_direction_row(monkeypatch, heads):
    """Gate ``z`` and ``dt`` read at each row's token (row ``T + j`` is token ``rev[j]``); the partial sums of squares
    add up to the gated row's; an empty cell, one-token cells, cells over a chunk of 16."""
    import genemamba_scvi.nn.fused as fused

    monkeypatch.setitem(fused.SSD_FWD_CONFIG, "heads", heads)
    torch.manual_seed(11)
    H, P, N = 4, 16, 16
    p = _pack([5, 1, 0, 40, 2, 17])
    T = p.n_tokens
    cu2 = torch.cat([p.cu_seqlens[:-1], p.cu_seqlens + T])
    xbc2 = torch.randn(2 * T, H * P + 2 * N, device=DEVICE)
    dt = torch.randn(T, H, device=DEVICE)
    z = torch.randn(T, H * P, device=DEVICE)
    A, D, dt_bias = -torch.rand(H, device=DEVICE) - 0.5, torch.randn(H, device=DEVICE), torch.randn(H, device=DEVICE)
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N, D=D, dt_bias=dt_bias)
    with torch.no_grad():
        g, ssq = fused.ssd_varlen_both(xbc2, dt, A, cu2, z, **kw)
        y = fused.ssd_varlen(xbc2, torch.cat([dt, dt[p.rev]]), A, cu2, p.seq_idx_both, **kw)
        y_tok, none = fused.ssd_varlen_both(xbc2, dt, A, cu2, **kw)  # no gate: dt at the token only
    assert none is None and torch.equal(y_tok, y)
    want = y.float() * F.silu(torch.cat([z, z[p.rev]]))
    assert ssq.shape == (2 * T, H // heads) and ssq.dtype == torch.float32
    assert _rel(g, want) < SSD_TOL
    assert _rel(ssq.sum(1), want.square().sum(1)) < SSD_TOL
    with pytest.raises(ValueError, match="two-direction row"):
        fused.ssd_varlen_both(xbc2, dt, A, cu2, z[:-1], **kw)
    with pytest.raises(ValueError, match="two-direction row"):
        fused.ssd_varlen_both(xbc2, torch.cat([dt, dt]), A, cu2, **kw)
    with pytest.raises(RuntimeError, match="no backward"):
        fused.ssd_varlen_both(xbc2, dt, A.requires_grad_(), cu2, z, **kw)


@pytest.mark.parametrize("bmm", [False, True])
def test_folded_norm_with_the_scaled_merge_equals_the_gated_norm_then_the_merge(monkeypatch, bmm):
    """``mixer_both(fold_norm=True)`` + ``gate_merge_both(row_ssq=...)`` == ``mixer_both`` + ``gate_merge_both``."""
    from genemamba_scvi.nn import fused_merge
    from genemamba_scvi.nn.fused import gate_merge_both

    monkeypatch.setattr(fused_merge, "_MERGE_BMM", bmm)

    block, p, h = _tiny_block(12)
    m = block.mixer
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)  # a norm weight other than ones: the fold into out_proj is exercised
        merge = torch.nn.Linear(32, 16).to(DEVICE)
        zx = m.in_proj(h)
        args = (m, zx, p.rev, p.seq_idx[0], p.seq_idx_both)
        kw = dict(cu_seqlens=p.cu_seqlens, conv_in_scan=False)
        ref = gate_merge_both(mixer_both(*args, **kw), p.rev, merge.weight, merge.bias)
        out2, ssq = mixer_both(*args, fold_norm=True, **kw)
        assert ssq is not None
        got = gate_merge_both(out2, p.rev, merge.weight, merge.bias, row_ssq=ssq, norm_dim=32, norm_eps=m.norm.eps)
        assert _rel(got, ref) < SSD_TOL
        out2, ssq = mixer_both(*args, fold_norm=True, scan=_torch_scan)  # no one-pass scan: nothing to fold
        assert ssq is None and _rel(gate_merge_both(out2, p.rev, merge.weight, merge.bias), ref) < SSD_TOL
        with pytest.raises(ValueError, match="row_ssq"):
            gate_merge_both(out2, p.rev, merge.weight, merge.bias, row_ssq=torch.zeros(3, 1, device=DEVICE), norm_dim=8)


def test_block_folds_the_norm_in_inference_only_when_switched_on(monkeypatch):
    import genemamba_scvi.nn.bimamba as bimamba
    import genemamba_scvi.nn.fused as fused

    block, p, h = _tiny_block(13)
    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)  # as on a GPU with Triton and mamba-ssm
    monkeypatch.setattr(block.mixer, "resolved_backend", lambda device: "mamba_ssm")
    calls = _record_calls(monkeypatch, fused, "ssd_varlen_both", lambda *a, **k: a[4] is not None)  # gated?
    with torch.no_grad():
        monkeypatch.setattr(BiMambaBlock, "fold_norm", False)  # the default
        ref = block.mix_packed(h, p)
        monkeypatch.setattr(BiMambaBlock, "fold_norm", True)
        got = block.mix_packed(h, p)
    assert calls == [False, True] and _rel(got, ref) < SSD_TOL  # dt at the token in both; the gate with the fold
    block.mix_packed(h, p).sum().backward()  # with gradients: ssd_varlen and the gated-norm pass
    assert len(calls) == 2


# ----------------------------------------------------------------------------------------------------
# The merge, the residual add and the next block's norm in one pass (inference)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bmm", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_gate_merge_add_norm_equals_the_merge_then_the_residual_add_then_rmsnorm(monkeypatch, scaled, bmm):
    from genemamba_scvi.nn import fused_merge
    from genemamba_scvi.nn.fused import gate_merge_add_norm, gate_merge_both

    monkeypatch.setattr(fused_merge, "_MERGE_BMM", bmm)

    torch.manual_seed(14)
    p = _pack()
    T, d = p.n_tokens, 24  # d not a power of two: the masked channels must not enter the norm
    out2 = torch.randn(2 * T, d, device=DEVICE)
    weight, bias = torch.randn(d, 2 * d, device=DEVICE) / d**0.5, torch.randn(d, device=DEVICE)
    residual = torch.randn(T, d, device=DEVICE) * 3
    w_norm = torch.rand(d, device=DEVICE) + 0.5
    kw = dict(row_ssq=torch.rand(2 * T, 3, device=DEVICE) * 40, norm_dim=40, norm_eps=1e-5) if scaled else {}
    tol = 5e-3 if CUDA else 1e-5
    with torch.no_grad():
        r_want = residual + gate_merge_both(out2, p.rev, weight, bias, **kw)
        h_want = r_want * torch.rsqrt(r_want.square().mean(-1, keepdim=True) + 1e-6) * w_norm
        r, h = gate_merge_add_norm(out2, p.rev, weight, bias, residual, w_norm, eps=1e-6, **kw)
        assert r.dtype == torch.float32 and _rel(r, r_want) < tol and _rel(h, h_want) < tol
        r2, none = gate_merge_add_norm(out2, p.rev, weight, bias, residual, None, **kw)  # after the last block
        assert none is None and _rel(r2, r_want) < tol
        with pytest.raises(ValueError, match="residual must be"):
            gate_merge_add_norm(out2, p.rev, weight, bias, residual[1:], w_norm)


def test_encoder_inference_merges_adds_and_normalises_in_one_pass(monkeypatch):
    """Two blocks, as on a GPU with mamba-ssm (its fused add + norm replaced by the same function in torch): the
    one-pass merge + add + norm gives the encoder's output of the merge followed by the add + norm."""
    import genemamba_scvi.nn.bimamba as bimamba
    import genemamba_scvi.nn.encoder as encoder_mod
    from genemamba_scvi.nn import GeneMambaEncoder
    from genemamba_scvi.nn.mamba2 import Mamba2Mixer

    def rms_norm_fn(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
        r = x.float() if residual is None else x.float() + residual.float()
        h = (r * torch.rsqrt(r.square().mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
        return (h, r) if prenorm else h

    real_ops = encoder_mod.load_mamba_ssm_ops
    monkeypatch.setattr(encoder_mod, "load_mamba_ssm_ops", lambda: {**real_ops(), "rms_norm_fn": rms_norm_fn})
    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(Mamba2Mixer, "resolved_backend", lambda self, device=None: "mamba_ssm")
    torch.manual_seed(15)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=2, chunk_size=8, n_layers=2, backend="torch")
    enc = GeneMambaEncoder(50, config=cfg).to(DEVICE).eval()
    enc.fused_add_norm = True  # as on CUDA with mamba-ssm
    calls = _record_calls(monkeypatch, bimamba, "gate_merge_add_norm")
    lens = torch.tensor([5, 1, 17, 9])
    tokens = torch.randint(1, 50, (int(lens.sum()),), device=DEVICE)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE)
    with torch.no_grad():
        monkeypatch.setattr(BiMambaBlock, "merge_add_norm", False)
        ref = enc.forward_packed(tokens, cu)
        assert not calls
        monkeypatch.setattr(BiMambaBlock, "merge_add_norm", True)  # the default
        got = enc.forward_packed(tokens, cu)
    assert len(calls) == 2 and _rel(got, ref) < (5e-3 if CUDA else 1e-5)


def test_encoder_training_with_split_scans_plans_once_per_batch(monkeypatch):
    """A packed training step with long cells split (``_SSD_SPLIT_ROWS``): one plan for the batch's two layers,
    the outputs and every parameter gradient of the unsplit step."""
    import genemamba_scvi.nn.bimamba as bimamba
    import genemamba_scvi.nn.fused_ssd as fused_ssd
    from genemamba_scvi.nn import GeneMambaEncoder
    from genemamba_scvi.nn.mamba2 import Mamba2Mixer

    monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(Mamba2Mixer, "resolved_backend", lambda self, device=None: "mamba_ssm")
    torch.manual_seed(18)
    cfg = GeneMambaConfig(d_model=16, d_state=16, headdim=16, expand=4, chunk_size=16, n_layers=2, backend="torch")
    enc = GeneMambaEncoder(50, config=cfg).to(DEVICE)
    plans = _record_calls(monkeypatch, fused_ssd, "ssd_split_plan")
    lens = torch.tensor([60, 3, 0, 41])
    tokens = torch.randint(1, 50, (int(lens.sum()),), device=DEVICE)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(DEVICE)
    results = []
    for rows in (None, 16):
        monkeypatch.setattr(fused_ssd, "_SSD_SPLIT_ROWS", rows)
        enc.zero_grad()
        out = enc.forward_packed(tokens, cu)
        (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None]))
    assert len(plans) == 1  # built by the first layer, read by the second
    (ref, ref_grads), (got, got_grads) = results
    assert _rel(got, ref) < SSD_TOL
    assert len(got_grads) == len(ref_grads) and all(_rel(a, b) < SSD_TOL for a, b in zip(got_grads, ref_grads))


@pytest.mark.parametrize("width", [5, 130])
def test_rev_rows_backward_is_the_same_gather_as_autograds_scatter_add(width, monkeypatch):
    """Wide rows take the gather backward (``_RevRows``), narrow ones autograd's scatter-add; both give the same."""
    from genemamba_scvi.nn import fused
    from genemamba_scvi.nn.fused import rev_rows

    calls = _record_calls(monkeypatch, fused._RevRows, "apply")
    p = _pack()
    assert torch.equal(p.rev.index_select(0, p.rev), torch.arange(p.n_tokens, device=DEVICE))  # an involution
    x = torch.randn(p.n_tokens, width, device=DEVICE, requires_grad=True)
    g = torch.randn(p.n_tokens, width, device=DEVICE)
    (got,) = torch.autograd.grad((rev_rows(x, p.rev) * g).sum(), x)
    (want,) = torch.autograd.grad((x.index_select(0, p.rev) * g).sum(), x)
    assert torch.equal(rev_rows(x, p.rev), x.index_select(0, p.rev)) and torch.equal(got, want)
    assert len(calls) == 2 * (width >= fused._REV_GATHER_MIN_WIDTH)  # two rev_rows calls above


def test_small_batches_run_one_head_per_ssd_program(monkeypatch):
    """Below ``_SSD_MIN_PROGRAMS`` programs the scan takes one head per program (same function)."""
    import genemamba_scvi.nn.fused_ssd as fused_ssd

    used = []
    real = fused_ssd._ssd_kernels()

    class Spy:
        def __getattr__(self, name):
            used.append(name)
            return getattr(real, name)

    monkeypatch.setattr(fused_ssd, "_ssd_kernels", lambda: Spy())
    monkeypatch.setitem(fused_ssd.SSD_FWD_CONFIG, "heads", 4)
    torch.manual_seed(16)
    H, P, N = 4, 16, 16
    p = _pack([7, 20, 3])
    xbc = torch.randn(p.n_tokens, H * P + 2 * N, device=DEVICE)
    dt, A = torch.randn(p.n_tokens, H, device=DEVICE), -torch.rand(H, device=DEVICE) - 0.5
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N)
    with torch.no_grad():
        y4 = fused_ssd.ssd_varlen(xbc, dt, A, p.cu_seqlens, p.seq_idx, **kw)  # 1 x 3 programs, no threshold
        monkeypatch.setattr(fused_ssd, "_SSD_MIN_PROGRAMS", 4)
        y1 = fused_ssd.ssd_varlen(xbc, dt, A, p.cu_seqlens, p.seq_idx, **kw)
    assert used == ["ssd_varlen_heads_fwd_kernel", "ssd_varlen_fwd_kernel"]
    assert _rel(y1, y4) < SSD_TOL
