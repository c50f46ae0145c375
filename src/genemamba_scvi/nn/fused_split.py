"""The column split of a layer's input projection, with its gradient assembled in place (no concatenation).

A Mamba-2 layer projects each token once and splits the projection into the gate ``z``, the convolved ``xBC`` and
``dt``. Autograd's backward of ``torch.split`` concatenates the three gradients into a new ``[T, d_in_proj]``
tensor: on a training step of 48 cells (~64k tokens, d_in_proj 2192, bf16) that is ~280 MB written and read per
layer. With :func:`split_projection` the backward kernels that produce the gradients of ``z`` and ``xBC``
(:func:`genemamba_scvi.nn.fused.gated_norm_out_proj_both`, :func:`genemamba_scvi.nn.fused.conv_both`) write them
straight into the column blocks of one buffer (:class:`GradSlab`), and the split's backward only copies what did
not arrive there (``dt``'s ``[T, H]`` gradient) before handing the buffer on. Written for this package.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genemamba_scvi.nn._launch import _cdiv, _kernel_module, _next_pow2

__all__ = ["GradSlab", "dt_both", "grad_out", "split_projection"]

#: :func:`dt_both` by one Triton kernel each way (``nn/_triton_rows.py``), or by torch operations (False: an ablation;
#: ``index_select`` + ``cat``, and autograd's zero-fill + ``index_add_`` + slice add + copy into the slab).
_DT_BOTH_KERNEL = True
_DT_BOTH_BLOCK = 256  # tokens per program


class GradSlab:
    """One ``[rows, sum(sizes)]`` gradient buffer whose column blocks producers fill in place.

    Parameters
    ----------
    like
        The projection (shape, dtype and device of the buffer).
    sizes
        Widths of the column blocks, in order.
    """

    def __init__(self, like: torch.Tensor, sizes: Sequence[int]):
        self.shape, self.dtype, self.device = tuple(like.shape), like.dtype, like.device
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + int(s))
        if self.offsets[-1] != self.shape[-1]:
            raise ValueError(f"GradSlab: block widths {list(sizes)} do not add up to {self.shape[-1]} columns")
        self.buf: torch.Tensor | None = None

    def block(self, i: int) -> torch.Tensor:
        """The writable ``[rows, sizes[i]]`` view of block ``i`` (the buffer is allocated on the first call)."""
        if self.buf is None:
            self.buf = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self.buf[:, self.offsets[i] : self.offsets[i + 1]]

    def holds(self, i: int, g: torch.Tensor | None) -> bool:
        """Whether ``g`` is block ``i`` of the buffer itself (written in place by its producer)."""
        if self.buf is None or g is None:
            return False
        view = self.buf[:, self.offsets[i] : self.offsets[i + 1]]
        return g.data_ptr() == view.data_ptr() and g.shape == view.shape and g.stride() == view.stride()

    def take(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The full gradient: the blocks not already in the buffer are copied in (zeros for None).

        The buffer is handed over: the slab lets go of it (a second backward allocates a new one).
        """
        if self.buf is None and all(g is None for g in grads):
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        for i, g in enumerate(grads):
            if not self.holds(i, g):
                blk = self.block(i)
                blk.zero_() if g is None else blk.copy_(g)
        buf, self.buf = self.buf, None
        return buf


class _SplitProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, slab):
        ctx.slab = slab
        off = slab.offsets
        return tuple(proj[:, off[i] : off[i + 1]] for i in range(len(off) - 1))

    @staticmethod
    def backward(ctx, *grads):
        return ctx.slab.take(grads), None


def split_projection(proj: torch.Tensor, sizes: Sequence[int]) -> tuple[tuple[torch.Tensor, ...], GradSlab]:
    """``torch.split(proj, sizes, dim=-1)`` for a ``[rows, d]`` tensor, and the :class:`GradSlab` of its gradient.

    Pass ``(slab, i)`` to the consumer of block ``i`` that can write its input gradient in place (``grad_slab=``
    of :func:`~genemamba_scvi.nn.fused.conv_both` and :func:`~genemamba_scvi.nn.fused.gated_norm_out_proj_both`).

    Returns
    -------
    tuple
        The column views, and the slab.
    """
    if proj.dim() != 2:
        raise ValueError(f"split_projection: expected a [rows, d] projection, got shape {list(proj.shape)}")
    slab = GradSlab(proj, sizes)
    return _SplitProjection.apply(proj, slab), slab


