"""Triton kernel: the intra-chunk ``d(C B^T)`` and ``d(cumulative dt*A)`` of the chunked SSD backward in one pass.

The default of the training path (``fused_ssd_bwd._SSD_BWD_DDA = "fused"``) since session 9, when the reverse
sum of its row and column sums was restarted at every sequence (``seq_rev_sum_kernel``); before that, it gave NaN
gradients on real packed batches (``benchmarks/NOTES_throughput.md``, section 13).

Inside a chunk the SSD (Dao & Gu 2024, "Transformers are SSMs", section 6) computes
``y_m = sum_{n <= m} (C_m . B_n) exp(a_m - a_n) dt_n x_n`` (``a`` the cumulative sum of ``dt * A`` over the
chunk, per head; pairs of tokens of different sequences of a packed row are masked). With the output gradient
``dy``, let ``D_mn = (dy_m . x_n) dt_n exp(a_m - a_n)`` (per head, ``n <= m``, same sequence). Then

- ``d(C B^T)_mn = sum over the heads of a group of D_mn``, which mamba-ssm's ``_chunk_scan_bwd_dcb`` writes;
- with ``W_mn = D_mn (C_m . B_n)`` (per head), the gradient of ``a_j`` is ``sum_n W_jn - sum_m W_mj`` (``a_j``
  enters the pairs whose row is ``j`` with a plus sign and those whose column is ``j`` with a minus sign).

mamba-ssm computes the second term in ``_chunk_scan_bwd_ddAcs_stable``, a second pass over the same ``dy . x``
products per head that takes, for each position ``k``, the sum of ``W`` over the pairs that straddle it
(``n < k <= m``) with ``tl.cumsum`` inside the tile: on an H200 at a 48-cell training step that kernel took
19.5 ms, the dcb kernel 8.9 ms (``benchmarks/NOTES_throughput.md``, section 10). Here the row and column sums of
``W`` are taken in the dcb pass itself, while each head's ``D`` tile is in registers, and added into ``ddacs``
(``[H, nchunks, Q]`` fp32, gradient of ``a``) with atomic adds; the reverse cumulative sum over the positions of
the same sequence (``seq_rev_sum_kernel``) turns the gradient of ``a`` into the gradient of ``dt * A`` at each
position, which is the straddling sum (``sum_{j >= k} (rows_j - cols_j)``: the pairs with both ends at or after
``k`` cancel). The diagonal pairs
(``m == n``) do not depend on ``a`` and are left out of ``W``. Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit
def _dot(a, b, INTERPRET: tl.constexpr):
    """``tl.dot``; in fp32 under the interpreter, whose bf16 dot is wrong (Triton 3.6)."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b)


@triton.jit
def chunk_pairs(seq_ptr, start, offs_m, offs_n, in_m, in_n, HAS_SEQ: tl.constexpr):
    """The interacting pairs of a chunk's tile, and the sequence ids of its columns.

    Pairs ``(m, n)``: ``n <= m``, both in the row, one sequence (``[BM, BN]``). Column ids ``[BN]``, zeros
    without ``seq``.
    """
    pair = (offs_m[:, None] >= offs_n[None, :]) & in_m[:, None] & in_n[None, :]
    seq_n = tl.zeros(offs_n.shape, dtype=tl.int32)
    if HAS_SEQ:
        seq_m = tl.load(seq_ptr + start + offs_m, mask=in_m, other=-1)
        seq_n = tl.load(seq_ptr + start + offs_n, mask=in_n, other=-2)
        pair = pair & (seq_m[:, None] == seq_n[None, :])
    return pair, seq_n


