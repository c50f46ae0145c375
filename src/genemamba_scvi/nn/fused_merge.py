"""The gated merge of the two directions in inference (``BiMambaBlock.fused_merge``): two GEMMs, then one pass.

``gate_merge_both`` returns the merged update; ``gate_merge_add_norm`` also adds it to the residual stream (fp32)
and applies the next block's pre-norm in the same pass (mamba-ssm's ``rms_norm_fn(prenorm=True,
residual_in_fp32=True)`` with the update kept in fp32). Kernels in ``nn/_triton_merge.py``; no gradients.
``gate_merge_train`` is ``gate_merge_both`` with a backward (training): one elementwise pass, then the GEMMs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import genemamba_scvi.nn.fused_split as fused_split
from genemamba_scvi.nn._launch import _cdiv, _kernel_module, _next_pow2
from genemamba_scvi.nn.fused_split import weight_grad
from genemamba_scvi.nn.fused_weights import cached_low

__all__ = ["gate_merge_add_norm", "gate_merge_both", "gate_merge_train"]


def _kernels() -> Any:
    """The merge's Triton kernels (``_triton_merge``)."""
    return _kernel_module("_triton_merge")


_MERGE_BLOCK = (16, 128)  # tokens x channels per program of the merge kernel (not tuned on a GPU yet)
#: Training merge backward: the gate bias' gradient from per-block column sums written by the backward kernel (False:
#: a column sum of the bf16 ``[T, d]`` pre-activation gradient after it; an ablation).
_MERGE_DB_IN_KERNEL = True
_MERGE_NORM_ROWS = 4  # tokens per program of the merge + residual + norm kernel (whole rows of d channels)
#: The merge's pairs of GEMMs as one batched GEMM each (``bmm`` over the stacked directions, the weight's two halves
#: as a strided batch; the gate bias then added in the merge kernel): forward ``pf``/``pb``; backward the two
#: ``addmm_`` into ``dout2`` and the weight's gradient (two GEMMs, a ``cat`` and a cast become a GEMM and a cast
#: copy). One launch fewer a layer in the forward, three in the backward. Built in session 15 (CPU), not measured on
#: a GPU: off.
_MERGE_BMM = False


