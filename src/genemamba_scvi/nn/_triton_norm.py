"""Triton kernel: the gated-norm backward of both directions with two-dimensional tiles (:mod:`.fused`).

``gated_norm_both_bwd2d_kernel`` computes what ``_triton_bimamba.gated_norm_both_bwd_kernel`` computes (Mamba-2's
gated RMSNorm ``RMSNorm(y * silu(z)) * w``, ``norm_before_gate=False``, backward for the forward row of token ``u``
and the reversed row anchored at ``u``, both gated by ``z[u]``; ``dz[u]`` sums the two) on ``[tokens, group]``
tiles: the row kernel walks 16 tokens one at a time with one-dimensional vectors, each waiting on its row's
reduction. Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit(do_not_specialize=["T"])
def gated_norm_both_bwd2d_kernel(y_ptr, z_ptr, rev_ptr, w_ptr, rstd_ptr, dn_ptr, dy_ptr, dz_ptr, yn_ptr, dw_part_ptr,
    T, G, n_groups, stride_y, stride_z, stride_dn, stride_dy, stride_dz, stride_yn, BLOCK_R: tl.constexpr,
    ROW_ITERS: tl.constexpr, BLOCK_G: tl.constexpr
):
    """``dy`` (both rows), ``dz`` (per token), the recomputed normalised output ``yn`` and partial dw."""
    pid = tl.program_id(0)
    grp = tl.program_id(1)
    offs = tl.arange(0, BLOCK_G)
    cmask = offs < G
    cols = grp * G + offs
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.float32)
    for it in range(ROW_ITERS):
        u = (pid * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
        um = u < T
        mask = um[:, None] & cmask[None, :]
        u64 = u.to(tl.int64)
        z = tl.load(z_ptr + u64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        sz = tl.sigmoid(z)
        silu_z = z * sz
        dsilu = sz * (1.0 + z * (1.0 - sz))
        dz = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.float32)
        for d in tl.static_range(2):  # the forward row of token u, then the reversed row anchored at u
            if d == 0:
                rows = u64
            else:
                rows = T + tl.load(rev_ptr + u, mask=um, other=0).to(tl.int64)
            y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dn = tl.load(dn_ptr + rows[:, None] * stride_dn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows * n_groups + grp, mask=um, other=0.0)[:, None]
            n = y * silu_z * rstd
            dnw = dn * w
            c1 = tl.sum(n * dnw, axis=1)[:, None] / G
            dxs = (dnw - n * c1) * rstd
            tl.store(dy_ptr + rows[:, None] * stride_dy + cols[None, :], (dxs * silu_z).to(dy_ptr.dtype.element_ty),
                     mask=mask)
            tl.store(yn_ptr + rows[:, None] * stride_yn + cols[None, :], (n * w).to(yn_ptr.dtype.element_ty),
                     mask=mask)
            dz += dxs * y * dsilu
            dw += dn * n
        tl.store(dz_ptr + u64[:, None] * stride_dz + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid * (n_groups * G) + cols, tl.sum(dw, axis=0), mask=cmask)


@triton.jit
def _rows(pid, it, ROW_ITERS: tl.constexpr, BLOCK_R: tl.constexpr, T, D, BLOCK_D: tl.constexpr):
    """Rows of row block ``it`` of program ``pid`` (int64), their mask, the columns and the tile mask."""
    rows = (pid * ROW_ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < T
    return rows.to(tl.int64), rmask, cols, rmask[:, None] & (cols < D)[None, :]


@triton.jit(do_not_specialize=["T"])
def add_rms_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, h_ptr, r_ptr, rstd_ptr, T, D, eps, HAS_RES: tl.constexpr,
    BLOCK_R: tl.constexpr, ROW_ITERS: tl.constexpr, BLOCK_D: tl.constexpr
):
    """``r = x + res`` (fp32, stored), ``h = r * rsqrt(mean(r^2) + eps) * w`` (dtype of ``h``), ``rstd`` per row."""
    pid = tl.program_id(0)
    w = tl.load(w_ptr + tl.arange(0, BLOCK_D), mask=tl.arange(0, BLOCK_D) < D, other=0.0).to(tl.float32)[None, :]
    for it in range(ROW_ITERS):
        rows, rmask, cols, mask = _rows(pid, it, ROW_ITERS, BLOCK_R, T, D, BLOCK_D)
        offs = rows[:, None] * D + cols[None, :]
        r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(r * r, axis=1) / D + eps)
        tl.store(r_ptr + offs, r, mask=mask)
        tl.store(h_ptr + offs, (r * rstd[:, None] * w).to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit(do_not_specialize=["T"])
def add_rms_norm_bwd_kernel(r_ptr, rstd_ptr, w_ptr, dh_ptr, dr_ptr, dx_ptr, dres_ptr, dw_part_ptr, T, D,
    HAS_DR: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_R: tl.constexpr, ROW_ITERS: tl.constexpr,
    BLOCK_D: tl.constexpr
):
    """Gradient of ``r`` (to ``x`` in its dtype, to ``res`` in fp32) from ``dh`` and the stream's ``dr``; dw part."""
    pid = tl.program_id(0)
    w = tl.load(w_ptr + tl.arange(0, BLOCK_D), mask=tl.arange(0, BLOCK_D) < D, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for it in range(ROW_ITERS):
        rows, rmask, cols, mask = _rows(pid, it, ROW_ITERS, BLOCK_R, T, D, BLOCK_D)
        offs = rows[:, None] * D + cols[None, :]
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)[:, None]
        xhat = tl.load(r_ptr + offs, mask=mask, other=0.0) * rstd
        dh = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        wdy = dh * w
        c = tl.sum(xhat * wdy, axis=1)[:, None] / D
        dr = (wdy - xhat * c) * rstd
        if HAS_DR:
            dr += tl.load(dr_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, dr.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_RES:
            tl.store(dres_ptr + offs, dr, mask=mask)
        dw += dh * xhat
    tl.store(dw_part_ptr + pid * D + tl.arange(0, BLOCK_D), tl.sum(dw, axis=0), mask=tl.arange(0, BLOCK_D) < D)
