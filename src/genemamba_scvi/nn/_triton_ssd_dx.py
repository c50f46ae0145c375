"""Triton kernel: ``dx``, ``ddt`` and ``dD`` of the chunked SSD backward, with every head of a tile side by side.

**Off by default** (``fused_ssd_bwd._SSD_BWD_DX = "mamba"``; ``"heads"`` switches it on). It was written to replace
mamba-ssm's ``_chunk_scan_chunk_state_bwd_dx``, the largest kernel of a training step (19.6 of ~160 ms on an H200),
and returns the same values (relative 5e-8), but on an H200 it is not faster: 20.9 ms a step in the profile, and a
step with mamba-ssm's kernel takes 0.974-0.988x the time (``benchmarks/NOTES_throughput.md``, section 17).

Inside a chunk the SSD (Dao & Gu 2024, "Transformers are SSMs", section 6) computes, per head,
``y_k = sum_{m <= k} (C_k . B_m) exp(a_k - a_m) dt_m x_m + (C_k . h_in) exp(a_k) + D x_k`` (``a`` the cumulative
sum of ``dt * A`` over the chunk; pairs of tokens of different sequences of a packed row are masked). So, with the
output gradient ``dy`` and ``dS`` the gradient of the state leaving the chunk,

``acc_m = sum_{k >= m} (C_k . B_m) exp(a_k - a_m) dy_k + [m in the chunk's last sequence] exp(a_last - a_m) B_m . dS``

and ``dx_m = dt_m acc_m + D dy_m``, ``ddt_m = acc_m . x_m``, ``dD = sum dy . x``: the values mamba-ssm's kernel
returns, computed the same way (the decayed ``C B^T`` tile rounded to bf16 before its product with ``dy``).

What differs is the order of the programs. ``C B^T`` is one fp32 ``[Q, Q]`` tile per chunk and group (256 KB at a
chunk of 256), shared by the group's heads. mamba-ssm's grid puts the head on its slowest axis, so each head walks
every chunk of the row before the next head starts: the ~200 MB of ``C B^T`` of a 48-cell batch is read from HBM
once per head (16 times), about 2 GB of the kernel's ~3 GB of traffic. Here the head is the fastest index of the
program id: the programs of one tile of one chunk run side by side, and ``C B^T`` is read from HBM about once. That
count was the premise, and the measurement refuted it: the L2 keeps more of ``C B^T`` than counted, or the kernel is
bound inside the SM.
Every mask is applied with ``tl.where`` (a product with a masked zero would turn a non-finite value in an unused
lane into NaN). Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

from genemamba_scvi.nn._triton_ssd_bwd import _dot

# fmt: off


@triton.jit
def _pairs(acc, k0, start, limit, offs_m, in_m, cs_m, seq_m, hc_cs, cb_cols, seq_ptr, dy_h, stride_cb_m, stride_dy_l,
           P: tl.constexpr, BK: tl.constexpr, HAS_SEQ: tl.constexpr, INTERPRET: tl.constexpr):
    """``acc`` plus the pairs of rows ``k0 .. k0 + BK`` (``[BM, P]``): ``sum_k (C_k . B_m) exp(a_k - a_m) dy_k``.

    The decayed ``C B^T`` tile is the dot's first operand, built in registers; ``dy`` goes to the dot as loaded.
    (Scaling ``dy``'s rows instead, with the decay split in two factors, was slower on an H200: the second operand
    then passes through registers too; ``benchmarks/NOTES_throughput.md``, section 17.)
    """
    offs_k = k0 + tl.arange(0, BK)
    in_k = offs_k < limit
    pair = (offs_k[None, :] >= offs_m[:, None]) & in_k[None, :] & in_m[:, None]
    if HAS_SEQ:
        seq_k = tl.load(seq_ptr + start + offs_k, mask=in_k, other=-2)
        pair = pair & (seq_m[:, None] == seq_k[None, :])
    cs_k = tl.load(hc_cs + offs_k, mask=in_k, other=0.0)
    cbt = tl.load(cb_cols + offs_k[None, :] * stride_cb_m)  # [BM, BK]: C_k . B_m (inside the [Q, Q] tile)
    w = tl.where(pair, cbt * tl.exp(tl.minimum(cs_k[None, :] - cs_m[:, None], 0.0)), 0.0)
    dy_k = tl.load(dy_h + (start + offs_k).to(tl.int64)[:, None] * stride_dy_l + tl.arange(0, P)[None, :],
                   mask=in_k[:, None], other=0.0)
    if not INTERPRET:  # bf16 for the tensor cores, as mamba-ssm's dx kernel (the interpreter truncates)
        w = w.to(dy_k.dtype)
    return acc + _dot(w, dy_k, INTERPRET)


@triton.jit
def _walk(acc, k_lo, k_hi, start, limit, offs_m, in_m, cs_m, seq_m, hc_cs, cb_cols, seq_ptr, dy_h, stride_cb_m,
          stride_dy_l, P: tl.constexpr, BK: tl.constexpr, HAS_SEQ: tl.constexpr, INTERPRET: tl.constexpr):
    """``_pairs`` over the rows ``k_lo .. k_hi`` in steps of ``BK``."""
    if INTERPRET:  # the interpreter needs Python bounds
        k0 = k_lo
        while k0 < k_hi:
            acc = _pairs(acc, k0, start, limit, offs_m, in_m, cs_m, seq_m, hc_cs, cb_cols, seq_ptr, dy_h, stride_cb_m,
                         stride_dy_l, P, BK, HAS_SEQ, INTERPRET)
            k0 += BK
    else:
        for k0 in range(k_lo, k_hi, BK):
            acc = _pairs(acc, k0, start, limit, offs_m, in_m, cs_m, seq_m, hc_cs, cb_cols, seq_ptr, dy_h, stride_cb_m,
                         stride_dy_l, P, BK, HAS_SEQ, INTERPRET)
    return acc


@triton.jit(do_not_specialize=["L"])
def ssd_dx_kernel(x_ptr, dy_ptr, b_ptr, cb_ptr, dt_ptr, cs_ptr, seq_ptr, dst_ptr, d_ptr,
    dx_ptr, ddt_ptr, dd_ptr,
    L,
    stride_x_l, stride_x_h, stride_dy_l, stride_dy_h, stride_b_l, stride_b_g,
    stride_cb_c, stride_cb_g, stride_cb_m, stride_cb_n,
    stride_dt_h, stride_dt_c, stride_cs_h, stride_cs_c,
    stride_dst_c, stride_dst_h, stride_dst_p, stride_dst_n,
    stride_dx_l, stride_dx_h,
    H: tl.constexpr, HPG: tl.constexpr, Q: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Head ``h``, block ``mb`` of ``BM`` tokens, chunk ``c``: program id ``(c * (Q // BM) + mb) * H + h``.

    ``x``, ``dy`` ``[L, H, P]``, ``B`` ``[L, G, N]`` (last dimension contiguous); ``cb`` ``[nchunks, G, Q, Q]`` fp32
    (``cb[c, g, k, m] = C_k . B_m``); ``dt`` (after softplus), ``cs`` (cumulative ``dt*A``) ``[H, nchunks, Q]`` fp32;
    ``seq`` ``[L]`` int32; ``dst`` ``[nchunks, H, P, N]`` gradient of the state leaving each chunk; ``d`` ``[H]``.
    Writes ``dx`` ``[L, H, P]``, ``ddt`` ``[H, nchunks, Q]`` fp32 (zero past the row) and ``dd``
    ``[nchunks * Q // BM, H]`` fp32, the partial sums of ``dy . x`` (one per program, at its program id).
    """
    pid = tl.program_id(0)
    h = pid % H
    mb = (pid // H) % (Q // BM)
    c = pid // (H * (Q // BM))
    g = h // HPG
    start = c * Q
    limit = tl.minimum(Q, L - start)
    offs_m = mb * BM + tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    offs_s = tl.arange(0, N)
    in_m = offs_m < limit
    tok_m = (start + offs_m).to(tl.int64)
    hc_cs = cs_ptr + h * stride_cs_h + c.to(tl.int64) * stride_cs_c
    cs_m = tl.load(hc_cs + offs_m, mask=in_m, other=0.0)
    cs_last = tl.load(hc_cs + limit - 1)
    seq_m = tl.zeros((BM,), dtype=tl.int32)
    tail = in_m
    if HAS_SEQ:  # the tokens of the chunk's last sequence receive the gradient of the state leaving it
        seq_m = tl.load(seq_ptr + start + offs_m, mask=in_m, other=-1)
        tail = tail & (seq_m == tl.load(seq_ptr + start + limit - 1))
    # the state leaving the chunk: B_m . dS, scaled by the decay from m to the chunk's end
    b_m = tl.load(b_ptr + tok_m[:, None] * stride_b_l + g * stride_b_g + offs_s[None, :], mask=in_m[:, None],
                  other=0.0)
    dst_t = tl.load(dst_ptr + c.to(tl.int64) * stride_dst_c + h * stride_dst_h + offs_s[:, None] * stride_dst_n
                    + offs_p[None, :] * stride_dst_p).to(b_m.dtype)  # [N, P]
    scale = tl.where(tail, tl.exp(tl.minimum(cs_last - cs_m, 0.0)), 0.0)
    acc = _dot(b_m, dst_t, INTERPRET) * scale[:, None]
    # the pairs (k, m) with k >= m: columns m of C B^T, weighted by the decay, against dy_k
    cb_cols = cb_ptr + c.to(tl.int64) * stride_cb_c + g * stride_cb_g + offs_m[:, None] * stride_cb_n
    dy_h = dy_ptr + h * stride_dy_h
    acc = _walk(acc, mb * BM, limit, start, limit, offs_m, in_m, cs_m, seq_m, hc_cs, cb_cols, seq_ptr, dy_h,
                stride_cb_m, stride_dy_l, P, BK, HAS_SEQ, INTERPRET)
    dt_m = tl.load(dt_ptr + h * stride_dt_h + c.to(tl.int64) * stride_dt_c + offs_m, mask=in_m, other=0.0)
    x_m = tl.load(x_ptr + tok_m[:, None] * stride_x_l + h * stride_x_h + offs_p[None, :], mask=in_m[:, None],
                  other=0.0).to(tl.float32)
    dx = acc * dt_m[:, None]
    if HAS_D:
        dy_m = tl.load(dy_ptr + tok_m[:, None] * stride_dy_l + h * stride_dy_h + offs_p[None, :],
                       mask=in_m[:, None], other=0.0).to(tl.float32)
        dx += dy_m * tl.load(d_ptr + h).to(tl.float32)
        tl.store(dd_ptr + pid, tl.sum(tl.sum(dy_m * x_m, axis=1), axis=0))
    tl.store(dx_ptr + tok_m[:, None] * stride_dx_l + h * stride_dx_h + offs_p[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=in_m[:, None])
    ddt = tl.where(in_m, tl.sum(acc * x_m, axis=1), 0.0)
    tl.store(ddt_ptr + h * stride_dt_h + c.to(tl.int64) * stride_dt_c + offs_m, ddt)