def _halves(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``[2, d, d]`` strided views of the halves of a ``[d, 2d]`` merge weight: ``W_k`` (``[out, in]``) or ``W_k^T``."""
    d = w.shape[0]
    return w.view(d, 2, d).permute(1, 2, 0) if transposed else w.view(d, 2, d).permute(1, 0, 2)


def _merge_args(out2, rev, weight, bias, row_ssq, norm_dim, norm_eps, name):
    """The merge's two GEMMs and the leading kernel arguments shared by both merge kernels.

    Returns ``(out2, pf, pb, rev, bias, ssq, T, d, stride_o, stride_pf, stride_pb, NP, inv_dn, eps)`` (``_merge_tile``'s
    arguments) and the constexprs.
    """
    if torch.is_grad_enabled() and (out2.requires_grad or weight.requires_grad):
        raise RuntimeError(f"{name} has no backward: call it under torch.no_grad() / inference_mode()")
    T, d = rev.shape[0], out2.shape[1]
    if out2.stride(-1) != 1:
        out2 = out2.contiguous()
    scaled = row_ssq is not None
    if scaled and (row_ssq.shape[0] != 2 * T or row_ssq.dtype != torch.float32 or not norm_dim):
        raise ValueError("row_ssq must be [2T, n] float32 partial sums of squares, with norm_dim > 0")
    w = weight.to(out2.dtype)
    c = bias.to(out2.dtype) if bias is not None else None
    if _MERGE_BMM and T:  # both directions' rows by one batched GEMM; the kernel adds the bias
        pf, pb = torch.bmm(out2.view(2, T, d), _halves(w, transposed=True)).unbind(0)
        kernel_bias = c is not None
    else:
        pf = F.linear(out2[:T], w[:, :d], None if scaled else c)  # scaled: the bias is added after the row scale
        pb = F.linear(out2[T:], w[:, d:])  # row j belongs to token rev[j]
        kernel_bias = scaled and c is not None
    ssq = row_ssq.contiguous() if scaled else pf
    n_part = ssq.shape[1] if scaled else 1
    args = (out2, pf, pb, rev, c if kernel_bias else pf, ssq, T, d, out2.stride(0), pf.stride(0),
            pb.stride(0), n_part, 1.0 / (norm_dim or 1), float(norm_eps))  # fmt: skip
    consts = dict(SCALED=scaled, HAS_BIAS=kernel_bias, BLOCK_NP=_next_pow2(n_part))
    return args, consts


def gate_merge_both(
    out2: torch.Tensor,
    rev: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    row_ssq: torch.Tensor | None = None,
    norm_dim: int | None = None,
    norm_eps: float = 1e-5,
) -> torch.Tensor:
    """The ``"gate"`` merge of a two-direction row in one pass after two GEMMs (no gradient).

    Parameters
    ----------
    out2
        ``[2T, d]`` mixer outputs: the cells, then each cell reversed in place (``BiMambaBlock._mix_both``).
    rev
        ``[T]`` int64 per-cell reversal index.
    weight, bias
        The merge ``Linear(2d, d)``: ``[d, 2d]`` and ``[d]`` or None.
    row_ssq, norm_dim, norm_eps
        With the norm folded (``mixer_both(..., fold_norm=True)``): ``out2``'s rows still lack the gated norm's
        per-row scale, ``rsqrt(row_ssq[r].sum() / norm_dim + norm_eps)``; it is applied here (it commutes with
        the merge's GEMMs), so the merge reads unscaled rows and projections.

    Returns
    -------
    torch.Tensor
        ``[T, d]`` in the dtype of ``out2``: the same function as
        :func:`~genemamba_scvi.nn.bimamba.merge_packed` with ``mode="gate"`` and no residual, with the gate
        and the interpolation in float32.
    """
    return _merge_launch(out2, rev, weight, bias, row_ssq, norm_dim, norm_eps, "gate_merge_both")[0]


def _merge_launch(out2, rev, weight, bias, row_ssq, norm_dim, norm_eps, name):
    """``gate_merge_both``'s two GEMMs and merge kernel: ``(y, args)``, ``args`` as :func:`_merge_args` returns."""
    T, d = rev.shape[0], out2.shape[1]
    y = torch.empty(T, d, dtype=out2.dtype, device=out2.device)
    br, bd = _MERGE_BLOCK
    args, consts = _merge_args(out2, rev, weight, bias, row_ssq, norm_dim, norm_eps, name)
    if T:
        _kernels().gate_merge_both_kernel[(_cdiv(T, br), _cdiv(d, bd))](
            *args, y, y.stride(0), BLOCK_R=br, BLOCK_D=bd, num_warps=4, **consts
        )
    return y, args


def gate_merge_add_norm(
    out2: torch.Tensor,
    rev: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float = 1e-5,
    row_ssq: torch.Tensor | None = None,
    norm_dim: int | None = None,
    norm_eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gate_merge_both`, the residual add and the next block's RMSNorm in one pass (no gradient).

    Parameters
    ----------
    out2, rev, weight, bias, row_ssq, norm_dim, norm_eps
        As :func:`gate_merge_both`.
    residual
        ``[T, d]`` residual stream (any float dtype; the sum is kept in float32).
    norm_weight, eps
        The next block's ``RMSNorm`` (``[d]``), or None after the last block (no norm computed).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor | None]
        ``r = residual + merge`` ``[T, d]`` float32, and ``RMSNorm(r) * norm_weight`` in the dtype of ``out2`` (None
        without ``norm_weight``): the pre-norm block's residual stream and the next block's input.
    """
    T, d = rev.shape[0], out2.shape[1]
    if residual.shape != (T, d):
        raise ValueError(f"residual must be [T, d] = [{T}, {d}], not {list(residual.shape)}")
    r = torch.empty(T, d, dtype=torch.float32, device=out2.device)
    h = torch.empty(T, d, dtype=out2.dtype, device=out2.device) if norm_weight is not None else None
    args, consts = _merge_args(out2, rev, weight, bias, row_ssq, norm_dim, norm_eps, "gate_merge_add_norm")
    if T:
        residual = residual if residual.stride(-1) == 1 else residual.contiguous()
        br = _MERGE_NORM_ROWS
        _kernels().gate_merge_add_norm_kernel[(_cdiv(T, br),)](
            *args, residual, r, h if h is not None else r, norm_weight if norm_weight is not None else r,
            residual.stride(0), float(eps), BLOCK_R=br, BLOCK_D=_next_pow2(d), NORM=norm_weight is not None,
            num_warps=4, **consts,
        )  # fmt: skip
    return r, h


class _GateMergeTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out2, rev, weight, bias, w_low, b_low):
        # (autograd runs forward without grad, so _merge_args' inference-only check passes)
        w_low = w_low if w_low is not None else weight.to(out2.dtype)  # (its cast kept for the backward)
        b_low = b_low if b_low is not None else bias
        y, (out2, pf, pb, _, kb, *_) = _merge_launch(out2, rev, w_low, b_low, None, None, 0.0, "gate_merge_train")
        ctx.bmm = _MERGE_BMM and rev.shape[0] > 0  # (then pf lacks the bias: kb, which the kernels add)
        kb = kb if ctx.bmm and bias is not None else None
        ctx.save_for_backward(out2, pf, pb, rev, w_low if fused_split._LEAN_LAUNCHES else weight, kb)
        ctx.w_dtype = weight.dtype
        ctx.has_bias, ctx.b_dtype = bias is not None, bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, g):
        out2, pf, pb, rev, weight, kb = ctx.saved_tensors
        T, d = rev.shape[0], out2.shape[1]
        w = weight.to(out2.dtype)
        g = g.contiguous()
        dout2 = torch.empty(out2.shape, dtype=out2.dtype, device=out2.device)  # contiguous: the kernel writes rows of d
        dpfb = torch.empty(2, T, d, dtype=out2.dtype, device=out2.device)  # (stacked: the batched GEMMs read both)
        dpf, dpb = dpfb.unbind(0)
        br, bd = _MERGE_BLOCK
        db_in_kernel = ctx.has_bias and _MERGE_DB_IN_KERNEL and T > 0
        db_part = torch.empty(_cdiv(T, br), d, dtype=torch.float32, device=out2.device) if db_in_kernel else dpf
        if T:
            _kernels().gate_merge_bwd_kernel[(_cdiv(T, br), _cdiv(d, bd))](
                out2, pf, pb, rev, g, dout2, dpf, dpb, db_part, kb if kb is not None else pf, T, d, out2.stride(0),
                pf.stride(0), pb.stride(0), g.stride(0), HAS_DB=db_in_kernel, HAS_BIAS=kb is not None, BLOCK_R=br,
                BLOCK_D=bd, num_warps=4,
            )  # fmt: skip
        # the GEMM terms: out2's rows feed pf (forward rows) and pb (reversed rows) through the two weight halves
        if ctx.bmm:  # one batched GEMM for both halves, and one for the weight's gradient (a cast copy into [d, 2d])
            dout2.view(2, T, d).baddbmm_(dpfb, _halves(w, transposed=False))
            dw = torch.empty(d, 2, d, dtype=ctx.w_dtype, device=out2.device)
            dw.copy_(torch.bmm(dpfb.transpose(1, 2), out2.view(2, T, d)).permute(1, 0, 2))
            dw = dw.view(d, 2 * d)
        else:
            dout2[:T].addmm_(dpf, w[:, :d])
            dout2[T:].addmm_(dpb, w[:, d:])
            dw = _weight_grad_halves(dpf, dpb, out2, T, d, ctx.w_dtype)
        db = None
        if db_in_kernel:  # the kernel's per-block column sums: ~2k x d fp32 instead of a [T, d] bf16 column sum
            db = db_part.sum(0).to(ctx.b_dtype)
        elif ctx.has_bias:
            db = dpf.sum(0, dtype=torch.float32).to(ctx.b_dtype)  # no fp32 copy of dpf
        return dout2, None, dw, db, None, None


def _weight_grad_halves(dpf, dpb, out2, T: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """``[dpf^T out2[:T], dpb^T out2[T:]]`` in ``dtype``: the merge weight's gradient, half by half."""
    if fused_split._LEAN_LAUNCHES and fused_split._GRAD_GEMM_FP32_OUT:  # each half's GEMM writes its columns
        dw = torch.empty(d, 2 * d, dtype=dtype, device=out2.device)
        weight_grad(dpf.t(), out2[:T], dtype, out=dw[:, :d])
        weight_grad(dpb.t(), out2[T:], dtype, out=dw[:, d:])
        return dw
    return torch.cat([dpf.t() @ out2[:T], dpb.t() @ out2[T:]], dim=1).to(dtype)


def gate_merge_train(
    out2: torch.Tensor, rev: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cache: dict | None = None
) -> torch.Tensor:
    """:func:`gate_merge_both` (no folded norm) with a backward, for training.

    The forward is the two GEMMs and the merge kernel; the backward one elementwise pass
    (``gate_merge_bwd_kernel``: the direct terms of both rows and the gate's pre-activation gradient, written in the
    row orders of both projections) and four GEMMs, with no gather, no ``[T, d]`` adds and no concatenation of
    ``[f; b]``.

    Parameters
    ----------
    out2, rev, weight, bias
        As :func:`gate_merge_both`.
    cache
        The batch's cache: the weight and bias already cast to the dtype of ``out2``, when it holds them
        (:mod:`~genemamba_scvi.nn.fused_weights`).

    Returns
    -------
    torch.Tensor
        ``[T, d]`` in the dtype of ``out2``: :func:`~genemamba_scvi.nn.bimamba.merge_packed` with ``mode="gate"``.
    """
    if out2.dim() != 2 or out2.shape[0] != 2 * rev.shape[0] or weight.shape != (out2.shape[1], 2 * out2.shape[1]):
        raise ValueError(f"gate_merge_train: out2 {list(out2.shape)}, rev {list(rev.shape)}, weight "
                         f"{list(weight.shape)} do not match ([2T, d], [T], [d, 2d])")  # fmt: skip
    w_low, b_low = cached_low(cache, weight, out2.dtype), cached_low(cache, bias, out2.dtype)
    return _GateMergeTrain.apply(out2, rev, weight, bias, w_low, b_low)
