"""Fused Bi-Mamba mixer: both directions of a packed batch from one projection, no reversed copy of it.

The packed Bi-Mamba layer (:meth:`~genemamba_scvi.nn.bimamba.BiMambaBlock.forward_packed`) runs the Mamba-2
mixer on a two-direction row of ``2T`` tokens: the cells, then each cell reversed in place. The unfused path
gathers the ``[T, d_in_proj]`` projection into a ``[2T, d_in_proj]`` row (``bipack``) and hands it to
mamba-ssm's ``mamba_split_conv1d_scan_combined``. This module computes the same function without that row:

1. ``z, xBC, dt = split(in_proj(h))`` on the ``T`` tokens (one projection);
2. :func:`conv_both`: the causal convolution + SiLU of both directions straight from ``xBC`` ``[T, C]`` into
   ``[2T, C]`` (one Triton kernel; the reversed direction's causal convolution is an anti-causal one over
   the cell, so no reversed copy is read);
3. the SSD scan on ``[2T]``, both directions in one varlen call with the state reset per cell and direction:
   :func:`~genemamba_scvi.nn.fused_ssd.ssd_varlen` (one Triton pass per head and sequence forward; backward:
   mamba-ssm's chunk kernels with the state walks run per sequence, :mod:`genemamba_scvi.nn.fused_ssd_bwd`), or
   mamba-ssm's chunked scan;
4. :func:`gated_norm_out_proj_both`: the gated RMSNorm ``RMSNorm(y * silu(z))`` with the gate read from the
   ``T`` tokens (row ``T + j`` uses token ``rev[j]``), then ``out_proj``; the backward recomputes the
   normalised activations instead of storing them, and writes ``dz`` once per token.

What this saves per token and layer (bf16, d_model 512): the ``[2T, 2192]`` gathered projection and its
backward (about 13 KB of traffic forward, more backward), half of the projection kept for the backward
(4.4 of 8.8 KB), the channel-last causal-conv1d kernel that ``seq_idx`` forces, and the gather of ``z``.

Where things live (launch code -> kernels; kernels are imported on first use, so ``nn`` still imports nothing but
torch): this module -> ``_triton_bimamba`` (conv forward and backward, gated norm), ``_triton_conv`` (the 2-D conv
backward, default in training), ``_triton_norm`` (gated-norm backward tiles; the stream's add + RMSNorm);
``fused_ssd`` -> ``_triton_ssd`` (one-pass scan); ``fused_ssd_bwd`` -> ``_triton_states`` (state walks);
``fused_merge`` -> ``_triton_merge`` (merges, inference and training); ``fused_norm`` -> ``_triton_norm``;
``_launch``: the shared launch helpers. ``tests/test_nn_fused.py`` and ``tests/test_nn_training_kernels.py`` check
every function against a pure-torch reference (on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import genemamba_scvi.nn.fused_split as fused_split
from genemamba_scvi.nn._launch import _cdiv, _kernel_module, _next_pow2
from genemamba_scvi.nn.config import check_choice
from genemamba_scvi.nn.fused_merge import gate_merge_add_norm, gate_merge_both
from genemamba_scvi.nn.fused_split import GradSlab, dt_both, grad_out, partial_sums, split_projection, weight_grad
from genemamba_scvi.nn.fused_ssd import (
    SSD_CONV_FWD_CONFIG,
    SSD_FWD_CONFIG,
    _kernels,
    _split_xbc,
    ssd_conv_varlen,
    ssd_order,
    ssd_varlen,
    ssd_varlen_both,
    ssd_varlen_supports,
)
from genemamba_scvi.nn.fused_weights import cached_low

__all__ = [
    "SSD_CONV_FWD_CONFIG",
    "SSD_FWD_CONFIG",
    "conv_both",
    "fused_available",
    "gate_merge_add_norm",
    "gate_merge_both",
    "gated_norm_out_proj_both",
    "mixer_both",
    "rev_rows",
    "ssd_conv_varlen",
    "ssd_order",
    "ssd_varlen",
    "ssd_varlen_both",
    "ssd_varlen_supports",
]

_CONV_BLOCK = (32, 128)  # rows x channels of the forward conv kernel ("rows")
# conv_both forward: "rows" (one program per block of output rows: the anchor token through rev, one cell-id load per
# tap) or "tokens" (one program per block of tokens writes both directions' rows; taps checked against the cell's
# bounds, given cu_seqlens). H200, 359k tokens (benchmarks/results/conv_fwd_sweep_h200.json): tokens 16x128 (4 warps)
# 1.17 ms (2.07 TB/s), rows 32x128 1.70 ms (1.42 TB/s), best of 9 and 6 shapes.
# "lean" (session 22, off): blocks inside one cell unmasked, a faster SiLU; H100 inference 0.994x the default's time
# (benchmarks/results/infer_ab_s22_lean_256_h100.json; kernel 1.25 against 1.23 ms at each one's best shape).
_CONV_FWD_VARIANT = "tokens"
_CONV_TOK_BLOCK = (16, 128, 4)  # tokens x channels x warps of the "tokens" forward
_CONV_BWD_BLOCK = (16, 64, 8)  # rows x channels x row blocks per program of the conv backward ("v2", "bf16dpre")
# conv_both backward: "v2" (pre-activation gradient of both directions in an fp32 [2T, C] buffer, then dx from it;
# two kernels), "bf16dpre" (the same, the buffer in the dtype of the input), "fused" (one kernel, no buffer: each
# token recomputes the 2K gradients it needs). H200, 359k tokens (benchmarks/results/conv_sweep_v3_h200.json):
# bf16dpre 16x64x8 9.7 ms, fused 32x32x4 (4 warps) 10.8 ms, v2 13.7-14.0 ms at its best shapes.
# "tokens" (given cu_seqlens): "bf16dpre" whose first kernel takes both rows of a token per program, as the "tokens"
# forward: 13.2 ms, slower (benchmarks/results/conv_bwd_sweep_h200.json). "span" (given cu_seqlens): "bf16dpre"
# whose first kernel checks taps against each token's distances to its cell's ends (lo, hi) instead of one cell-id
# load per tap: training 9% slower on an H200 (benchmarks/results/throughput_h200_conv_span.json).
# "rows2d": "bf16dpre" whose first kernel keeps one [rows, channels] tile per tap (nn/_triton_conv.py) instead of one
# [rows, channels, taps] tile; K <= 4, else "bf16dpre". H200, 48 cells (conv_bwd_sweep_s6_h200.json): 0.99 ms at
# 16x64x16 (4 warps) against bf16dpre's best 1.82 ms; training +6.8% (throughput_h200_train_s6.json).
_CONV_BWD_VARIANT = "tokens2d"
# "tokens2d" (given cu_seqlens and K <= 4): "rows2d" whose first kernel takes both rows of a token per program, the
# cell bounds read once per token, the centre tap shared (nn/_triton_conv.py, conv_both_bwd_pre_tok2d_kernel);
# written in session 10 after the second pass's cell-bounds kernel cut that pass by 35%. H200, interleaved A/B
# (benchmarks/results/train_ab_s11_call1_h200.json): step time 0.993x "rows2d"'s (95% interval 0.991-0.998). Without
# cu_seqlens it runs "rows2d"; with K > 4, "tokens".
_CONV_BWD_VARIANTS = ("v2", "bf16dpre", "fused", "tokens", "span", "rows2d", "tokens2d")
#: Second pass of the two-pass conv backward (dx from the pre-activation gradients): taps checked against each
#: token's cell bounds, read once (given cu_seqlens; ``_triton_conv.conv_both_bwd_dx_bounds_kernel``), or one
#: cell-id load per tap and direction (False; an ablation). H200, interleaved A/B: the cell-id pass's step takes
#: 1.016x the time (95% interval 1.009-1.040; benchmarks/results/train_ab_s10_call2_h200.json).
_CONV_DX_BOUNDS = True
#: tokens x channels x warps of that pass. Registers a thread for sm_90a with the launcher's alignment facts
#: (kernel_registers_s14.json): 32 x 128 x 4 170, 16 x 128 x 4 98, 32 x 128 x 8 90, none spill. H200, interleaved
#: A/B against 32 x 128 x 4 (train_ab_s11_call1_h200.json): 16 x 128 x 4 0.994x the step time (0.992-0.997), 32 x
#: 128 x 8 1.028x.
_CONV_DX_BLOCK = (16, 128, 4)
_CONV_BWD_2D_BLOCK = (16, 64, 16, 4)  # rows x channels x row blocks per program x warps ("rows2d")
#: tokens x channels x token blocks per program x warps ("tokens2d"; 128 registers a thread for sm_90a, 233 with 4
#: warps, kernel_registers_s14.json)
_CONV_BWD_TOK2D_BLOCK = (16, 64, 8, 8)
_CONV_BWD_FUSED_BLOCK = (32, 32, 4, 4)  # tokens x channels x token blocks per program x warps ("fused")
# (compiled offline for sm_90 without alignment facts, session 3: 32x64 with 8 warps ~206 registers, no spill;
# 32x64 or 64x64 with 4 warps 255 and spills; not recounted since)
_NORM_BWD_ROWS = 16  # tokens (row pairs) per program of the gated-norm backward ("rows")
#: Gated-norm backward: one token (its two rows) at a time with 1-D vectors ("rows"), or [tokens, group] tiles
#: (``nn/_triton_norm.py``, "tiles2d"). H200, training (throughput_h200_s6.json): tiles of 4 tokens x 8 blocks
#: (8 warps) +0.5% over "rows", 2 x 16 (4 warps) +1.3% over 4 x 8. 2 x 16 / 4 warps spills 856 bytes a thread offline
#: (sm_90a, benchmarks/kernel_registers.py), 1 x 32 (193 registers) does not. H200, interleaved A/B against 2 x 16
#: (train_ab_s11_call1_h200.json): 1 x 32 / 4 warps 0.978x the step time (0.975-0.980), 2 x 16 / 8 warps 0.985x.
_NORM_BWD_VARIANT = "tiles2d"
_NORM_BWD_2D = (1, 32, 4)  # tokens x token blocks per program x warps ("tiles2d")
#: Gated-norm forward: one program per row ("rows"), or per block of tokens writing both rows of each token and
#: reading its gate once ("tokens": 10 instead of 12 bytes moved per channel and token, bf16). "tokens": +2.3%
#: inference and +1.9% training tokens/s on an H200, same run (benchmarks/results/throughput_h200_norm_tok.json).
_NORM_FWD_VARIANT = "tokens"
_NORM_FWD_TOK_ROWS = 2  # tokens per program of the "tokens" forward


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run for tensors on ``device`` (CUDA with Triton)."""
    return torch.device(device).type == "cuda" and _triton_importable()


