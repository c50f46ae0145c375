"""Triton kernels of the fused Bi-Mamba mixer (:mod:`genemamba_scvi.nn.fused`); imported lazily.

Two kernel families, both reading the *single-direction* projection ``zxbcdt`` ``[T, d_in_proj]`` of the
packed tokens and producing (or consuming) the two-direction row ``[2T, .]`` (cells, then each cell
reversed in place) without materialising the reversed copy of the projection:

- **conv_both**: the depthwise causal convolution + SiLU of Mamba-2 for both directions. Row ``r < T`` is
  token ``r`` (taps ``r, r-1, ..., r-K+1``); row ``T + j`` is the reversed-direction output whose anchor is
  token ``a = rev[j]`` (taps ``a, a+1, ..., a+K-1``: a causal convolution of the reversed cell is an
  anti-causal one of the cell). Taps outside the anchor's cell are zero (the state reset of ``seq_idx``).
  The backward writes the pre-activation gradient of both directions in token order and then sums, per
  token, the ``2K`` outputs its value fed (``conv_both_bwd_pre_kernel``, ``conv_both_bwd_dx_kernel``; the
  buffer fp32 or in the input dtype), or recomputes those ``2K`` gradients per token in one kernel with no
  buffer (``conv_both_bwd_fused_kernel``): no atomics, deterministic.
- **gated_norm_both**: Mamba-2's gated grouped RMSNorm ``RMSNorm(y * silu(z))`` (``norm_before_gate=False``)
  where row ``T + j`` takes its gate from token ``rev[j]``: the gate ``z`` is read from the projection, not
  gathered. The backward treats the two rows fed by one token together and writes ``dz`` once per token.

Written for this package (after the algorithms of Dao & Gu 2024, "Transformers are SSMs", and the
causal-conv1d / layernorm_gated kernels of mamba-ssm, which compute the same functions per direction).
Index arithmetic is int64 (rows of ``2T`` x 2192 elements pass 2^31 at ~490k tokens).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Triton kernels: argument lists kept compact.
# fmt: off


@triton.jit
def _anchor(rows, T, rev_ptr, rmask):
    """Token whose value anchors row ``rows`` of the two-direction row, and whether the row is reversed."""
    is_rev = rows >= T
    tok = tl.where(is_rev, rows - T, rows)
    rv = tl.load(rev_ptr + tok, mask=rmask & is_rev, other=0)
    anchor = tl.where(is_rev, rv, tok)
    return tl.where(rmask, anchor, 0), is_rev


@triton.jit
def _cell_bounds(seq_ptr, cu_ptr, tok, tm):
    """``[s, e)``: the bounds of each token's cell (two dependent loads a token: its cell id, then ``cu``)."""
    cell = tl.load(seq_ptr + tok, mask=tm, other=0)
    return tl.load(cu_ptr + cell, mask=tm, other=0), tl.load(cu_ptr + cell + 1, mask=tm, other=0)


