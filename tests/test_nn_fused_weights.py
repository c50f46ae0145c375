"""Every layer's GEMM weights cast once per batch (``nn.fused_weights``, an option): the same values and
gradients as the per-layer casts, read where the cache holds them."""

from __future__ import annotations

import pytest
import torch

from genemamba_scvi.nn import fused_weights

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def test_cast_weights_once_gives_views_of_one_buffer_equal_to_each_cast(monkeypatch):
    monkeypatch.setattr(fused_weights, "_WEIGHTS_ONCE", True)
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in ((3, 4), (5,), (2, 2, 2))]
    got = fused_weights.cast_weights_once([ps[0], None, ps[1], ps[2], ps[0]], torch.bfloat16)
    assert set(got) == {id(p) for p in ps}  # None skipped, a repeated parameter cast once
    for p in ps:
        w = got[id(p)]
        assert w.dtype == torch.bfloat16 and w.shape == p.shape and not w.requires_grad
        assert torch.equal(w, p.detach().to(torch.bfloat16))
    assert len({w.untyped_storage().data_ptr() for w in got.values()}) == 1
    assert fused_weights.cached_low({"w_low": got}, ps[1], torch.bfloat16) is got[id(ps[1])]
    assert fused_weights.cached_low({"w_low": got}, ps[1], torch.float16) is None  # another dtype: no
    assert fused_weights.cached_low({}, ps[1], torch.bfloat16) is None
    assert fused_weights.cast_weights_once(ps, torch.float32) == {}  # nothing to cast
    assert fused_weights.cast_weights_once([ps[0], ps[1].double()], torch.bfloat16) == {}  # mixed dtypes
    monkeypatch.setattr(fused_weights, "_WEIGHTS_ONCE", False)
    assert fused_weights.cast_weights_once(ps, torch.bfloat16) == {}


@pytest.mark.parametrize("bias", [True, False])
def test_linear_low_equals_autocast_linear_with_gradients(monkeypatch, bias):
    """With the weight's cast from the cache, ``linear_low`` gives autocast's ``linear(x)``: the same bf16 output and
    the same fp32 gradients of the input, weight and bias; without a cache entry it is ``linear(x)`` itself."""
    monkeypatch.setattr(fused_weights, "_WEIGHTS_ONCE", True)
    torch.manual_seed(1)
    lin = torch.nn.Linear(12, 7, bias=bias).to(DEVICE)
    x = torch.randn(2, 5, 12, device=DEVICE)
    g = torch.randn(2, 5, 7, device=DEVICE)
    results = []
    for use_cache in (False, True):
        x1 = x.clone().requires_grad_(True)
        lin.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            cache = {"w_low": fused_weights.cast_weights_once(lin.parameters(), torch.bfloat16)} if use_cache else {}
            if use_cache and not bias:  # one parameter: nothing to batch, so cast it here
                cache = {"w_low": {id(lin.weight): lin.weight.detach().to(torch.bfloat16)}}
            out = fused_weights.linear_low(x1, lin, cache)
        (out.float() * g).sum().backward()
        results.append((out, x1.grad, [p.grad for p in lin.parameters()]))
    (o1, dx1, dp1), (o2, dx2, dp2) = results
    assert o2.dtype == torch.bfloat16 and torch.equal(o1, o2)
    assert torch.equal(dx1, dx2) and dx2.dtype == torch.float32
    for a, b in zip(dp1, dp2):
        assert b.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.usefixtures("triton_bounds")
def test_weights_once_leave_the_fused_training_step_bit_identical(monkeypatch):
    """The encoder's training step on the fused path under bf16 autocast (forced on under Triton's interpreter on a
    CPU): with the option on, every layer's ``in_proj`` and merge read their casts from the batch's cache, and the
    output and every parameter gradient are bit-identical to the per-layer casts'."""
    pytest.importorskip("triton")
    from genemamba_scvi.nn import GeneMambaEncoder, bimamba, fused_merge
    from genemamba_scvi.nn import encoder as encoder_mod

    if not CUDA:
        real = encoder_mod.load_mamba_ssm_ops
        monkeypatch.setattr(encoder_mod, "load_mamba_ssm_ops", lambda: {**real(), "rms_norm_fn": object()})
        monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(bimamba, "_FUSED_FAILED", {})
    hits = {"linear": 0, "merge": 0}
    real_low, real_cached = fused_weights._LowLinear.apply, fused_merge.cached_low

    def low(*a):
        hits["linear"] += 1
        return real_low(*a)

    def cached(cache, p, dtype):
        w = real_cached(cache, p, dtype)
        hits["merge"] += w is not None
        return w

    monkeypatch.setattr(fused_weights._LowLinear, "apply", low)
    monkeypatch.setattr(fused_merge, "cached_low", cached)
    torch.manual_seed(9)
    backend = "auto" if CUDA else "torch"
    enc = GeneMambaEncoder(200, backend=backend, d_model=32, n_layers=2, chunk_size=16, d_state=16, headdim=16)
    enc = enc.to(DEVICE)
    enc.fused_add_norm = True
    cu = torch.tensor([0, 15, 22, 31, 32, 62], device=DEVICE)
    tokens = torch.randint(3, 200, (62,), device=DEVICE)
    g = torch.randn(62, 32, device=DEVICE)
    outs = []
    for on in (False, True):
        monkeypatch.setattr(fused_weights, "_WEIGHTS_ONCE", on)
        enc.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            h = enc.forward_packed(tokens, cu)
        (h.float() * g).sum().backward()
        outs.append((h.detach(), {n: q.grad.clone() for n, q in enc.named_parameters() if q.grad is not None}))
        if not on:
            assert hits == {"linear": 0, "merge": 0}
    assert bimamba._FUSED_FAILED == {}
    assert hits["linear"] == 2 and hits["merge"] == 4  # two layers: in_proj; the merge's weight and bias
    (h1, g1), (h2, g2) = outs
    assert torch.equal(h1, h2)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        assert torch.equal(g1[n], g2[n]), n