#: rev_rows' backward as a gather for rows of at least ``_REV_GATHER_MIN_WIDTH`` columns (False: index_select's
#: scatter-add for all; an ablation). Narrow rows (``[T, heads]`` dt) take index_select's own backward, cheaper than
#: a Python autograd function's host time: H200, interleaved A/B (train_ab_s11_call1_h200.json), scatter for every row
#: 0.994x the step time (0.991-0.998). Wide rows (the torch merge's ``[T, d]``): scatter-add 7.3 ms a step (session 5).
_REV_ROWS_GATHER = True
_REV_GATHER_MIN_WIDTH = 128
#: Training: the gradients of z and xBC written by their backward kernels into one buffer of the projection's
#: shape (``nn.fused_split``), not concatenated by autograd's split backward (False: ``torch.split``; an ablation).
_SPLIT_GRAD_IN_PLACE = True


class _RevRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rev)
        return x.index_select(0, rev)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rev,) = ctx.saved_tensors
        return grad.index_select(0, rev), None


def rev_rows(x: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
    """``x[rev]`` for a per-cell reversal index ``rev`` (``PackedCells.rev``, a permutation that is its own inverse).

    For rows of at least ``_REV_GATHER_MIN_WIDTH`` columns the backward is the same gather (``g[rev]``), not
    autograd's scatter-add (``index_add``, atomics): the same values (``rev`` is a permutation, so every row gets one
    addition), deterministic, and a fraction of the time on a GPU. Narrower rows keep autograd's backward, which
    costs less host time than a Python autograd function.
    """
    if not _REV_ROWS_GATHER or (x.dim() > 1 and x.shape[-1] < _REV_GATHER_MIN_WIDTH):
        return x.index_select(0, rev)  # autograd's scatter-add backward: narrow rows, or the ablation
    return _RevRows.apply(x, rev)


# ----------------------------------------------------------------------------------------------------
# Causal convolution of both directions
# ----------------------------------------------------------------------------------------------------
class _ConvBoth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xbc, weight, bias, rev, seq, silu, cu, grad_slab):
        T, C = xbc.shape
        K = weight.shape[-1]
        if xbc.stride(-1) != 1:
            xbc = xbc.contiguous()
        out = torch.empty(2 * T, C, dtype=xbc.dtype, device=xbc.device)
        b = bias if bias is not None else weight
        consts = dict(K=K, HAS_BIAS=bias is not None, SILU=silu)
        check_choice("_CONV_FWD_VARIANT", _CONV_FWD_VARIANT, ("rows", "tokens", "lean"))
        if cu is not None and _CONV_FWD_VARIANT in ("tokens", "lean"):
            br, bc, warps = _CONV_TOK_BLOCK
            _kernels().conv_both_fwd_tok_kernel[(_cdiv(T, br), _cdiv(C, bc))](
                xbc, weight, b, seq, cu, out, T, C, xbc.stride(0), weight.stride(0), out.stride(0), BLOCK_R=br,
                BLOCK_C=bc, num_warps=warps, LEAN=_CONV_FWD_VARIANT == "lean", **consts,
            )  # fmt: skip
        else:
            br, bc = _CONV_BLOCK
            _kernels().conv_both_fwd_kernel[(_cdiv(2 * T, br), _cdiv(C, bc))](
                xbc, weight, b, rev, seq, out, T, C, xbc.stride(0), weight.stride(0), out.stride(0), BLOCK_R=br,
                BLOCK_C=bc, num_warps=4, **consts,
            )  # fmt: skip
        ctx.save_for_backward(xbc, weight, bias, rev, seq, cu)
        ctx.silu, ctx.grad_slab = silu, grad_slab
        return out

    @staticmethod
    def backward(ctx, dout):
        xbc, weight, bias, rev, seq, cu = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        variant = _CONV_BWD_VARIANT
        check_choice("_CONV_BWD_VARIANT", variant, _CONV_BWD_VARIANTS)
        dx = grad_out(ctx.grad_slab, xbc.shape, xbc.dtype, xbc.device)
        if variant == "fused":
            dx, dw_part, db_part = _conv_bwd_fused(xbc, weight, bias, rev, seq, dout, ctx.silu, dx)
        else:
            dpre_dtype = torch.float32 if variant == "v2" else xbc.dtype
            by_token = cu is not None and variant in ("tokens", "tokens2d")
            span = _cell_span(seq, cu) if variant == "span" and cu is not None else None
            two_d = variant in ("rows2d", "tokens2d") and weight.shape[-1] <= 4
            dx, dw_part, db_part = _conv_bwd_two_pass(xbc, weight, bias, rev, seq, dout, ctx.silu, dpre_dtype, cu,
                                                      by_token, span, two_d, dx)  # fmt: skip
        dw = dw_part.sum(0).to(weight.dtype)
        db = db_part.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dw, db, None, None, None, None, None