@triton.jit(do_not_specialize=["L"])
def ssd_dcb_ddacs_kernel(x_ptr, dy_ptr, cb_ptr, dt_ptr, cs_ptr, seq_ptr, dcb_ptr, ddacs_ptr,
    L, Q, hdim,
    stride_x_l, stride_x_h, stride_dy_l, stride_dy_h,
    stride_cb_c, stride_cb_g, stride_cb_m, stride_cb_n,
    stride_dt_h, stride_dt_c, stride_cs_h, stride_cs_c,
    stride_dcb_c, stride_dcb_g, stride_dcb_m, stride_dcb_n,
    stride_dd_h, stride_dd_c,
    HPG: tl.constexpr, HAS_SEQ: tl.constexpr, INTERPRET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_DECAY: tl.constexpr,
):
    """One ``[BM, BN]`` tile of one chunk and one group, all the group's heads in turn.

    ``SPLIT_DECAY``: on a tile whose every row comes after every column, the decay ``exp(a_m - a_n)`` is taken as
    ``exp(a_m - a_r) exp(a_r - a_n)`` (``r`` the column block's last token; both factors at most 1, as ``a`` does not
    increase along the chunk): ``BM + BN`` exps on the accumulator's rows and columns instead of ``BM * BN``.

    Grid ``(cdiv(Q, BM) * cdiv(Q, BN), nchunks, ngroups)``. ``x``, ``dy`` ``[L, H, P]`` (token stride, head
    stride, P contiguous); ``cb`` ``[nchunks, G, Q, Q]``; ``dt``, ``cs`` (cumulative ``dt*A``) ``[H, nchunks, Q]``
    fp32; ``seq`` ``[L]`` int32; writes ``dcb`` ``[nchunks, G, Q, Q]`` fp32 (zero above the diagonal) and adds into
    ``ddacs`` ``[H, nchunks, Q]`` fp32.
    """
    pid_mn = tl.program_id(0)
    c = tl.program_id(1)
    g = tl.program_id(2)
    num_n = tl.cdiv(Q, BN)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    dcb_ptrs = (dcb_ptr + c.to(tl.int64) * stride_dcb_c + g * stride_dcb_g + offs_m[:, None] * stride_dcb_m
                + offs_n[None, :] * stride_dcb_n)
    in_q = (offs_m[:, None] < Q) & (offs_n[None, :] < Q)
    if pid_n * BN >= (pid_m + 1) * BM:  # above the diagonal: no pair
        tl.store(dcb_ptrs, tl.zeros((BM, BN), dtype=dcb_ptr.dtype.element_ty), mask=in_q)
        return
    start = c * Q
    limit = tl.minimum(Q, L - start)
    in_m = offs_m < limit
    in_n = offs_n < limit
    pair, _ = chunk_pairs(seq_ptr, start, offs_m, offs_n, in_m, in_n, HAS_SEQ)
    strict = pair & (offs_m[:, None] > offs_n[None, :])
    cb = tl.load(cb_ptr + c.to(tl.int64) * stride_cb_c + g * stride_cb_g + offs_m[:, None] * stride_cb_m
                 + offs_n[None, :] * stride_cb_n, mask=strict, other=0.0).to(tl.float32)
    offs_k = tl.arange(0, BK)
    tok_m = (start + offs_m).to(tl.int64)
    tok_n = (start + offs_n).to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    below = (pid_n + 1) * BN <= pid_m * BM  # every row of the tile after every column
    ref = tl.minimum((pid_n + 1) * BN, limit) - 1
    for i in range(HPG):  # the group's heads
        h = g * HPG + i
        dy = tl.load(dy_ptr + tok_m[:, None] * stride_dy_l + h * stride_dy_h + offs_k[None, :],
                     mask=in_m[:, None] & (offs_k[None, :] < hdim), other=0.0)
        xt = tl.load(x_ptr + tok_n[None, :] * stride_x_l + h * stride_x_h + offs_k[:, None],
                     mask=(offs_k[:, None] < hdim) & in_n[None, :], other=0.0)
        d = _dot(dy, xt, INTERPRET)
        hc_dt = dt_ptr + h * stride_dt_h + c * stride_dt_c
        hc_cs = cs_ptr + h * stride_cs_h + c * stride_cs_c
        dt_n = tl.load(hc_dt + offs_n, mask=in_n, other=0.0)
        cs_m = tl.load(hc_cs + offs_m, mask=in_m, other=0.0)
        cs_n = tl.load(hc_cs + offs_n, mask=in_n, other=0.0)
        # finite everywhere (exp of a non-positive number; rows and columns past the chunk load as zeros): the
        # pair mask is applied once to the sum over heads, and cb is zero off the strict lower pairs
        if SPLIT_DECAY and below:
            cs_ref = tl.load(hc_cs + ref)
            col = dt_n * tl.exp(tl.minimum(cs_ref - cs_n, 0.0))
            d = d * col[None, :] * tl.exp(tl.minimum(cs_m - cs_ref, 0.0))[:, None]
        else:
            d = d * dt_n[None, :] * tl.exp(tl.minimum(cs_m[:, None] - cs_n[None, :], 0.0))
        acc += d
        w = d * cb
        dd = ddacs_ptr + h * stride_dd_h + c * stride_dd_c
        tl.atomic_add(dd + offs_m, tl.sum(w, axis=1), mask=in_m, sem="relaxed")
        tl.atomic_add(dd + offs_n, -tl.sum(w, axis=0), mask=in_n, sem="relaxed")
    tl.store(dcb_ptrs, tl.where(pair, acc, 0.0).to(dcb_ptr.dtype.element_ty), mask=in_q)


