"""Triton kernels of the gated merge in inference (:mod:`genemamba_scvi.nn.fused_merge`); imported lazily.

The merge of the two directions, ``b + sigmoid(f W_f^T + b W_b^T + c) * (f - b)`` per token, after its two GEMMs on
the rows as they lie: ``gate_merge_both_kernel`` writes the update; ``gate_merge_add_norm_kernel`` also adds it to
the fp32 residual stream and applies the next block's RMSNorm (the computation of mamba-ssm's
``rms_norm_fn(prenorm=True, residual_in_fp32=True)``, with the update kept in fp32). Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit
def _row_scale(ssq_ptr, r, rmask, NP, inv_dn, eps, BLOCK_NP: tl.constexpr):
    """``rsqrt(sum(ssq[r, :NP]) * inv_dn + eps)`` per row (the folded gated norm's scale; ``ssd_varlen_both``)."""
    k = tl.arange(0, BLOCK_NP)
    part = tl.load(ssq_ptr + r[:, None] * NP + k[None, :], mask=rmask[:, None] & (k < NP)[None, :], other=0.0)
    return tl.rsqrt(tl.sum(part, axis=1) * inv_dn + eps)


@triton.jit
def _merge_tile(out2_ptr, pf_ptr, pb_ptr, rev_ptr, bias_ptr, ssq_ptr, T, D, stride_o, stride_pf, stride_pb, NP, inv_dn,
    eps, rows, cols, SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_NP: tl.constexpr
):
    """``b + sigmoid(pf[u] + pb[j]) * (f - b)`` (fp32) for tokens ``rows`` and channels ``cols``, 0 where masked.

    ``f = out2[u]``, ``j = rev[u]``, ``b = out2[T + j]``; ``pf = f W_f^T + c`` and ``pb = out2[T:] W_b^T`` come from
    two GEMMs on the rows as they lie; the reversed direction's rows are read through ``rev`` here, so neither ``b``
    nor its projection is gathered first. ``SCALED``: the rows of ``out2`` (and so of ``pf``, ``pb``) still lack the
    gated norm's per-row scale ``s`` (``_row_scale``): ``f = s_u f'``, ``b = s_{T+j} b'``,
    ``pf + pb = s_u pf' + s_{T+j} pb' (+ c)``.
    """
    rmask = rows < T
    mask = rmask[:, None] & (cols < D)[None, :]
    u = rows.to(tl.int64)
    j = tl.load(rev_ptr + rows, mask=rmask, other=0).to(tl.int64)
    f = tl.load(out2_ptr + u[:, None] * stride_o + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(out2_ptr + (T + j)[:, None] * stride_o + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    p = tl.load(pf_ptr + u[:, None] * stride_pf + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    pb = tl.load(pb_ptr + j[:, None] * stride_pb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if SCALED:
        sf = _row_scale(ssq_ptr, u, rmask, NP, inv_dn, eps, BLOCK_NP)[:, None]
        sb = _row_scale(ssq_ptr, T + j, rmask, NP, inv_dn, eps, BLOCK_NP)[:, None]
        f = f * sf
        b = b * sb
        p = p * sf + pb * sb
    else:
        p += pb
    if HAS_BIAS:  # (scaled rows, or pf from the batched GEMM without its bias)
        p += tl.load(bias_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    return b + tl.sigmoid(p) * (f - b)


@triton.jit(do_not_specialize=["T"])
def gate_merge_both_kernel(out2_ptr, pf_ptr, pb_ptr, rev_ptr, bias_ptr, ssq_ptr, T, D, stride_o, stride_pf,
    stride_pb, NP, inv_dn, eps, y_ptr, stride_y, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SCALED: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_NP: tl.constexpr
):
    """The merged update ``y`` ``[T, D]`` (``_merge_tile``); grid (token blocks, channel blocks)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    y = _merge_tile(out2_ptr, pf_ptr, pb_ptr, rev_ptr, bias_ptr, ssq_ptr, T, D, stride_o, stride_pf, stride_pb, NP,
        inv_dn, eps, rows, cols, SCALED, HAS_BIAS, BLOCK_NP)
    mask = (rows < T)[:, None] & (cols < D)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["T"])
def gate_merge_add_norm_kernel(out2_ptr, pf_ptr, pb_ptr, rev_ptr, bias_ptr, ssq_ptr, T, D, stride_o, stride_pf,
    stride_pb, NP, inv_dn, eps, res_ptr, r_ptr, h_ptr, w_ptr, stride_res, norm_eps, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr, NORM: tl.constexpr, SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_NP: tl.constexpr
):
    """``r = residual + merge`` (fp32, contiguous ``[T, D]``) and ``h = RMSNorm(r) * w`` (``NORM``).

    Whole rows (``BLOCK_D >= D``) of ``BLOCK_R`` tokens per program.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    y = _merge_tile(out2_ptr, pf_ptr, pb_ptr, rev_ptr, bias_ptr, ssq_ptr, T, D, stride_o, stride_pf, stride_pb, NP,
        inv_dn, eps, rows, cols, SCALED, HAS_BIAS, BLOCK_NP)
    cm = cols < D
    mask = (rows < T)[:, None] & cm[None, :]
    u = rows.to(tl.int64)[:, None]
    r = y + tl.load(res_ptr + u * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(r_ptr + u * D + cols[None, :], r, mask=mask)
    if NORM:
        rstd = tl.rsqrt(tl.sum(r * r, axis=1) / D + norm_eps)
        w = tl.load(w_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        h = r * rstd[:, None] * w[None, :]
        tl.store(h_ptr + u * D + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["T"])
def gate_merge_bwd_kernel(out2_ptr, pf_ptr, pb_ptr, rev_ptr, g_ptr, dout2_ptr, dpf_ptr, dpb_ptr, db_part_ptr, bias_ptr,
    T, D, stride_o, stride_pf, stride_pb, stride_g, HAS_DB: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr
):
    """Backward of ``y = b + sigmoid(pf[u] + pb[j]) * (f - b)`` (unscaled rows) through the gate's elementwise part.

    Writes ``dout2[u] = z g``, ``dout2[T + j] = (1 - z) g`` (the direct terms; the caller adds the GEMM terms) and
    the gradient of the gate's pre-activation ``dp = g (f - b) z (1 - z)`` in the rows of ``pf`` (``dpf[u]``) and
    of ``pb`` (``dpb[j]``). ``HAS_DB``: also this program's column sums of ``dp`` (fp32, before rounding), row
    ``program_id(0)`` of ``db_part`` ``[n_row_blocks, D]``, whose column sums are the gate bias' gradient.
    ``HAS_BIAS``: ``pf`` lacks the gate bias (the batched GEMM's), which is added here.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < T
    mask = rmask[:, None] & (cols < D)[None, :]
    u = rows.to(tl.int64)[:, None]
    j = tl.load(rev_ptr + rows, mask=rmask, other=0).to(tl.int64)[:, None]
    f = tl.load(out2_ptr + u * stride_o + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(out2_ptr + (T + j) * stride_o + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    p = tl.load(pf_ptr + u * stride_pf + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    p += tl.load(pb_ptr + j * stride_pb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        p += tl.load(bias_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
    g = tl.load(g_ptr + u * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.sigmoid(p)
    dp = g * (f - b) * z * (1.0 - z)
    ty = dout2_ptr.dtype.element_ty
    tl.store(dout2_ptr + u * D + cols[None, :], (z * g).to(ty), mask=mask)
    tl.store(dout2_ptr + (T + j) * D + cols[None, :], ((1.0 - z) * g).to(ty), mask=mask)
    tl.store(dpf_ptr + u * D + cols[None, :], dp.to(dpf_ptr.dtype.element_ty), mask=mask)
    tl.store(dpb_ptr + j * D + cols[None, :], dp.to(dpb_ptr.dtype.element_ty), mask=mask)
    if HAS_DB:  # masked rows have g = 0, hence dp = 0
        tl.store(db_part_ptr + tl.program_id(0) * D + cols, tl.sum(dp, axis=0), mask=cols < D)