def _conv_bwd_setup(xbc, weight, bias, rev, seq, dout, silu, n_r):
    """What both backward variants pass their kernel: leading pointers, constants, dW/db partial buffers."""
    C = xbc.shape[1]
    K = weight.shape[-1]
    dw_part = torch.empty(n_r, C, K, dtype=torch.float32, device=xbc.device)
    db_part = torch.empty(n_r, C, dtype=torch.float32, device=xbc.device)
    head = (xbc, weight, bias if bias is not None else weight, rev, seq, dout)
    consts = {"K": K, "KP": _next_pow2(K), "HAS_BIAS": bias is not None, "SILU": silu}
    return head, consts, dw_part, db_part


def _cell_span(seq: torch.Tensor, cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lo[t]``, ``hi[t]`` (int32): the tokens of ``t``'s cell before and after ``t``."""
    t = torch.arange(seq.shape[0], device=seq.device)
    cell = seq.to(torch.long)
    lo = (t - cu.index_select(0, cell)).to(torch.int32)
    hi = (cu.index_select(0, cell + 1) - 1 - t).to(torch.int32)
    return lo, hi


def _conv_bwd_two_pass(
    xbc, weight, bias, rev, seq, dout, silu, dpre_dtype, cu=None, by_token=False, span=None, two_d=False, dx=None
):
    """Backward of ``conv_both`` through a ``[2T, C]`` pre-activation gradient buffer of ``dpre_dtype``.

    ``cu`` (cell starts, or None) and ``by_token``: the buffer is written by token (``conv_both_bwd_pre_tok_kernel``,
    or with ``two_d`` ``_triton_conv.conv_both_bwd_pre_tok2d_kernel``), else by row; ``span`` (``_cell_span``) checks
    the row kernel's taps against the cell's extent; ``two_d`` writes it by row with two-dimensional tiles
    (``_triton_conv.conv_both_bwd_pre2d_kernel``). Given ``cu``, the second pass checks taps against each token's
    cell bounds (``_CONV_DX_BOUNDS``).
    """
    T, C = xbc.shape
    br, bc, iters, warps = (*_CONV_BWD_BLOCK, 4) if not two_d else _CONV_BWD_2D_BLOCK
    if two_d and by_token:
        br, bc, iters, warps = _CONV_BWD_TOK2D_BLOCK
    n_r = max(_cdiv(T if by_token else 2 * T, br * iters), 1)
    head, consts, dw_part, db_part = _conv_bwd_setup(xbc, weight, bias, rev, seq, dout, silu, n_r)
    dpre = torch.empty(2 * T, C, dtype=dpre_dtype, device=xbc.device)
    k = _kernels()
    if two_d:
        consts.pop("KP")
    if by_token:  # head: x, w, b, rev, seq, dout -> the token kernels take seq and cu instead of rev and seq
        kernel = (
            _kernel_module("_triton_conv").conv_both_bwd_pre_tok2d_kernel if two_d else k.conv_both_bwd_pre_tok_kernel
        )
        kernel[(n_r, _cdiv(C, bc))](
            *head[:3], seq, cu, dout, dpre, dw_part, db_part, T, C, xbc.stride(0), weight.stride(0), dout.stride(0),
            BLOCK_R=br, BLOCK_C=bc, ROW_ITERS=iters, num_warps=warps, **consts,
        )  # fmt: skip
    elif two_d:
        _kernel_module("_triton_conv").conv_both_bwd_pre2d_kernel[(n_r, _cdiv(C, bc))](
            *head, dpre, dw_part, db_part, T, C, xbc.stride(0), weight.stride(0), dout.stride(0), BLOCK_R=br,
            BLOCK_C=bc, ROW_ITERS=iters, num_warps=warps, **consts,
        )  # fmt: skip
    else:
        lo, hi = span if span is not None else (seq, seq)
        k.conv_both_bwd_pre_kernel[(n_r, _cdiv(C, bc))](
            *head, dpre, dw_part, db_part, T, C, xbc.stride(0), weight.stride(0), dout.stride(0), lo, hi,
            BLOCK_R=br, BLOCK_C=bc, ROW_ITERS=iters, SPAN=span is not None, num_warps=4, **consts,
        )  # fmt: skip
    dx = torch.empty(T, C, dtype=xbc.dtype, device=xbc.device) if dx is None else dx
    br, bc = _CONV_BLOCK
    if cu is not None and _CONV_DX_BOUNDS:
        br, bc, warps = _CONV_DX_BLOCK
        _kernel_module("_triton_conv").conv_both_bwd_dx_bounds_kernel[(_cdiv(T, br), _cdiv(C, bc))](
            weight, seq, cu, dpre, dx, T, C, weight.stride(0), dx.stride(0), K=consts["K"], BLOCK_R=br,
            BLOCK_C=bc, num_warps=warps,
        )  # fmt: skip
    else:
        k.conv_both_bwd_dx_kernel[(_cdiv(T, br), _cdiv(C, bc))](
            weight, seq, dpre, dx, T, C, weight.stride(0), dx.stride(0), K=consts["K"], BLOCK_R=br, BLOCK_C=bc,
            num_warps=4,
        )  # fmt: skip
    return dx, dw_part, db_part


def _conv_bwd_fused(xbc, weight, bias, rev, seq, dout, silu, dx=None):
    """Backward of ``conv_both`` in one kernel (``_CONV_BWD_FUSED_BLOCK``), no gradient buffer."""
    T, C = xbc.shape
    br, bc, iters, warps = _CONV_BWD_FUSED_BLOCK
    n_r = max(_cdiv(T, br * iters), 1)
    head, consts, dw_part, db_part = _conv_bwd_setup(xbc, weight, bias, rev, seq, dout, silu, n_r)
    dx = torch.empty(T, C, dtype=xbc.dtype, device=xbc.device) if dx is None else dx
    _kernels().conv_both_bwd_fused_kernel[(n_r, _cdiv(C, bc))](
        *head, dx, dw_part, db_part, T, C, xbc.stride(0), weight.stride(0), dout.stride(0), dx.stride(0),
        BLOCK_R=br, BLOCK_C=bc, ROW_ITERS=iters, num_warps=warps, **consts,
    )  # fmt: skip
    return dx, dw_part, db_part


def conv_both(
    xbc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rev: torch.Tensor,
    seq: torch.Tensor,
    silu: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    grad_slab: tuple[GradSlab, int] | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution (+ SiLU) of the cells and of their in-place reversals.

    Parameters
    ----------
    xbc
        ``[T, C]`` packed tokens (a column slice of the projection is fine: rows may be strided).
    weight
        ``[C, K]`` taps (``conv1d.weight[:, 0, :]``), ``bias`` ``[C]`` or None.
    rev
        ``[T]`` int64 per-cell reversal index (``PackedCells.rev``).
    seq
        ``[T]`` int32 cell id of every token.
    silu
        Apply SiLU.
    cu_seqlens
        ``[n_cells + 1]`` cell starts: lets the ``"tokens"`` forward (``_CONV_FWD_VARIANT``) check taps against
        the cell's bounds.
    grad_slab
        ``(slab, i)``: write the gradient of ``xbc`` into block ``i`` of a
        :func:`~genemamba_scvi.nn.fused_split.split_projection` slab (``xbc`` is that block of the projection).

    Returns
    -------
    torch.Tensor
        ``[2T, C]`` in the dtype of ``xbc``: rows ``0..T-1`` the causal convolution of each cell, rows
        ``T..2T-1`` that of each reversed cell (in reversed order); the same as gathering
        ``[x; x[rev]]`` and convolving each sequence.
    """
    cu = cu_seqlens.to(torch.int64).contiguous() if cu_seqlens is not None else None
    return _ConvBoth.apply(xbc, weight, bias, rev, seq.to(torch.int32).contiguous(), silu, cu, grad_slab)


# ----------------------------------------------------------------------------------------------------
# Gated RMSNorm of both directions (gate read from the T tokens) and out_proj
# ----------------------------------------------------------------------------------------------------
class _GatedNormOutProjBoth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, rev, norm_weight, out_weight, out_bias, eps, group_size, grad_slab, w_low):
        n_rows, D = y.shape
        T = z.shape[0]
        if y.stride(-1) != 1:
            y = y.contiguous()
        if z.stride(-1) != 1:
            z = z.contiguous()
        n_groups = D // group_size
        yn = torch.empty_like(y)
        rstd = torch.empty(n_rows * n_groups, dtype=torch.float32, device=y.device)
        args = (y, z, rev, norm_weight, yn, rstd, T, group_size, n_groups, eps, y.stride(0), z.stride(0), yn.stride(0))
        warps = 4 if group_size <= 1024 else 8
        check_choice("_NORM_FWD_VARIANT", _NORM_FWD_VARIANT, ("rows", "tokens"))
        if _NORM_FWD_VARIANT == "tokens" and n_rows == 2 * T:
            br = _NORM_FWD_TOK_ROWS
            _kernels().gated_norm_both_fwd_tok_kernel[(_cdiv(T, br), n_groups)](
                *args, BLOCK_R=br, BLOCK_G=_next_pow2(group_size), num_warps=warps
            )
        else:
            _kernels().gated_norm_both_fwd_kernel[(n_rows, n_groups)](
                *args, BLOCK_G=_next_pow2(group_size), num_warps=warps
            )
        dtype = y.dtype
        w_low = w_low if w_low is not None and w_low.dtype == dtype else out_weight.to(dtype)
        out = F.linear(yn, w_low, out_bias.to(dtype) if out_bias is not None else None)
        ctx.save_for_backward(y, z, rev, norm_weight, rstd, w_low if fused_split._LEAN_LAUNCHES else out_weight)
        ctx.w_dtype = out_weight.dtype
        ctx.has_bias = out_bias is not None
        ctx.bias_dtype = out_bias.dtype if out_bias is not None else None
        ctx.eps, ctx.group_size, ctx.grad_slab = eps, group_size, grad_slab
        return out

    @staticmethod
    def backward(ctx, dout):
        y, z, rev, norm_weight, rstd, out_weight = ctx.saved_tensors
        D = y.shape[1]
        T = z.shape[0]
        G = ctx.group_size
        n_groups = D // G
        dout = dout.contiguous()
        dyn = dout @ out_weight.to(dout.dtype)  # [2T, D] (out_weight: the forward's cast, when lean)
        if dyn.dtype != y.dtype:
            dyn = dyn.to(y.dtype)
        dy = torch.empty_like(y)
        dz = grad_out(ctx.grad_slab, (T, D), z.dtype, z.device)
        yn = torch.empty_like(y)
        check_choice("_NORM_BWD_VARIANT", _NORM_BWD_VARIANT, ("rows", "tiles2d"))
        strides = (y.stride(0), z.stride(0), dyn.stride(0), dy.stride(0), dz.stride(0), yn.stride(0))
        head = (y, z, rev, norm_weight, rstd, dyn, dy, dz, yn)
        if _NORM_BWD_VARIANT == "tiles2d":
            br, iters, warps = _NORM_BWD_2D
            n_prog = max(_cdiv(T, br * iters), 1)
            dw_part = partial_sums(n_prog, D, y.device)  # every (program, group) stores its columns
            _kernel_module("_triton_norm").gated_norm_both_bwd2d_kernel[(n_prog, n_groups)](
                *head, dw_part, T, G, n_groups, *strides, BLOCK_R=br, ROW_ITERS=iters, BLOCK_G=_next_pow2(G),
                num_warps=warps,
            )  # fmt: skip
        else:
            n_prog = max(_cdiv(T, _NORM_BWD_ROWS), 1)
            dw_part = torch.zeros(n_prog, D, dtype=torch.float32, device=y.device)
            _kernels().gated_norm_both_bwd_kernel[(n_prog, n_groups)](
                *head, dw_part, T, G, n_groups, *strides, ROWS=_NORM_BWD_ROWS, RECOMPUTE=True,
                BLOCK_G=_next_pow2(G), num_warps=4 if G <= 1024 else 8,
            )  # fmt: skip
        d_out_weight = weight_grad(dout.t(), yn.to(dout.dtype), ctx.w_dtype)
        d_bias = dout.sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        d_norm_weight = dw_part.sum(0).to(norm_weight.dtype)
        return dy, dz, None, d_norm_weight, d_out_weight, d_bias, None, None, None, None


def gated_norm_out_proj_both(
    y: torch.Tensor,
    z: torch.Tensor,
    rev: torch.Tensor,
    norm_weight: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    group_size: int | None = None,
    grad_slab: tuple[GradSlab, int] | None = None,
    weight_low: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out_proj(RMSNorm_group(y * silu(z_both)) * norm_weight)`` for a two-direction row.

    Parameters
    ----------
    y
        ``[2T, D]`` SSD outputs of the two-direction row.
    z
        ``[T, D]`` gates of the ``T`` tokens (a column slice of the projection is fine); row ``r < T`` is
        gated by ``z[r]``, row ``T + j`` by ``z[rev[j]]``.
    rev
        ``[T]`` int64 per-cell reversal index.
    norm_weight
        ``[D]``; ``eps`` and ``group_size`` (default ``D``) as Mamba-2's ``RMSNormGated``.
    out_weight, out_bias
        ``out_proj`` (``[d_model, D]``, ``[d_model]`` or None), applied in the dtype of ``y``.
    grad_slab
        ``(slab, i)``: write the gradient of ``z`` into block ``i`` of a
        :func:`~genemamba_scvi.nn.fused_split.split_projection` slab.
    weight_low
        ``out_weight`` already cast to the dtype of ``y`` (:mod:`~genemamba_scvi.nn.fused_weights`), or None.

    Returns
    -------
    torch.Tensor
        ``[2T, d_model]`` in the dtype of ``y``.
    """
    group_size = group_size or y.shape[-1]
    return _GatedNormOutProjBoth.apply(
        y, z, rev, norm_weight, out_weight, out_bias, float(eps), int(group_size), grad_slab, weight_low
    )


# ----------------------------------------------------------------------------------------------------
# The whole mixer for both directions
# ----------------------------------------------------------------------------------------------------
Scan = Callable[..., torch.Tensor]


def mixer_both(
    mixer: Any,
    zxbcdt: torch.Tensor,
    rev: torch.Tensor,
    seq: torch.Tensor,
    seq_both: torch.Tensor,
    scan: Scan | None = None,
    cu_seqlens: torch.Tensor | None = None,
    conv_in_scan: bool = True,
    batch_cache: dict[str, torch.Tensor] | None = None,
    fold_norm: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-2 mixer outputs of the cells and of their reversals from the projection of the cells alone.

    Parameters
    ----------
    mixer
        A :class:`~genemamba_scvi.nn.mamba2.Mamba2Mixer` (its parameters are used).
    zxbcdt
        ``[T, d_in_proj]`` ``mixer.in_proj`` of the packed tokens.
    rev, seq
        ``[T]`` per-cell reversal index and ``[T]`` cell ids (``PackedCells.rev``, ``PackedCells.seq_idx[0]``).
    seq_both
        ``[1, 2T]`` int32 sequence ids of the two-direction row (``PackedCells.seq_idx_both``).
    scan
        The SSD chunk scan (``mamba_chunk_scan_combined`` signature, without ``z``). Default: the one-pass
        :func:`ssd_varlen` when ``cu_seqlens`` is given and it supports the sizes, else mamba-ssm's.
    cu_seqlens
        ``[n_cells + 1]`` cell starts (``PackedCells.cu_seqlens``); enables :func:`ssd_varlen`.
    conv_in_scan
        With the one-pass SSD and no gradient to take: convolve inside the scan (:func:`ssd_conv_varlen`, no
        ``[2T, C]`` convolved row) instead of :func:`conv_both` then :func:`ssd_varlen`.
    batch_cache
        A dict that lives as long as the batch (``PackedCells.cache``): the launch order and the two-direction
        ``cu_seqlens`` are computed by the first layer and reused by the others.
    fold_norm
        Return ``(out2, row_ssq)``. Where it applies (one-pass SSD without gradients, the norm in one group,
        no ``out_proj`` bias), the scan gates its own output (:func:`ssd_varlen_both`), ``out_proj`` runs with
        the norm's weight folded in, and ``out2`` lacks the norm's per-row scale, which
        ``gate_merge_both(..., row_ssq=row_ssq)`` applies: the gated norm's pass over ``[2T, d_inner]`` goes.
        Elsewhere ``row_ssq`` is None and ``out2`` is the usual output.

    Returns
    -------
    torch.Tensor
        ``[2T, d_model]``, the same function as ``mixer.forward_projected(bipack(zxbcdt))``; a tuple with
        ``fold_norm`` (see there).
    """
    T = zxbcdt.shape[0]
    d_inner, H, P = mixer.d_inner, mixer.nheads, mixer.headdim
    G, N = mixer.ngroups, mixer.d_state
    conv_w = mixer.conv1d.weight.squeeze(1)  # (a view whose backward is a view: no select_backward fill)
    params = (zxbcdt, conv_w, mixer.A_log, mixer.D, mixer.dt_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)
    sizes = [d_inner, d_inner + 2 * G * N, H]
    slab = None
    if needs_grad and zxbcdt.requires_grad and _SPLIT_GRAD_IN_PLACE:  # backward kernels fill one gradient buffer
        (z, xbc, dt), slab = split_projection(zxbcdt, sizes)
    else:
        z, xbc, dt = torch.split(zxbcdt, sizes, dim=-1)
    cache = batch_cache if batch_cache is not None else {}
    A = cache.get("A", {}).get(id(mixer.A_log))  # every layer's at once (the encoder's neg_exp_a), or this one's:
    A = -torch.exp(mixer.A_log.float()) if A is None else A
    one_pass = scan is None and cu_seqlens is not None and ssd_varlen_supports(P, N)
    kw = dict(nheads=H, headdim=P, ngroups=G, d_state=N, D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True)
    norm, out_proj = mixer.norm, mixer.out_proj
    fold = fold_norm and one_pass and not needs_grad and not conv_in_scan
    fold = fold and norm.group_size == d_inner and not norm.norm_before_gate and out_proj.bias is None
    if one_pass and conv_in_scan and not needs_grad:
        cu = cu_seqlens.to(torch.int64)
        if "order_both" not in cache:
            cache["order_both"] = ssd_order(cu, both=True)
        y = ssd_conv_varlen(xbc, dt, conv_w, mixer.conv1d.bias, A, cu, order=cache["order_both"], **kw)
    else:
        xbc2 = conv_both(xbc, conv_w, mixer.conv1d.bias, rev, seq, silu=True, cu_seqlens=cu_seqlens,
                         grad_slab=(slab, 1) if slab is not None else None)  # fmt: skip
        seq_both = seq_both.to(torch.int32).contiguous()  # inference, one-pass scan: dt read at each row's token
        dt_slab = (slab, 2) if slab is not None else None  # (its backward writes dt's gradient into the slab)
        dt2 = None if one_pass and not needs_grad else dt_both(dt, rev, dt_slab)
        if one_pass and "cu_both" not in cache:
            cu = cu_seqlens.to(torch.int64)
            cache["cu_both"] = torch.cat([cu[:-1], cu + T])  # the cells, then the reversed cells
            cache["order"] = ssd_order(cache["cu_both"])
        if dt2 is None:
            y, ssq = ssd_varlen_both(xbc2, dt, A, cache["cu_both"], z if fold else None, order=cache["order"],
                                     cache=cache, **kw)  # fmt: skip
            if fold:
                w_out = (out_proj.weight.float() * norm.weight.float()).to(y.dtype)  # the norm's weight folded
                return F.linear(y, w_out), ssq
        elif one_pass:
            y = ssd_varlen(xbc2, dt2, A, cache["cu_both"], seq_both, chunk_size=mixer.chunk_size,
                           order=cache["order"], cache=cache, **kw)  # fmt: skip
        else:
            if scan is None:
                from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

                scan = load_mamba_ssm_ops()["chunk_scan"]
            x, B, C = _split_xbc(xbc2, H, P, G, N)
            y = scan(x, dt2.unsqueeze(0), A, B, C, mixer.chunk_size, D=mixer.D, z=None, dt_bias=mixer.dt_bias,
                     dt_softplus=True, seq_idx=seq_both).reshape(2 * T, d_inner)  # fmt: skip
    z_slab = (slab, 0) if slab is not None else None
    w, b = out_proj.weight, out_proj.bias
    out2 = gated_norm_out_proj_both(y, z, rev, norm.weight, w, b, norm.eps, norm.group_size, grad_slab=z_slab,
                                    weight_low=cached_low(cache, w, y.dtype))  # fmt: skip
    return (out2, None) if fold_norm else out2
