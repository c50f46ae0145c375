"""Residual add + RMSNorm of the pre-norm residual stream in Triton, forward and backward (CUDA or interpreter).

:func:`add_rms_norm` computes what mamba-ssm's ``rms_norm_fn(x, w, None, residual=res, prenorm=True,
residual_in_fp32=True)`` computes for the encoder's stream: ``r = res + x`` in float32 (``r = x`` without
``res``) and ``h = r / sqrt(mean(r^2) + eps) * w`` in the dtype of ``x``; it returns ``(h, r)``. Its kernels
(``nn/_triton_norm.py``) work on ``[rows, d_model]`` tiles. mamba-ssm's backward walks rows one at a time in one
program per SM; on an H200 it took 15.0 ms of a 271 ms training step (``benchmarks/NOTES_throughput.md``,
section 10). RMSNorm: Zhang & Sennrich 2019.
"""

from __future__ import annotations

import torch

from genemamba_scvi.nn._launch import _cdiv, _kernel_module, _next_pow2
from genemamba_scvi.nn.fused_split import partial_sums

_ADD_NORM_BLOCK = (4, 8, 4)  # rows x row blocks per program x warps


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        T, D = x.shape
        x = x.contiguous()
        residual = residual.contiguous() if residual is not None else None
        r = torch.empty(T, D, dtype=torch.float32, device=x.device)
        h = torch.empty_like(x)
        rstd = torch.empty(T, dtype=torch.float32, device=x.device)
        br, iters, warps = _ADD_NORM_BLOCK
        if T:
            _kernel_module("_triton_norm").add_rms_norm_fwd_kernel[(_cdiv(T, br * iters),)](
                x, residual if residual is not None else x, weight, h, r, rstd, T, D, eps,
                HAS_RES=residual is not None, BLOCK_R=br, ROW_ITERS=iters, BLOCK_D=_next_pow2(D), num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(r, rstd, weight)
        ctx.has_res, ctx.x_dtype = residual is not None, x.dtype
        return h, r

    @staticmethod
    def backward(ctx, dh, dr):
        r, rstd, weight = ctx.saved_tensors
        T, D = r.shape
        br, iters, warps = _ADD_NORM_BLOCK
        n_prog = max(_cdiv(T, br * iters), 1)
        dx = torch.empty(T, D, dtype=ctx.x_dtype, device=r.device)
        dres = torch.empty(T, D, dtype=torch.float32, device=r.device) if ctx.has_res else None
        dw_part = partial_sums(n_prog, D, r.device)  # every program stores its row
        if dh is None:
            dh = torch.zeros(T, D, dtype=ctx.x_dtype, device=r.device)
        if T:
            _kernel_module("_triton_norm").add_rms_norm_bwd_kernel[(n_prog,)](
                r, rstd, weight, dh.contiguous(), dr.contiguous() if dr is not None else r, dx,
                dres if dres is not None else dx, dw_part, T, D, HAS_DR=dr is not None, HAS_RES=ctx.has_res,
                BLOCK_R=br, ROW_ITERS=iters, BLOCK_D=_next_pow2(D), num_warps=warps,
            )  # fmt: skip
        return dx, dres, dw_part.sum(0).to(weight.dtype), None


def add_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = True,
    residual_in_fp32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(RMSNorm(residual + x) * weight, residual + x)``: the residual stream's add + norm (see the module).

    Parameters
    ----------
    x
        ``[T, D]`` the update (or the stream itself when ``residual`` is None).
    weight
        ``[D]`` the norm's weight.
    bias
        Must be None (RMSNorm); present for the call signature of mamba-ssm's ``rms_norm_fn``.
    residual
        ``[T, D]`` float32 stream, or None.
    eps
        Added to the mean square.
    prenorm, residual_in_fp32
        Must be True (the only form the encoder uses); present for ``rms_norm_fn``'s call signature.

    Returns
    -------
    tuple of torch.Tensor
        ``h`` ``[T, D]`` in the dtype of ``x`` and the new stream ``r`` ``[T, D]`` float32.
    """
    if bias is not None or not prenorm or not residual_in_fp32:
        raise ValueError("add_rms_norm computes the pre-norm stream only: bias=None, prenorm=True, residual_in_fp32")
    if x.dim() != 2 or (residual is not None and residual.shape != x.shape) or weight.shape != (x.shape[1],):
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)}, residual, weight {tuple(weight.shape)} do not match")
    return _AddRMSNorm.apply(x, residual, weight, eps)
