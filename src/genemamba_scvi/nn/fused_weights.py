"""Every layer's low-precision weights cast once per batch, for the fused layers' GEMMs (an option, off).

Under bf16 autocast each fused layer's forward casts four fp32 parameters to bf16 for its GEMMs (``in_proj`` by
autocast, ``out_proj`` and the merge's weight and bias by the fused functions): 96 of the ~380 device operations of a
24-layer training forward, each a launch that a slow host has to issue while the GPU waits (the forward is where
the host is the bound, ``benchmarks/NOTES_throughput.md`` sections 18 and 19). :func:`cast_weights_once` casts all
of them in two launches (one concatenation, one cast) per batch into views of one buffer; the fused functions read
their weight from the batch's cache (:func:`cached_low`) and fall back to their own cast when it is absent. The
gradients still reach the fp32 parameters: the cached copies carry none, each function returns its weight's
gradient itself (:class:`_LowLinear` for ``in_proj``). Written for this package.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["cached_low", "cast_weights_once", "linear_low"]

#: Cast every fused layer's GEMM weights once per batch (see the module). Built in session 15 on the CPU for the
#: launch-bound forward of slow hosts; not measured on a GPU yet: off.
_WEIGHTS_ONCE = False


def cast_weights_once(params: Any, dtype: torch.dtype | None) -> dict[int, torch.Tensor]:
    """``{id(p): p cast to dtype}`` for the given parameters: views of one flat buffer, made without gradient.

    Empty when the option is off, ``dtype`` is None, fewer than two parameters are given, or they differ in dtype or
    device, or already have ``dtype`` (nothing to cast).
    """
    if not _WEIGHTS_ONCE or dtype is None:  # (before walking the parameters: this runs on every batch)
        return {}
    ps = list({id(p): p for p in params if p is not None}.values())
    if len(ps) < 2:
        return {}
    if len({(p.dtype, p.device) for p in ps}) != 1 or ps[0].dtype == dtype or not ps[0].is_floating_point():
        return {}
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in ps]).to(dtype)
    out, start = {}, 0
    for p in ps:
        out[id(p)] = flat[start : start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def cached_low(cache: dict | None, p: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``p`` in ``dtype`` from the batch's cache (``cache["w_low"]``) when it holds it, else None."""
    if cache is None or p is None:
        return None
    w = cache.get("w_low", {}).get(id(p))
    return w if w is not None and w.dtype == dtype and w.shape == p.shape else None


class _LowLinear(torch.autograd.Function):
    """``F.linear`` in the low dtype with given casts of the weight and bias; gradients to the fp32 parameters."""

    @staticmethod
    def forward(ctx, x, weight, bias, w_low, b_low):
        x_low = x.to(w_low.dtype)
        ctx.save_for_backward(x_low, w_low)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return F.linear(x_low, w_low, b_low)

    @staticmethod
    def backward(ctx, g):
        x_low, w_low = ctx.saved_tensors
        g = g.to(w_low.dtype)
        g2 = g.reshape(-1, g.shape[-1])
        dx = (g @ w_low).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        dw = (g2.t() @ x_low.reshape(-1, x_low.shape[-1])).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        db = g2.sum(0).to(ctx.b_dtype) if ctx.b_dtype is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def linear_low(x: torch.Tensor, linear: torch.nn.Linear, cache: dict | None) -> torch.Tensor:
    """``linear(x)`` as autocast would compute it, with the weight's cast taken from the batch's cache.

    Without a cached weight (the option off, no autocast, another dtype), exactly ``linear(x)``.
    """
    if not (cache and cache.get("w_low")):  # nothing cast for this batch (the option off): no autocast queries
        return linear(x)
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    w_low = cached_low(cache, linear.weight, dtype) if dtype is not None else None
    if w_low is None:
        return linear(x)
    b_low = None
    if linear.bias is not None:
        b_low = cached_low(cache, linear.bias, dtype)
        b_low = b_low if b_low is not None else linear.bias.to(dtype)
    return _LowLinear.apply(x, linear.weight, linear.bias, w_low, b_low)