@triton.jit
def _token_block(pid_r, it, ROW_ITERS: tl.constexpr, BLOCK_R: tl.constexpr, T, cmask, seq_ptr, cu_ptr):
    """Token block ``it`` of program ``pid_r``.

    Returns its tokens, their mask, the tile mask, their cells' bounds and the tokens as int64.
    """
    tok = (pid_r * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
    tm = tok < T
    s, e = _cell_bounds(seq_ptr, cu_ptr, tok, tm)
    return tok, tm, tm[:, None] & cmask[None, :], s, e, tok.to(tl.int64)


@triton.jit
def _tap(x_ptr, seq_ptr, anchor, is_rev, cell, m, rmask, cols, cmask, T, stride_x):
    """Tap ``m`` of every row (fp32): token ``anchor - m`` or ``anchor + m`` (reversed rows); 0 outside the cell."""
    u = tl.where(is_rev, anchor + m, anchor - m)
    ok = rmask & (u >= 0) & (u < T)
    ok = ok & (tl.load(seq_ptr + u, mask=ok, other=-2) == cell)
    return tl.load(x_ptr + u.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=ok[:, None] & cmask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _tap_span(x_ptr, anchor, is_rev, dist, m, rmask, cols, cmask, T, stride_x):
    """``_tap`` with the cell's extent known.

    ``dist`` is how many tokens the row's cell has before the anchor in the row's direction, so tap ``m`` is inside
    the cell when ``dist >= m``. The load does not wait for ``dist`` (it is masked to the row only); the tap is
    zeroed after: no chain of dependent loads.
    """
    u = tl.where(is_rev, anchor + m, anchor - m)
    inb = rmask & (u >= 0) & (u < T)
    xv = tl.load(x_ptr + u.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=inb[:, None] & cmask[None, :],
                 other=0.0).to(tl.float32)
    return tl.where((dist >= m)[:, None], xv, 0.0)


@triton.jit
def _conv_pre(x_ptr, w_ptr, b_ptr, seq_ptr, anchor, is_rev, rmask, cols, cmask, T, stride_x, stride_w,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Pre-activation of the convolution at rows with anchors ``anchor`` (fp32 ``[BLOCK_R, BLOCK_C]``)."""
    cell = tl.load(seq_ptr + anchor, mask=rmask, other=-1)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for m in tl.static_range(K):
        xv = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, m, rmask, cols, cmask, T, stride_x)
        wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)
        acc += xv * wv[None, :]
    return acc


@triton.jit(do_not_specialize=["T"])
def conv_both_fwd_kernel(x_ptr, w_ptr, b_ptr, rev_ptr, seq_ptr, out_ptr, T, C, stride_x, stride_w, stride_out,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < 2 * T
    cmask = cols < C
    anchor, is_rev = _anchor(rows, T, rev_ptr, rmask)
    acc = _conv_pre(x_ptr, w_ptr, b_ptr, seq_ptr, anchor, is_rev, rmask, cols, cmask, T, stride_x, stride_w, K,
        HAS_BIAS, BLOCK_R, BLOCK_C
    )
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :], acc.to(out_ptr.dtype.element_ty),
        mask=rmask[:, None] & cmask[None, :]
    )


@triton.jit
def _silu_fast(v):
    """``v * sigmoid(v)`` with ``exp2`` and an approximate division (relative error ~2^-22: below bf16's rounding)."""
    return tl.fdiv(v, 1.0 + tl.exp2(v * -1.4426950408889634), ieee_rounding=False)


@triton.jit(do_not_specialize=["T"])
def conv_both_fwd_tok_kernel(x_ptr, w_ptr, b_ptr, seq_ptr, cu_ptr, out_ptr, T, C, stride_x, stride_w, stride_out,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    LEAN: tl.constexpr = False
):
    """``conv_both`` forward by token: both output rows of each token of a block.

    Token ``t`` of cell ``[s, e)`` writes its forward row ``t`` and its reversed row ``T + s + e - 1 - t``; the two
    share the centre tap, and a tap is inside the cell when ``t - m >= s`` (forward) or ``t + m < e`` (reversed):
    the cell's bounds instead of one cell-id load per tap.

    ``LEAN`` (fewer instructions a value: the kernel is about as bound by issue as by memory): a full channel block
    whose taps all lie inside one cell (most blocks: cells have hundreds of tokens) loads them with no mask, and
    SiLU is taken by ``exp2`` and an approximate division (:func:`_silu_fast`); other blocks take the checked path.
    """
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    tok, tm, mask, s, e, t64 = _token_block(tl.program_id(0), 0, 1, BLOCK_R, T, cmask, seq_ptr, cu_ptr)
    xp = x_ptr + t64[:, None] * stride_x + cols[None, :]
    w_c = tl.load(w_ptr + cols * stride_w + (K - 1), mask=cmask, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    inside = False
    if LEAN:
        t0 = tl.program_id(0) * BLOCK_R
        first = tl.load(seq_ptr + t0)
        last = tl.load(seq_ptr + tl.minimum(t0 + BLOCK_R - 1, T - 1))
        inside = (first == last) & (t0 + BLOCK_R - 1 < T) & ((tl.program_id(1) + 1) * BLOCK_C <= C)
        inside = inside & (t0 - (K - 1) >= tl.load(cu_ptr + first))
        inside = inside & (t0 + BLOCK_R - 1 + (K - 1) < tl.load(cu_ptr + first + 1))
    if inside:  # every tap of every token inside the block's one cell, every channel in range: no masks
        acc_f = tl.load(xp).to(tl.float32) * w_c[None, :] + bias[None, :]
        acc_r = acc_f
        for m in tl.static_range(1, K):
            wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m)).to(tl.float32)[None, :]
            acc_f += tl.load(xp - m * stride_x).to(tl.float32) * wv
            acc_r += tl.load(xp + m * stride_x).to(tl.float32) * wv
    else:
        acc_f = tl.load(xp, mask=mask, other=0.0).to(tl.float32) * w_c[None, :] + bias[None, :]
        acc_r = acc_f
        for m in tl.static_range(1, K):
            wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)[None, :]
            ok = tm & (tok - m >= s)
            acc_f += tl.load(x_ptr + (t64 - m)[:, None] * stride_x + cols[None, :],
                             mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32) * wv
            ok = tm & (tok + m < e)
            acc_r += tl.load(x_ptr + (t64 + m)[:, None] * stride_x + cols[None, :],
                             mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32) * wv
    if SILU:
        if LEAN:
            acc_f = _silu_fast(acc_f)
            acc_r = _silu_fast(acc_r)
        else:
            acc_f = acc_f * tl.sigmoid(acc_f)
            acc_r = acc_r * tl.sigmoid(acc_r)
    tl.store(out_ptr + t64[:, None] * stride_out + cols[None, :], acc_f.to(out_ptr.dtype.element_ty), mask=mask)
    r64 = (T + s + e - 1 - tok).to(tl.int64)
    tl.store(out_ptr + r64[:, None] * stride_out + cols[None, :], acc_r.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_tile(w_ptr, b_ptr, C, stride_w, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr
):
    """Channel block of a pre-activation-gradient program.

    Returns its columns, their mask, the tap slots, the ``[BLOCK_C, KP]`` weight tile (slot ``k`` holds ``w[:, k]``)
    and the bias (fp32).
    """
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    taps = tl.arange(0, KP)
    w3 = tl.load(w_ptr + cols[:, None] * stride_w + taps[None, :], mask=cmask[:, None] & (taps < K)[None, :],
                 other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return cols, cmask, taps, w3, bias


@triton.jit
def _store_dw_db(dw_part_ptr, db_part_ptr, pid_r, C, cols, cmask, taps, acc_w, acc_b, K: tl.constexpr):
    """Program ``pid_r``'s partial db and dW: the row sums of its ``[rows, BLOCK_C(, KP)]`` accumulators."""
    tl.store(db_part_ptr + pid_r * C + cols, tl.sum(acc_b, axis=0), mask=cmask)
    dw = tl.sum(acc_w, axis=0)  # [BLOCK_C, KP]
    tl.store(dw_part_ptr + (pid_r * C + cols)[:, None] * K + taps[None, :], dw,
             mask=cmask[:, None] & (taps < K)[None, :])


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_pre_kernel(x_ptr, w_ptr, b_ptr, rev_ptr, seq_ptr, dout_ptr, dpre_ptr, dw_part_ptr, db_part_ptr, T,
    C, stride_x, stride_w, stride_dout, lo_ptr, hi_ptr, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_ITERS: tl.constexpr, SPAN: tl.constexpr
):
    """Pre-activation gradient of every row, stored by anchor (``[2T, C]``), and partial dW, db.

    ``dpre`` is fp32 or the dtype of ``x`` (the store casts); dW and db are summed from the fp32 gradient.

    Each program walks ``ROW_ITERS`` row blocks of one channel block. The ``K`` taps of a row are loaded once
    into a ``[rows, channels, KP]`` tile that serves both the recomputed pre-activation and the weight
    gradient; the row sums of dW and db are taken once per program, not once per row block.

    ``SPAN``: the cell checks read ``lo[t]`` / ``hi[t]`` (tokens of ``t``'s cell before / after it) at the anchor
    instead of one cell-id load per tap (``_tap_span``).
    """
    pid_r = tl.program_id(0)
    cols, cmask, taps, w3, bias = _bwd_tile(w_ptr, b_ptr, C, stride_w, K, KP, HAS_BIAS, BLOCK_C)
    acc_w = tl.zeros((BLOCK_R, BLOCK_C, KP), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for it in range(ROW_ITERS):
        rows = (pid_r * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < 2 * T
        mask2 = rmask[:, None] & cmask[None, :]
        anchor, is_rev = _anchor(rows, T, rev_ptr, rmask)
        xs = tl.zeros((BLOCK_R, BLOCK_C, KP), dtype=tl.float32)
        if SPAN:
            lo = tl.load(lo_ptr + anchor, mask=rmask & (rows < T), other=0)
            hi = tl.load(hi_ptr + anchor, mask=rmask & (rows >= T), other=0)
            dist = tl.where(rmask, tl.where(is_rev, hi, lo), -1)
            for m in tl.static_range(K):
                xv = _tap_span(x_ptr, anchor, is_rev, dist, m, rmask, cols, cmask, T, stride_x)
                xs += xv[:, :, None] * (taps == K - 1 - m).to(tl.float32)[None, None, :]
        else:
            cell = tl.load(seq_ptr + anchor, mask=rmask, other=-1)
            for m in tl.static_range(K):
                xv = _tap(x_ptr, seq_ptr, anchor, is_rev, cell, m, rmask, cols, cmask, T, stride_x)
                xs += xv[:, :, None] * (taps == K - 1 - m).to(tl.float32)[None, None, :]
        g = tl.load(dout_ptr + rows.to(tl.int64)[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(
            tl.float32
        )
        g = _dpre_rows(xs, w3, bias, g, mask2, SILU)
        dst = (tl.where(is_rev, T, 0) + anchor).to(tl.int64)
        tl.store(dpre_ptr + dst[:, None] * C + cols[None, :], g.to(dpre_ptr.dtype.element_ty), mask=mask2)
        acc_b += g
        acc_w += g[:, :, None] * xs
    _store_dw_db(dw_part_ptr, db_part_ptr, pid_r, C, cols, cmask, taps, acc_w, acc_b, K)


@triton.jit
def _silu_grad(g, pre):
    """Gradient through SiLU at pre-activation ``pre``: ``g * silu'(pre)``, ``silu' = s (1 + pre (1 - s))``."""
    s = tl.sigmoid(pre)
    return g * s * (1.0 + pre * (1.0 - s))


@triton.jit
def _dpre_rows(xs, w3, bias, g, mask2, SILU: tl.constexpr):
    """Pre-activation gradient (fp32, 0 outside ``mask2``) of rows whose taps are ``xs`` and output gradient ``g``."""
    if SILU:
        g = _silu_grad(g, tl.sum(xs * w3[None, :, :], axis=2) + bias[None, :])
    return tl.where(mask2, g, 0.0)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_pre_tok_kernel(x_ptr, w_ptr, b_ptr, seq_ptr, cu_ptr, dout_ptr, dpre_ptr, dw_part_ptr, db_part_ptr,
    T, C, stride_x, stride_w, stride_dout, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_ITERS: tl.constexpr
):
    """``conv_both_bwd_pre_kernel`` by token: both rows of each token of a block (the ``"tokens"`` backward).

    Token ``t`` of cell ``[s, e)`` anchors its forward row ``t`` (taps ``t - m``) and its reversed row
    ``T + s + e - 1 - t`` (taps ``t + m``); the centre tap is loaded once for both and taps are checked against the
    cell's bounds (as ``conv_both_fwd_tok_kernel``). Gradients are stored by anchor (``dpre[t]``, ``dpre[T + t]``),
    the layout ``conv_both_bwd_dx_kernel`` reads.
    """
    pid_r = tl.program_id(0)
    cols, cmask, taps, w3, bias = _bwd_tile(w_ptr, b_ptr, C, stride_w, K, KP, HAS_BIAS, BLOCK_C)
    acc_w = tl.zeros((BLOCK_R, BLOCK_C, KP), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for it in range(ROW_ITERS):
        tok, tm, mask2, s, e, t64 = _token_block(pid_r, it, ROW_ITERS, BLOCK_R, T, cmask, seq_ptr, cu_ptr)
        x0 = tl.load(x_ptr + t64[:, None] * stride_x + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        slot = (taps == K - 1).to(tl.float32)[None, None, :]
        xs_f = x0[:, :, None] * slot
        xs_r = x0[:, :, None] * slot
        for m in tl.static_range(1, K):
            slot = (taps == K - 1 - m).to(tl.float32)[None, None, :]
            ok = tm & (tok - m >= s)
            xv = tl.load(x_ptr + (t64 - m)[:, None] * stride_x + cols[None, :], mask=ok[:, None] & cmask[None, :],
                         other=0.0).to(tl.float32)
            xs_f += xv[:, :, None] * slot
            ok = tm & (tok + m < e)
            xv = tl.load(x_ptr + (t64 + m)[:, None] * stride_x + cols[None, :], mask=ok[:, None] & cmask[None, :],
                         other=0.0).to(tl.float32)
            xs_r += xv[:, :, None] * slot
        r64 = (T + s + e - 1 - tok).to(tl.int64)  # the reversed row anchored at t
        g_f = tl.load(dout_ptr + t64[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        g_r = tl.load(dout_ptr + r64[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        g_f = _dpre_rows(xs_f, w3, bias, g_f, mask2, SILU)
        g_r = _dpre_rows(xs_r, w3, bias, g_r, mask2, SILU)
        tl.store(dpre_ptr + t64[:, None] * C + cols[None, :], g_f.to(dpre_ptr.dtype.element_ty), mask=mask2)
        tl.store(dpre_ptr + (T + t64)[:, None] * C + cols[None, :], g_r.to(dpre_ptr.dtype.element_ty), mask=mask2)
        acc_b += g_f + g_r
        acc_w += g_f[:, :, None] * xs_f + g_r[:, :, None] * xs_r
    _store_dw_db(dw_part_ptr, db_part_ptr, pid_r, C, cols, cmask, taps, acc_w, acc_b, K)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_dx_kernel(w_ptr, seq_ptr, dpre_ptr, dx_ptr, T, C, stride_w, stride_dx, K: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    """``dx[u] = sum_m w[K-1-m] (dpre_fwd[u+m] + dpre_rev[u-m])`` over taps inside ``u``'s cell."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < T
    cmask = cols < C
    cell = tl.load(seq_ptr + rows, mask=rmask, other=-1)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for m in tl.static_range(K):
        wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)
        i = rows + m
        ok = rmask & (i < T)
        ok = ok & (tl.load(seq_ptr + i, mask=ok, other=-2) == cell)
        d = tl.load(
            dpre_ptr + i.to(tl.int64)[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :], other=0.0
        ).to(tl.float32)
        a = rows - m
        ok = rmask & (a >= 0)
        ok = ok & (tl.load(seq_ptr + a, mask=ok, other=-2) == cell)
        d += tl.load(
            dpre_ptr + (T + a).to(tl.int64)[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :], other=0.0
        ).to(tl.float32)
        acc += d * wv[None, :]
    tl.store(dx_ptr + rows.to(tl.int64)[:, None] * stride_dx + cols[None, :], acc.to(dx_ptr.dtype.element_ty),
        mask=rmask[:, None] & cmask[None, :]
    )


@triton.jit
def _shifted(x_ptr, seq_ptr, rows, cell, d, rmask, cols, cmask, T, stride_x):
    """``x[u + d]`` of every token ``u`` of ``rows`` (fp32), 0 where token ``u + d`` is outside ``u``'s cell."""
    u = rows + d
    ok = rmask & (u >= 0) & (u < T)
    ok = ok & (tl.load(seq_ptr + u, mask=ok, other=-2) == cell)
    return tl.load(x_ptr + u.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=ok[:, None] & cmask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _row_grad(x_ptr, w_ptr, rev_ptr, seq_ptr, dout_ptr, rows, cell, m, bias, rmask, cols, cmask, T, stride_x, stride_w,
    stride_dout, K: tl.constexpr, SILU: tl.constexpr, REV: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr
):
    """Pre-activation gradient (fp32) of the row anchored at token ``u + m`` (forward) or ``u - m`` (``REV``).

    0 where that anchor is outside ``u``'s cell. The pre-activation is recomputed from the taps of ``x``
    around ``u`` (all inside ``u``'s cell, hence inside the anchor's), the gradient of output row
    ``a`` (forward) or ``T + rev[a]`` (reversed) read from ``dout``.
    """
    if REV:
        a = rows - m
    else:
        a = rows + m
    ok = rmask & (a >= 0) & (a < T)
    ok = ok & (tl.load(seq_ptr + a, mask=ok, other=-2) == cell)
    if REV:
        drow = T + tl.load(rev_ptr + a, mask=ok, other=0).to(tl.int64)
    else:
        drow = a.to(tl.int64)
    mask2 = ok[:, None] & cmask[None, :]
    g = tl.load(dout_ptr + drow[:, None] * stride_dout + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
    if SILU:
        pre = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32) + bias[None, :]
        for j in tl.static_range(K):  # tap j of the anchor: token a - j (forward) or a + j (reversed)
            if REV:
                xv = _shifted(x_ptr, seq_ptr, rows, cell, j - m, rmask, cols, cmask, T, stride_x)
            else:
                xv = _shifted(x_ptr, seq_ptr, rows, cell, m - j, rmask, cols, cmask, T, stride_x)
            wv = tl.load(w_ptr + cols * stride_w + (K - 1 - j), mask=cmask, other=0.0).to(tl.float32)
            pre += xv * wv[None, :]
        g = _silu_grad(g, pre)
    return tl.where(mask2, g, 0.0)


@triton.jit(do_not_specialize=["T"])
def conv_both_bwd_fused_kernel(x_ptr, w_ptr, b_ptr, rev_ptr, seq_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr, T,
    C, stride_x, stride_w, stride_dout, stride_dx, K: tl.constexpr, KP: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROW_ITERS: tl.constexpr
):
    """dx, partial dW and db in one pass, no pre-activation gradient buffer.

    Each program walks ``ROW_ITERS`` blocks of ``BLOCK_R`` tokens of one channel block. For its tokens ``u`` it
    recomputes the pre-activation gradients ``gF(u + m)`` (forward rows) and ``gR(u - m)`` (reversed rows
    anchored at ``u - m``) for ``m < K`` from the ``2K - 1`` in-cell taps of ``x`` around ``u`` (repeated
    loads, served by L1/L2) and sums ``dx[u] = sum_m w[K-1-m] (gF(u + m) + gR(u - m))``. dW and db take the
    ``m = 0`` terms only, so that each of the ``2T`` rows (forward row ``u``, reversed row anchored at
    ``u``) is counted once; their row sums are folded into ``[BLOCK_C, KP]`` per row block.
    """
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    taps = tl.arange(0, KP)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_w = tl.zeros((BLOCK_C, KP), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for it in range(ROW_ITERS):
        rows = (pid_r * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < T
        cell = tl.load(seq_ptr + rows, mask=rmask, other=-1)
        dx = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for m in tl.static_range(K):
            gf = _row_grad(x_ptr, w_ptr, rev_ptr, seq_ptr, dout_ptr, rows, cell, m, bias, rmask, cols, cmask, T,
                stride_x, stride_w, stride_dout, K, SILU, False, BLOCK_R, BLOCK_C
            )
            gr = _row_grad(x_ptr, w_ptr, rev_ptr, seq_ptr, dout_ptr, rows, cell, m, bias, rmask, cols, cmask, T,
                stride_x, stride_w, stride_dout, K, SILU, True, BLOCK_R, BLOCK_C
            )
            wv = tl.load(w_ptr + cols * stride_w + (K - 1 - m), mask=cmask, other=0.0).to(tl.float32)
            dx += (gf + gr) * wv[None, :]
            if m == 0:  # the two rows anchored at u: forward taps x[u - j], reversed taps x[u + j]
                acc_b += tl.sum(gf + gr, axis=0)
                for j in tl.static_range(K):
                    xb = _shifted(x_ptr, seq_ptr, rows, cell, -j, rmask, cols, cmask, T, stride_x)
                    xa = _shifted(x_ptr, seq_ptr, rows, cell, j, rmask, cols, cmask, T, stride_x)
                    dwj = tl.sum(gf * xb + gr * xa, axis=0)
                    acc_w += dwj[:, None] * (taps == K - 1 - j).to(tl.float32)[None, :]
        tl.store(dx_ptr + rows.to(tl.int64)[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
            mask=rmask[:, None] & cmask[None, :]
        )
    tl.store(db_part_ptr + pid_r * C + cols, acc_b, mask=cmask)
    tmask = taps < K
    tl.store(dw_part_ptr + (pid_r * C + cols)[:, None] * K + taps[None, :], acc_w,
        mask=cmask[:, None] & tmask[None, :]
    )


@triton.jit(do_not_specialize=["T"])
def gated_norm_both_fwd_kernel(y_ptr, z_ptr, rev_ptr, w_ptr, out_ptr, rstd_ptr, T, G, n_groups, eps, stride_y,
    stride_z, stride_out, BLOCK_G: tl.constexpr
):
    row = tl.program_id(0)
    grp = tl.program_id(1)
    is_rev = row >= T
    rv = tl.load(rev_ptr + tl.where(is_rev, row - T, 0))
    anchor = tl.where(is_rev, rv, row.to(tl.int64))
    offs = tl.arange(0, BLOCK_G)
    mask = offs < G
    cols = grp * G + offs
    y = tl.load(y_ptr + row.to(tl.int64) * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + anchor.to(tl.int64) * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
    xs = y * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(xs * xs, axis=0) / G + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, (xs * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row * n_groups + grp, rstd)


@triton.jit(do_not_specialize=["T"])
def gated_norm_both_fwd_tok_kernel(y_ptr, z_ptr, rev_ptr, w_ptr, out_ptr, rstd_ptr, T, G, n_groups, eps, stride_y,
    stride_z, stride_out, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr
):
    """``gated_norm_both_fwd_kernel`` by token, ``BLOCK_R`` tokens ``u`` per program.

    Each token writes its forward row ``u`` and its reversed row ``T + rev[u]`` (``rev`` is an involution), with the
    gate ``z[u]`` read once.
    """
    u = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    grp = tl.program_id(1)
    um = u < T
    offs = tl.arange(0, BLOCK_G)
    cm = offs < G
    mask = um[:, None] & cm[None, :]
    cols = grp * G + offs
    u64 = u.to(tl.int64)
    r2 = T + tl.load(rev_ptr + u, mask=um, other=0).to(tl.int64)
    z = tl.load(z_ptr + u64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sz = z * tl.sigmoid(z)
    w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(2):
        row = u64 if k == 0 else r2
        y = tl.load(y_ptr + row[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xs = y * sz
        rstd = 1.0 / tl.sqrt(tl.sum(xs * xs, axis=1) / G + eps)
        out = (xs * rstd[:, None] * w).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row[:, None] * stride_out + cols[None, :], out, mask=mask)
        tl.store(rstd_ptr + row * n_groups + grp, rstd, mask=um)


@triton.jit
def _gated_norm_row_bwd(y_ptr, dn_ptr, yn_ptr, dy_ptr, rstd_ptr, row, grp, n_groups, z, sz, w, cols, mask, G,
    stride_y, stride_dn, stride_yn, stride_dy, RECOMPUTE: tl.constexpr
):
    """Backward of one row: writes dy (and the recomputed output); returns (dz contribution, dw contribution)."""
    r64 = row.to(tl.int64)
    y = tl.load(y_ptr + r64 * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    dn = tl.load(dn_ptr + r64 * stride_dn + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row * n_groups + grp)
    silu_z = z * sz
    xs = y * silu_z
    n = xs * rstd
    dnw = dn * w
    c1 = tl.sum(n * dnw, axis=0) / G
    dxs = (dnw - n * c1) * rstd
    tl.store(dy_ptr + r64 * stride_dy + cols, (dxs * silu_z).to(dy_ptr.dtype.element_ty), mask=mask)
    if RECOMPUTE:
        tl.store(yn_ptr + r64 * stride_yn + cols, (n * w).to(yn_ptr.dtype.element_ty), mask=mask)
    dz = dxs * y * sz * (1.0 + z * (1.0 - sz))
    return dz, dn * n


@triton.jit(do_not_specialize=["T"])
def gated_norm_both_bwd_kernel(y_ptr, z_ptr, rev_ptr, w_ptr, rstd_ptr, dn_ptr, dy_ptr, dz_ptr, yn_ptr, dw_part_ptr, T,
    G, n_groups, stride_y, stride_z, stride_dn, stride_dy, stride_dz, stride_yn, ROWS: tl.constexpr,
    RECOMPUTE: tl.constexpr, BLOCK_G: tl.constexpr
):
    """Per token ``u``: the rows ``u`` and ``T + rev[u]`` (both gated by ``z[u]``); ``dz[u]`` sums the two."""
    pid = tl.program_id(0)
    grp = tl.program_id(1)
    offs = tl.arange(0, BLOCK_G)
    mask = offs < G
    cols = grp * G + offs
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_G,), dtype=tl.float32)
    start = pid * ROWS
    for i in tl.static_range(ROWS):
        u = start + i
        if u < T:
            u64 = u.to(tl.int64)
            z = tl.load(z_ptr + u64 * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dz = tl.zeros((BLOCK_G,), dtype=tl.float32)
            for d in tl.static_range(2):  # the forward row of token u, then the reversed row anchored at u
                if d == 0:
                    row = u64
                else:
                    row = T + tl.load(rev_ptr + u)
                dz_d, dw_d = _gated_norm_row_bwd(
                    y_ptr, dn_ptr, yn_ptr, dy_ptr, rstd_ptr, row, grp, n_groups, z, sz, w, cols, mask, G,
                    stride_y, stride_dn, stride_yn, stride_dy, RECOMPUTE
                )  # fmt: skip
                dz += dz_d
                dw += dw_d
            tl.store(dz_ptr + u64 * stride_dz + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid * (n_groups * G) + cols, dw, mask=mask)