@triton.jit
def _segment_add(v1, f1, v2, f2):
    """Segmented sum (Blelloch 1990): ``f`` marks the first element of a segment in scan order."""
    return tl.where(f2 != 0, v2, v1 + v2), f1 | f2


@triton.jit(do_not_specialize=["L"])
def seq_rev_sum_kernel(r_ptr, seq_ptr, out_ptr, prev_ptr, last_ptr, next_ptr, L, stride_h, stride_c,
                       stride_prev_h, stride_prev_c, stride_last_h, stride_last_c, stride_next_h, stride_next_c,
                       Q: tl.constexpr, HAS_INTER: tl.constexpr, NEXT_RAW: tl.constexpr = False):
    """``out_j = sum of r_k over the positions k >= j of j's chunk that belong to j's sequence``.

    Grid ``(nchunks, H)``; ``r``, ``out`` ``[H, nchunks, Q]`` fp32 (``Q`` contiguous), ``seq`` ``[L]`` int32. The
    reverse cumulative sum of ``rows_j - cols_j`` (module docstring) restarted at every sequence of the chunk: the
    pairs of a later sequence never enter, so a position that no pair straddles (a sequence's first token, a
    one-token pad cell) gets exactly zero, not the float32 remainder of the later sequences' cancelling sums.
    One segmented scan over the chunk read back to front (a segment starts where a sequence ends).

    ``HAS_INTER``: also add the inter-chunk share of the gradient of ``dt*A``, which the SSD backward otherwise
    assembles with six torch operations: ``next_j`` (``[H, nchunks, Q]``, from the chunk's own state) plus the plain
    reverse cumulative sum over the chunk of ``prev`` (``[H, nchunks, Q]``, from the state read at the chunk's start)
    with ``last`` (``[H, nchunks]``, from the state walk's scale) added at its last position. ``NEXT_RAW``: ``next``
    holds per-position shares whose cumulative sum over the chunk (from its first position) is ``next_j``, which this
    sums (mamba-ssm's ``_chunk_state_bwd_db`` does it with a ``torch.cumsum``).
    """
    c = tl.program_id(0)
    h = tl.program_id(1)
    rev = tl.arange(0, Q)
    offs = Q - 1 - rev  # back to front
    pos = c * Q + offs
    base = h * stride_h + c.to(tl.int64) * stride_c
    r = tl.load(r_ptr + base + offs, mask=pos < L, other=0.0)
    seq = tl.load(seq_ptr + pos, mask=pos < L, other=-1)
    seq_next = tl.load(seq_ptr + pos + 1, mask=(pos + 1 < L) & (offs + 1 < Q), other=-2)
    head = (seq != seq_next).to(tl.int32)  # the last position of its sequence in the chunk
    out, _ = tl.associative_scan((r, head), axis=0, combine_fn=_segment_add)
    if HAS_INTER:
        prev = tl.load(prev_ptr + h * stride_prev_h + c.to(tl.int64) * stride_prev_c + offs)
        last = tl.load(last_ptr + h * stride_last_h + c * stride_last_c)
        prev = tl.where(rev == 0, prev + last, prev)  # rev == 0: the chunk's last position
        nxt = tl.load(next_ptr + h * stride_next_h + c.to(tl.int64) * stride_next_c + offs)
        if NEXT_RAW:  # next's per-position shares, not yet summed up to each position (read back to front)
            nxt = tl.cumsum(nxt, axis=0, reverse=True)
        out = out + tl.cumsum(prev, axis=0) + nxt
    tl.store(out_ptr + base + offs, out)
