"""Triton kernel of the per-step ``dt`` of both directions (:func:`genemamba_scvi.nn.fused_split.dt_both`).

A training step's SSD reads ``dt`` on the two-direction row ``[cells; reversed cells]``: row ``t`` is token ``t``'s
and row ``T + t`` is token ``rev[t]``'s. Built with torch that is an ``index_select`` and a ``cat`` in the forward
and, in the backward, a zero-fill, an ``index_add_``, a slice add and a copy into the projection's gradient: five
launches a layer for a ``[T, heads]`` tensor. One kernel does each direction. Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit(do_not_specialize=["T"])
def dt_both_kernel(src_ptr, rev_ptr, dst_ptr, T, H, stride_src, stride_dst, BACKWARD: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr
):
    """Forward: ``dst[t] = src[t]``, ``dst[T + t] = src[rev[t]]`` (``src`` ``[T, H]``, ``dst`` ``[2T, H]``).

    ``BACKWARD``: ``dst[t] = src[t] + src[T + rev[t]]`` (``src`` ``[2T, H]``, ``dst`` ``[T, H]``): ``rev`` is its own
    inverse, so row ``T + rev[t]`` is the one that read token ``t``. Sums in fp32, stored in ``dst``'s dtype.
    """
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.arange(0, BLOCK_H)
    tm = t < T
    mask = tm[:, None] & (h < H)[None, :]
    t64 = t.to(tl.int64)
    r64 = tl.load(rev_ptr + t, mask=tm, other=0).to(tl.int64)
    a = tl.load(src_ptr + t64[:, None] * stride_src + h[None, :], mask=mask, other=0.0)
    if BACKWARD:
        b = tl.load(src_ptr + (T + r64)[:, None] * stride_src + h[None, :], mask=mask, other=0.0)
        out = a.to(tl.float32) + b.to(tl.float32)
        tl.store(dst_ptr + t64[:, None] * stride_dst + h[None, :], out.to(dst_ptr.dtype.element_ty), mask=mask)
    else:
        b = tl.load(src_ptr + r64[:, None] * stride_src + h[None, :], mask=mask, other=0.0)
        tl.store(dst_ptr + t64[:, None] * stride_dst + h[None, :], a.to(dst_ptr.dtype.element_ty), mask=mask)
        tl.store(dst_ptr + (T + t64)[:, None] * stride_dst + h[None, :], b.to(dst_ptr.dtype.element_ty), mask=mask)
