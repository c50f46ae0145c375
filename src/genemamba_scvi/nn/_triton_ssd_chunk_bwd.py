"""Triton kernel: the whole intra-chunk part of the chunked SSD backward in one pass per block of source tokens.

**Experimental, off by default** (``fused_ssd_bwd._SSD_BWD_INTRA = "mamba"``). Its values equal mamba-ssm's
kernels' (5e-8 to 3e-7 relative on a real training step's inputs, H200), but it is slower (2.88 ms a layer against
2.61 ms at its best of 12 launch shapes): the ``[256, 64]`` dy tile each program reloads per head, not the exps or
the dots, sets its time. With it on, the 24-layer encoder's gradients on the real 48-cell check batch turn
non-finite from layer 5 down (as with session 7's ``ssd_dcb_ddacs``), although every SSD backward output equals
mamba-ssm's path but for bf16 roundings of ``ddt``; see ``benchmarks/NOTES_throughput.md``, section 12.

Inside a chunk the SSD (Dao & Gu 2024, "Transformers are SSMs", section 6) computes, per head,
``y_m = sum_{n <= m} (C_m . B_n) exp(a_m - a_n) dt_n x_n + (C_m . h_in) exp(a_m) + D x_m`` (``a`` the cumulative
sum of ``dt * A`` over the chunk; pairs of tokens of different sequences of a packed row are masked). mamba-ssm
takes the backward of the intra-chunk pairs in three kernels that each rebuild the same ``[Q, Q]`` decay tile
``exp(a_m - a_n)`` per head and read the same ``dy`` rows: ``_chunk_scan_chunk_state_bwd_dx`` (``dx``, ``ddt``,
``dD``; with the chunk state's gradient), ``_chunk_scan_bwd_dcb`` (``d(C B^T)``, summed over a group's heads) and
``_chunk_scan_bwd_ddAcs_stable`` (the pairs' share of the gradient of ``dt * A``). On an H200 at a 48-cell training
step they took 23.1, 8.9 and 19.5 ms of ~200 (``benchmarks/NOTES_throughput.md``, sections 11-12).

``ssd_chunk_bwd_kernel`` computes all three from one decay tile. One program owns a block of ``BN`` source tokens
``n`` of one chunk and one group and visits the rows ``m`` of the chunk (a ``[Q, BN]`` tile; ``[Q/2, BN]`` for the
blocks of the second half), head by head:

- ``acc_n = sum_m (C_m . B_n) exp(a_m - a_n) dy_m + [n in the chunk's last sequence] exp(a_last - a_n) B_n . dS``
  (``dS`` the gradient of the state leaving the chunk); ``dx_n = dt_n acc_n + D dy_n``,
  ``ddt_n = acc_n . x_n``, ``dD`` partial sums of ``dy_n . x_n``: what mamba-ssm's dx kernel returns;
- ``Dt_mn = (dy_m . x_n) dt_n exp(a_m - a_n)`` summed over the group's heads: ``d(C B^T)`` (the program owns its
  columns, so no atomics);
- ``W_mn = Dt_mn (C_m . B_n)``: its row sums (partial over this block, stored per block) and column
  sums; the gradient of ``a_j`` is ``rows_j - cols_j`` and its reverse cumulative sum over the chunk is the
  gradient of ``dt_j * A`` that mamba-ssm's "stable" kernel computes as a sum over the pairs that straddle ``j``
  (only the pairs inside one chunk cancel, in fp32: the closed form over a whole sequence from ``dy . y - x . dx``
  is exact but loses everything to the bf16 rounding of ``y``, section 12 of the notes).

Every mask is applied with ``tl.where`` (a product with a masked zero would turn a non-finite value in an unused
lane into NaN). Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

from genemamba_scvi.nn._triton_ssd_bwd import _dot, chunk_pairs

# fmt: off


@triton.jit(do_not_specialize=["L"])
def ssd_chunk_bwd_kernel(x_ptr, dy_ptr, b_ptr, cb_ptr, dt_ptr, cs_ptr, seq_ptr, dst_ptr, d_ptr,
    dx_ptr, ddt_ptr, dd_ptr, dcb_ptr, rows_ptr, cols_ptr,
    L, NB0,
    stride_x_l, stride_x_h, stride_dy_l, stride_dy_h, stride_b_l, stride_b_g,
    stride_cb_c, stride_cb_g, stride_cb_m, stride_cb_n,
    stride_dt_h, stride_dt_c, stride_cs_h, stride_cs_c,
    stride_dst_c, stride_dst_h, stride_dst_p, stride_dst_n,
    stride_dx_l, stride_dx_h,
    HPG: tl.constexpr, Q: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BN: tl.constexpr, ROW0: tl.constexpr,
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Block ``pid(0)`` of ``BN`` source tokens of chunk ``pid(1)``, group ``pid(2)``; all the group's heads.

    ``x``, ``dy`` ``[L, H, P]``, ``B`` ``[L, G, N]`` (last dimension contiguous); ``cb`` ``[nchunks, G, Q, Q]`` fp32;
    ``dt`` (after softplus), ``cs`` (cumulative ``dt*A``) ``[H, nchunks, Q]`` fp32; ``seq`` ``[L]`` int32; ``dst``
    ``[nchunks, H, P, N]`` gradient of the state leaving each chunk; ``d`` ``[H]``. Writes ``dx`` ``[L, H, P]``,
    ``ddt`` ``[H, nchunks, Q]`` fp32 (zero past the row), ``dd`` ``[nchunks, NB, H]`` partial dD, ``dcb``
    ``[nchunks, G, Q, Q]`` fp32 (this block's columns, zero off the pairs), ``rows`` ``[nchunks, NB, H, Q]`` and
    ``cols`` ``[H, nchunks, Q]`` fp32 (``rows`` zero-filled by the caller: a program writes its rows from ``ROW0``).

    The programs of a launch take blocks ``NB0 + pid(0)``; a launch whose blocks all start at or after ``ROW0``
    visits only the rows from ``ROW0`` (the rows above a block hold no pair with it), so the caller launches the
    blocks of the chunk's second half with ``ROW0 = Q // 2``: a quarter of the work saved.
    """
    nb = NB0 + tl.program_id(0)
    c = tl.program_id(1)
    g = tl.program_id(2)
    n_blocks = Q // BN
    start = c * Q
    limit = tl.minimum(Q, L - start)
    offs_m = ROW0 + tl.arange(0, Q - ROW0)
    offs_n = nb * BN + tl.arange(0, BN)
    offs_p = tl.arange(0, P)
    offs_s = tl.arange(0, N)
    in_m = offs_m < limit
    in_n = offs_n < limit
    pair, seq_n = chunk_pairs(seq_ptr, start, offs_m, offs_n, in_m, in_n, HAS_SEQ)
    if HAS_SEQ:  # the tokens of the chunk's last sequence receive the gradient of the state leaving it
        tail = in_n & (seq_n == tl.load(seq_ptr + start + limit - 1))
    else:
        tail = in_n
    cb = tl.load(cb_ptr + c.to(tl.int64) * stride_cb_c + g * stride_cb_g + offs_m[:, None] * stride_cb_m
                 + offs_n[None, :] * stride_cb_n, mask=pair, other=0.0).to(tl.float32)
    cb = tl.where(pair, cb, 0.0)
    tok_m = (start + offs_m).to(tl.int64)
    tok_n = (start + offs_n).to(tl.int64)
    b_n = tl.load(b_ptr + tok_n[:, None] * stride_b_l + g * stride_b_g + offs_s[None, :], mask=in_n[:, None],
                  other=0.0)
    dcb_acc = tl.zeros((Q - ROW0, BN), dtype=tl.float32)
    for i in range(HPG):  # the group's heads
        h = g * HPG + i
        hc_dt = dt_ptr + h * stride_dt_h + c * stride_dt_c
        hc_cs = cs_ptr + h * stride_cs_h + c * stride_cs_c
        dt_n = tl.load(hc_dt + offs_n, mask=in_n, other=0.0)
        cs_m = tl.load(hc_cs + offs_m, mask=in_m, other=0.0)
        cs_n = tl.load(hc_cs + offs_n, mask=in_n, other=0.0)
        cs_last = tl.load(hc_cs + limit - 1)
        dy_m = tl.load(dy_ptr + tok_m[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                       mask=in_m[:, None], other=0.0)
        x_n = tl.load(x_ptr + tok_n[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :], mask=in_n[:, None],
                      other=0.0)
        # decay of every pair (exp of a non-positive number; zero off the pairs)
        decay = tl.where(pair, tl.exp(tl.minimum(cs_m[:, None] - cs_n[None, :], 0.0)), 0.0)
        # dx: the pairs (columns of C B^T weighted by the decay) and the chunk's state gradient
        cbd = cb * decay
        if not INTERPRET:  # bf16 for the tensor cores, as mamba-ssm's dx kernel (the interpreter truncates)
            cbd = cbd.to(dy_m.dtype)
        acc = _dot(tl.trans(cbd), dy_m, INTERPRET)  # [BN, P]
        dst_t = tl.load(dst_ptr + c.to(tl.int64) * stride_dst_c + h * stride_dst_h + offs_s[:, None] * stride_dst_n
                        + offs_p[None, :] * stride_dst_p).to(b_n.dtype)  # [N, P]
        scale = tl.where(tail, tl.exp(tl.minimum(cs_last - cs_n, 0.0)), 0.0)
        acc += _dot(b_n, dst_t, INTERPRET) * scale[:, None]
        x_f = x_n.to(tl.float32)
        dx = acc * dt_n[:, None]
        if HAS_D:
            dy_n = tl.load(dy_ptr + tok_n[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                           mask=in_n[:, None], other=0.0).to(tl.float32)
            dx += dy_n * tl.load(d_ptr + h).to(tl.float32)
            tl.store(dd_ptr + (c * n_blocks + nb) * (HPG * tl.num_programs(2)) + h,
                     tl.sum(tl.sum(tl.where(in_n[:, None], dy_n * x_f, 0.0), axis=1), axis=0))
        tl.store(dx_ptr + tok_n[:, None] * stride_dx_l + h * stride_dx_h + offs_p[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=in_n[:, None])
        ddt = tl.where(in_n, tl.sum(acc * x_f, axis=1), 0.0)
        tl.store(ddt_ptr + h * stride_dt_h + c * stride_dt_c + offs_n, ddt, mask=offs_n < Q)
        # d(C B^T) and the pairs' share of the gradient of the cumulative dt*A
        s = _dot(dy_m, tl.trans(x_n), INTERPRET)  # [Q - ROW0, BN]: dy_m . x_n
        d = s * decay * dt_n[None, :]
        dcb_acc += d
        # W on the pairs, the diagonal included: a diagonal pair adds the same value to row j and column j, so it
        # cancels in rows_j - cols_j (no mask needed; cb is zero off the pairs)
        w = d * cb
        tl.store(rows_ptr + ((c * n_blocks + nb) * (HPG * tl.num_programs(2)) + h).to(tl.int64) * Q + offs_m,
                 tl.sum(w, axis=1))
        tl.store(cols_ptr + h * stride_dt_h + c * stride_dt_c + offs_n, tl.sum(w, axis=0), mask=offs_n < Q)
    dcb_cols = dcb_ptr + c.to(tl.int64) * stride_cb_c + g * stride_cb_g + offs_n[None, :] * stride_cb_n
    tl.store(dcb_cols + offs_m[:, None] * stride_cb_m, dcb_acc, mask=offs_n[None, :] < Q)
    if ROW0 > 0:  # the rows above: no pairs
        top = tl.arange(0, ROW0)
        tl.store(dcb_cols + top[:, None] * stride_cb_m, tl.zeros((ROW0, BN), dtype=tl.float32),
                 mask=offs_n[None, :] < Q)