def grad_out(grad_slab: tuple[GradSlab, int] | None, shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Where a backward writes an input's gradient: its block of a ``split_projection`` slab, or a new tensor."""
    if grad_slab is not None:
        slab, i = grad_slab
        blk = slab.block(i)
        if tuple(blk.shape) == tuple(shape) and blk.dtype == dtype:
            return blk
    return torch.empty(shape, dtype=dtype, device=device)


#: Training backward with fewer small launches (session 15; False: session 14's launches, kept as an A/B switch):
#: per-program partial-sum buffers that their kernel stores whole are not zero-filled first, the forward's
#: low-precision weight casts are kept for the backward instead of cast again.
_LEAN_LAUNCHES = True
#: With ``_LEAN_LAUNCHES``: a weight's fp32 gradient straight out of its GEMM (``torch.mm(..., out_dtype=
#: torch.float32)``, cuBLAS accumulating in fp32 as before; the merge weight's two halves written into one buffer, no
#: ``cat``) instead of a bf16 GEMM output and a cast. Off: on an H200 with a new batch for every step (as in
#: training), the same step time at top-2048 x 48 (1.001x, 0.993-1.015) but slower at top-4096 x 24 (tokens/s 273.5k
#: against 286.0k without it; noisy) and in ``throughput.py``'s top-4096 training (0.83x the packed transformer with
#: it on, 1.00x off): ``train_ab_s15_call5_fresh_*_h200.json``, ``NOTES_throughput.md`` section 19.
_GRAD_GEMM_FP32_OUT = False
#: whether this torch build takes ``torch.mm(..., out_dtype=)`` on CUDA, without and with ``out=`` (first use tells)
_MM_OUT_DTYPE: dict[str, bool] = {}


def partial_sums(n: int, d: int, device: torch.device) -> torch.Tensor:
    """``[n, d]`` fp32 per-program partial sums for a kernel that stores every row and column."""
    return (torch.empty if _LEAN_LAUNCHES else torch.zeros)(n, d, dtype=torch.float32, device=device)


def weight_grad(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` in ``dtype``: a weight's gradient from low-precision activations.

    Written into ``out`` when given (a ``[m, n]`` view with unit column stride).
    """
    key = "mm" if out is None else "mm_out"
    low = a.dtype in (torch.bfloat16, torch.float16) and b.dtype == a.dtype and dtype == torch.float32
    if _LEAN_LAUNCHES and _GRAD_GEMM_FP32_OUT and low and a.is_cuda and _MM_OUT_DTYPE.get(key, True):
        try:
            res = torch.mm(a, b, out_dtype=dtype) if out is None else torch.mm(a, b, out_dtype=dtype, out=out)
            _MM_OUT_DTYPE[key] = True
            return res
        except (TypeError, RuntimeError, NotImplementedError):  # an older torch, or no such kernel: cast instead
            _MM_OUT_DTYPE[key] = False
    if out is not None and a.dtype == b.dtype == dtype:
        return torch.mm(a, b, out=out)
    res = (a @ b).to(dtype)
    return res if out is None else out.copy_(res)


class _DtBoth(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dt, rev, grad_slab):
        T, H = dt.shape
        out = torch.empty(2 * T, H, dtype=dt.dtype, device=dt.device)
        _launch_dt_both(dt, rev, out, backward=False)
        ctx.save_for_backward(rev)
        ctx.grad_slab, ctx.shape, ctx.dtype = grad_slab, (T, H), dt.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        (rev,) = ctx.saved_tensors
        dst = grad_out(ctx.grad_slab, ctx.shape, ctx.dtype, grad.device)  # (the projection's buffer, given a slab)
        _launch_dt_both(grad.contiguous(), rev, dst, backward=True)
        return dst, None, None


def _launch_dt_both(src: torch.Tensor, rev: torch.Tensor, dst: torch.Tensor, backward: bool) -> None:
    T = dst.shape[0] if backward else src.shape[0]
    H = src.shape[1]
    if T == 0:
        return
    _kernel_module("_triton_rows").dt_both_kernel[(_cdiv(T, _DT_BOTH_BLOCK),)](
        src, rev, dst, T, H, src.stride(0), dst.stride(0), BACKWARD=backward, BLOCK_T=_DT_BOTH_BLOCK,
        BLOCK_H=_next_pow2(H),
    )  # fmt: skip


def dt_both(dt: torch.Tensor, rev: torch.Tensor, grad_slab: tuple[GradSlab, int] | None = None) -> torch.Tensor:
    """``torch.cat([dt, dt[rev]])``: the ``[2T, H]`` ``dt`` of a two-direction row from the tokens' ``[T, H]``.

    Parameters
    ----------
    dt
        ``[T, H]`` (rows may be strided: the ``dt`` columns of the projection).
    rev
        ``[T]`` per-cell reversal index (``PackedCells.rev``, its own inverse).
    grad_slab
        ``(slab, i)``: the backward writes ``dt``'s gradient into block ``i`` of the projection's
        :class:`GradSlab` (no copy in the split's backward).

    One Triton kernel each way (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``); torch operations with
    ``_DT_BOTH_KERNEL = False``.
    """
    if not _DT_BOTH_KERNEL:
        return torch.cat([dt, dt.index_select(0, rev)])
    if dt.dim() != 2 or dt.stride(-1) != 1:
        raise ValueError(f"dt_both: expected [T, H] with contiguous rows, got shape {list(dt.shape)}")
    return _DtBoth.apply(dt, rev, grad_slab)
