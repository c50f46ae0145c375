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

__all__ = ["GradSlab", "split_projection"]


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
