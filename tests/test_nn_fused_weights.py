"""Every layer's GEMM weights cast once per batch (``nn.fused_weights``, an option): the same values and
gradients as the per-layer casts, read where the cache holds them."""

from __future__ import annotations

import pytest
import torch

from fused_steps import fused_encoder_two_ways
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
    output and every parameter gradient are bit-identical to the per-layer casts' (on a GPU: the output bit for
    bit, the gradients to fp32 rounding, as atomically summed gradients vary from run to run there)."""
    pytest.importorskip("triton")
    from genemamba_scvi.nn import fused_merge

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

    def once(enc, on):
        if on:  # the step with the option off read nothing from the cache
            assert hits == {"linear": 0, "merge": 0}
        monkeypatch.setattr(fused_weights, "_WEIGHTS_ONCE", on)

    (h1, g1), (h2, g2) = fused_encoder_two_ways(monkeypatch, once, seed=9, autocast=True)
    assert hits["linear"] == 2 and hits["merge"] == 4  # two layers: in_proj; the merge's weight and bias
    assert torch.equal(h1, h2)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        if h1.is_cuda:  # on a GPU some gradients (dt_bias first, session 19, H100) are summed by atomics in
            # an order that varies from run to run: equal to fp32 rounding, not bit for bit
            torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6, msg=n)
        else:
            assert torch.equal(g1[n], g2[n]), n
