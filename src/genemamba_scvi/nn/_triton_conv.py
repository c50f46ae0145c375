"""Triton kernels of the convolution backward with two-dimensional tiles (:mod:`genemamba_scvi.nn.fused`).

``conv_both_bwd_pre2d_kernel`` computes what ``_triton_bimamba.conv_both_bwd_pre_kernel`` computes (the
pre-activation gradient of both directions, stored by anchor, and partial dW / db) with one ``[rows, channels]``
tile per tap and per tap's weight-gradient accumulator, instead of one ``[rows, channels, taps]`` tile. The
three-dimensional tile's reductions and broadcasts over its last axis of 4 cost layout conversions in every row
block; the forward kernels, which are two-dimensional, run near the memory floor while the 3-D backward ran at
about 7x its floor on an H200 (``benchmarks/NOTES_throughput.md``, section 10). Taps: up to 4 (Mamba-2's
``d_conv``); :mod:`genemamba_scvi.nn.fused` falls back to the 3-D kernel for more. Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

from genemamba_scvi.nn._triton_bimamba import _anchor, _silu_grad, _tap, _token_block

# fmt: off


@triton.jit
def _w_col(w_ptr, cols, cmask, stride_w, m: tl.constexpr, K: tl.constexpr):
    """Weight of tap distance ``m``, ``w[:, K - 1 - m]`` (fp32); zeros when ``m >= K``."""
    if m < K:
        return tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)
    else:
        return tl.zeros(cols.shape, dtype=tl.float32)


@triton.jit
def _tap_weights(w_ptr, b_ptr, C, stride_w, K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """The program's channel block: columns, mask, weights by tap distance ``m = 0..3`` and bias (fp32).

    The bias is zeros without one. Distance ``m`` is weight column ``K - 1 - m``; a distance past the last tap
    has zero weight and no load.
    """
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    w0 = _w_col(w_ptr, cols, cmask, stride_w, 0, K)
    w1 = _w_col(w_ptr, cols, cmask, stride_w, 1, K)
    w2 = _w_col(w_ptr, cols, cmask, stride_w, 2, K)
    return cols, cmask, w0, w1, w2, _w_col(w_ptr, cols, cmask, stride_w, 3, K), bias


@triton.jit
def _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc, m: tl.constexpr, K: tl.constexpr):
    """Program ``pid_r``'s partial ``dW[:, K - 1 - m]`` (tap distance ``m``): its accumulator's row sum."""
    if m < K:
        tl.store(dw_part_ptr + (pid_r * C + cols) * K + (K - 1 - m), tl.sum(acc, axis=0), mask=cmask)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_pre2d_kernel(x_ptr, w_ptr, b_ptr, rev_ptr, seq_ptr, dout_ptr, dpre_ptr, dw_part_ptr, db_part_ptr,
    T, C, stride_x, stride_w, stride_dout, K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_ITERS: tl.constexpr
):
    """Pre-activation gradient of every row (stored by anchor, ``[2T, C]``) and partial dW, db; ``K <= 4``.

    Tap ``m`` of a row (token ``anchor - m``, or ``anchor + m`` for a reversed row) meets weight column
    ``K - 1 - m``; its values stay in registers between the recomputed pre-activation and the weight gradient.
    """
    pid_r = tl.program_id(0)
    cols, cmask, w0, w1, w2, w3, bias = _tap_weights(w_ptr, b_ptr, C, stride_w, K, HAS_BIAS, BLOCK_C)
    zero = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    acc_b, acc0, acc1, acc2, acc3 = zero, zero, zero, zero, zero  # (immutable values: each += rebinds)
    for it in range(ROW_ITERS):
        rows = (pid_r * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < 2 * T
        mask2 = rmask[:, None] & cmask[None, :]
        anchor, is_rev = _anchor(rows, T, rev_ptr, rmask)
        cell = tl.load(seq_ptr + anchor, mask=rmask, other=-1)
        x0 = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, 0, rmask, cols, cmask, T, stride_x)
        pre = x0 * w0[None, :] + bias[None, :]
        x1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        x2 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        x3 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        if K > 1:
            x1 = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, 1, rmask, cols, cmask, T, stride_x)
            pre += x1 * w1[None, :]
        if K > 2:
            x2 = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, 2, rmask, cols, cmask, T, stride_x)
            pre += x2 * w2[None, :]
        if K > 3:
            x3 = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, 3, rmask, cols, cmask, T, stride_x)
            pre += x3 * w3[None, :]
        g = tl.load(dout_ptr + rows.to(tl.int64)[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(
            tl.float32
        )
        if SILU:
            g = _silu_grad(g, pre)
        g = tl.where(mask2, g, 0.0)
        dst = (tl.where(is_rev, T, 0) + anchor).to(tl.int64)
        tl.store(dpre_ptr + dst[:, None] * C + cols[None, :], g.to(dpre_ptr.dtype.element_ty), mask=mask2)
        acc_b += g
        acc0 += g * x0
        if K > 1:
            acc1 += g * x1
        if K > 2:
            acc2 += g * x2
        if K > 3:
            acc3 += g * x3
    tl.store(db_part_ptr + pid_r * C + cols, tl.sum(acc_b, axis=0), mask=cmask)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc0, 0, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc1, 1, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc2, 2, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc3, 3, K)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_dx_bounds_kernel(w_ptr, seq_ptr, cu_ptr, dpre_ptr, dx_ptr, T, C, stride_w, stride_dx,
    K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """``_triton_bimamba.conv_both_bwd_dx_kernel`` with each token's cell bounds ``[s, e)`` read once.

    ``dx[u] = sum_m w[K-1-m] (dpre_fwd[u+m] + dpre_rev[u-m])`` over ``u + m < e`` and ``u - m >= s``: two dependent
    loads per token (cell id, then bounds) instead of one cell-id load per tap and direction before each tap's
    gradient load, as the ``"tokens"`` forward does (``conv_both_fwd_tok_kernel``).
    """
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    tok, tm, mask, s, e, t64 = _token_block(tl.program_id(0), 0, 1, BLOCK_R, T, cmask, seq_ptr, cu_ptr)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for m in tl.static_range(K):
        wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)
        ok = tm & (tok + m < e)
        d = tl.load(dpre_ptr + (t64 + m)[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :],
                    other=0.0).to(tl.float32)
        ok = tm & (tok - m >= s)
        d += tl.load(dpre_ptr + (T + t64 - m)[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :],
                     other=0.0).to(tl.float32)
        acc += d * wv[None, :]
    tl.store(dx_ptr + t64[:, None] * stride_dx + cols[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tok_tap(x_ptr, t64, m: tl.constexpr, ok, cols, cmask, stride_x, K: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr
):
    """``x[t + m]`` (fp32) where ``ok`` (the tap inside the token's cell), else 0.

    Zeros without a load when the tap distance ``|m|`` is past the last tap.
    """
    if m * m < K * K:
        return tl.load(x_ptr + (t64 + m)[:, None] * stride_x + cols[None, :], mask=ok[:, None] & cmask[None, :],
                       other=0.0).to(tl.float32)
    else:
        return tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_pre_tok2d_kernel(x_ptr, w_ptr, b_ptr, seq_ptr, cu_ptr, dout_ptr, dpre_ptr, dw_part_ptr,
    db_part_ptr, T, C, stride_x, stride_w, stride_dout, K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_ITERS: tl.constexpr
):
    """``conv_both_bwd_pre2d_kernel`` by token: both rows of each token of a block, ``[tokens, channels]`` tiles.

    Token ``t`` of cell ``[s, e)`` anchors its forward row ``t`` (taps ``x[t - m]``, inside when ``t - m >= s``)
    and its reversed row ``T + s + e - 1 - t`` (taps ``x[t + m]``, inside when ``t + m < e``): the cell's bounds
    are read once per token (as ``conv_both_fwd_tok_kernel`` and ``conv_both_bwd_dx_bounds_kernel``) instead of a
    reversal index per row and a cell id per tap, the centre tap is loaded once for both rows, and ``dpre`` is
    stored by anchor (rows ``t`` and ``T + t``, contiguous). Tap distance ``m`` meets weight column
    ``K - 1 - m`` in both directions, so one accumulator per tap takes both rows' terms. ``K <= 4``.
    """
    pid_r = tl.program_id(0)
    cols, cmask, w0, w1, w2, w3, bias = _tap_weights(w_ptr, b_ptr, C, stride_w, K, HAS_BIAS, BLOCK_C)
    zero = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    acc_b, acc0, acc1, acc2, acc3 = zero, zero, zero, zero, zero  # (immutable values: each += rebinds)
    for it in range(ROW_ITERS):
        tok, tm, mask2, s, e, t64 = _token_block(pid_r, it, ROW_ITERS, BLOCK_R, T, cmask, seq_ptr, cu_ptr)
        x0 = _tok_tap(x_ptr, t64, 0, tm, cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xf1 = _tok_tap(x_ptr, t64, -1, tm & (tok - 1 >= s), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xf2 = _tok_tap(x_ptr, t64, -2, tm & (tok - 2 >= s), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xf3 = _tok_tap(x_ptr, t64, -3, tm & (tok - 3 >= s), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xr1 = _tok_tap(x_ptr, t64, 1, tm & (tok + 1 < e), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xr2 = _tok_tap(x_ptr, t64, 2, tm & (tok + 2 < e), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        xr3 = _tok_tap(x_ptr, t64, 3, tm & (tok + 3 < e), cols, cmask, stride_x, K, BLOCK_R, BLOCK_C)
        centre = x0 * w0[None, :] + bias[None, :]
        pre_f = centre + xf1 * w1[None, :] + xf2 * w2[None, :] + xf3 * w3[None, :]
        pre_r = centre + xr1 * w1[None, :] + xr2 * w2[None, :] + xr3 * w3[None, :]
        r64 = (T + s + e - 1 - tok).to(tl.int64)  # the reversed row anchored at t
        g_f = tl.load(dout_ptr + t64[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        g_r = tl.load(dout_ptr + r64[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        if SILU:
            g_f = _silu_grad(g_f, pre_f)
            g_r = _silu_grad(g_r, pre_r)
        g_f = tl.where(mask2, g_f, 0.0)
        g_r = tl.where(mask2, g_r, 0.0)
        tl.store(dpre_ptr + t64[:, None] * C + cols[None, :], g_f.to(dpre_ptr.dtype.element_ty), mask=mask2)
        tl.store(dpre_ptr + (T + t64)[:, None] * C + cols[None, :], g_r.to(dpre_ptr.dtype.element_ty), mask=mask2)
        acc_b += g_f + g_r
        acc0 += (g_f + g_r) * x0
        acc1 += g_f * xf1 + g_r * xr1
        acc2 += g_f * xf2 + g_r * xr2
        acc3 += g_f * xf3 + g_r * xr3
    tl.store(db_part_ptr + pid_r * C + cols, tl.sum(acc_b, axis=0), mask=cmask)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc0, 0, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc1, 1, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc2, 2, K)
    _store_dw_col(dw_part_ptr, pid_r, C, cols, cmask, acc3, 3, K)
