"""Bidirectional Mamba-2 block (Bi-Mamba) with per-sequence reversal and a gated merge.

One mixer (shared weights) reads the batch and its per-sequence reversal, concatenated along the
batch axis, so both directions run in one set of kernel launches. With right padding, position ``t``
of a cell of length ``n`` maps to ``n-1-t`` and pads stay at the end (a plain ``flip`` would put the
pads first and run them through the reverse scan's state). The reversal is a gather with an index that
is its own inverse, so the same index maps the backward outputs back.

Blocks
------
``block="prenorm"`` (default)
    ``out = x + merge(mixer(norm(x)), rev(mixer(rev(norm(x)))))``.
``block="official"`` (the published GeneMamba layer: ``Mamba2`` + residual, no norm)
    ``f = x + mixer(x)``, ``b = x + rev(mixer(rev(x)))``, ``out = merge(f, b)``.

Merge modes (``f``, ``b`` the two directions): ``"mean"`` ``(f+b)/2``; ``"sum"`` ``f+b``; ``"concat"``
``W[f; b] + c``; ``"gate"`` ``z*f + (1-z)*b`` with ``z = sigmoid(W[f; b] + c)``. ``W`` is
``Linear(2d, d)``, per layer (``merge``) or one shared by all layers (owned by the encoder).
``bidirectional=False`` runs the forward direction only (``x + mixer(norm(x))`` / ``x + mixer(x)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genemamba_scvi.nn.mamba2 import Mamba2Mixer, RMSNorm

__all__ = [
    "BLOCKS",
    "MERGE_MODES",
    "BiMambaBlock",
    "merge_directions",
    "reversal_index",
    "reversal_index_packed",
    "reverse_sequences",
]

MERGE_MODES = ("gate", "concat", "mean", "sum")
BLOCKS = ("prenorm", "official")


def reversal_index(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Gather index that reverses each right-padded sequence in place.

    Parameters
    ----------
    lengths
        ``[batch]`` real lengths (``0 <= n <= seq_len``).
    seq_len
        Padded length ``L``.

    Returns
    -------
    torch.Tensor
        ``[batch, L]`` int64: ``n-1-t`` for ``t < n`` and ``t`` for pads. Applying it twice is the identity.
    """
    pos = torch.arange(seq_len, device=lengths.device).unsqueeze(0)
    n = lengths.to(torch.long).clamp(0, seq_len).unsqueeze(1)
    return torch.where(pos < n, n - 1 - pos, pos)


def reversal_index_packed(seq_idx: torch.Tensor) -> torch.Tensor:
    """Gather index that reverses every packed sequence (run of equal ``seq_idx``) in place.

    Parameters
    ----------
    seq_idx
        ``[batch, L]`` sequence ids, constant within a sequence.

    Returns
    -------
    torch.Tensor
        ``[batch, L]`` int64: position ``t`` of a segment ``[s, e)`` maps to ``s + e - 1 - t``.
    """
    batch, L = seq_idx.shape
    pos = torch.arange(L, device=seq_idx.device).expand(batch, L)
    change = F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0), value=True)
    # start of the segment holding t: running max of the boundary positions
    start = torch.cummax(torch.where(change, pos, torch.zeros_like(pos)), dim=1).values
    # end (exclusive) of the segment: running min from the right of the next boundary positions
    nxt = F.pad(change[:, 1:], (0, 1), value=True)
    end_cand = torch.where(nxt, pos + 1, torch.full_like(pos, L))
    end = torch.flip(torch.cummin(torch.flip(end_cand, [1]), dim=1).values, [1])
    return start + end - 1 - pos


def reverse_sequences(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder ``x`` ``[batch, L, d]`` along the sequence axis with a ``[batch, L]`` gather index."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def merge_directions(
    h_fwd: torch.Tensor,
    h_bwd: torch.Tensor,
    mode: str = "gate",
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge forward and backward features.

    Parameters
    ----------
    h_fwd, h_bwd
        ``[..., d]``.
    mode
        ``"gate"``: ``z*h_fwd + (1-z)*h_bwd``, ``z = sigmoid(W[h_fwd; h_bwd] + b)``; ``"concat"``:
        ``W[h_fwd; h_bwd] + b``; ``"mean"``; ``"sum"``.
    weight, bias
        ``[d, 2d]`` and ``[d]`` for ``"gate"``/``"concat"``.

    Returns
    -------
    torch.Tensor
        ``[..., d]``.
    """
    if mode == "mean":
        return 0.5 * (h_fwd + h_bwd)
    if mode == "sum":
        return h_fwd + h_bwd
    if mode not in ("gate", "concat"):
        raise ValueError(f"merge must be one of {MERGE_MODES}, got {mode!r}")
    if weight is None:
        raise ValueError(f"merge={mode!r} needs a Linear(2d, d) weight")
    proj = F.linear(torch.cat([h_fwd, h_bwd], dim=-1), weight, bias)
    if mode == "concat":
        return proj
    z = torch.sigmoid(proj)
    return h_bwd + z * (h_fwd - h_bwd)


class BiMambaBlock(nn.Module):
    """One (bi)directional Mamba-2 layer: ``layers.{i}`` of :class:`~genemamba_scvi.nn.GeneMambaEncoder`.

    Parameters
    ----------
    d_model
        Width.
    d_state, d_conv, expand, headdim, ngroups, chunk_size, backend
        Passed to :class:`~genemamba_scvi.nn.mamba2.Mamba2Mixer` (``mixer``).
    bidirectional
        Run the mixer on the sequence and its per-sequence reversal; ``False`` gives the
        unidirectional (causal) ablation.
    merge
        ``"gate"``, ``"concat"``, ``"mean"`` or ``"sum"``.
    shared_merge
        The merge ``Linear(2d, d)`` is owned by the caller (the encoder) and passed to
        :meth:`forward`; this block then has no ``merge`` parameters.
    block
        ``"prenorm"`` (``norm`` + residual around the merge) or ``"official"`` (published layer).
    norm_eps
        RMSNorm epsilon.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        bidirectional: bool = True,
        merge: str = "gate",
        shared_merge: bool = False,
        block: str = "prenorm",
        backend: str = "auto",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.d_model = d_model
        self.bidirectional = bidirectional
        self.merge_mode = merge
        self.shared_merge = shared_merge
        self.block = block
        self.norm = RMSNorm(d_model, eps=norm_eps) if block == "prenorm" else None
        self.mixer = Mamba2Mixer(
            d_model,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            headdim=headdim,
            ngroups=ngroups,
            chunk_size=chunk_size,
            backend=backend,
        )
        needs_linear = bidirectional and merge in ("gate", "concat")
        self.merge = nn.Linear(2 * d_model, d_model) if needs_linear and not shared_merge else None

    @property
    def needs_merge_linear(self) -> bool:
        """Whether the merge mode has a ``Linear(2d, d)``."""
        return self.bidirectional and self.merge_mode in ("gate", "concat")

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        rev_index: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        merge_linear: nn.Linear | None = None,
    ) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x
            ``[batch, L, d_model]``, right-padded.
        lengths
            ``[batch]`` real lengths (default: all ``L``); used to build the reversal index.
        rev_index
            Precomputed reversal index (:func:`reversal_index` or :func:`reversal_index_packed`);
            overrides ``lengths``/``seq_idx`` for the reversal.
        seq_idx
            Packed-sequence ids for the mixer (state resets at boundaries); without ``rev_index`` the
            reversal is per packed sequence.
        merge_linear
            The shared merge layer when ``shared_merge=True``.

        Returns
        -------
        torch.Tensor
            ``[batch, L, d_model]``.
        """
        h = self.norm(x) if self.norm is not None else x
        if not self.bidirectional:
            return x + self.mixer(h, seq_idx=seq_idx)
        batch, L, _ = x.shape
        if rev_index is None:
            if seq_idx is not None:
                rev_index = reversal_index_packed(seq_idx)
            else:
                if lengths is None:
                    lengths = torch.full((batch,), L, dtype=torch.long, device=x.device)
                rev_index = reversal_index(lengths, L)
        both = torch.cat([h, reverse_sequences(h, rev_index)], dim=0)
        both_seq_idx = torch.cat([seq_idx, seq_idx], dim=0) if seq_idx is not None else None
        out = self.mixer(both, seq_idx=both_seq_idx)
        m_fwd, m_bwd = out[:batch], reverse_sequences(out[batch:], rev_index)
        linear = self.merge if self.merge is not None else merge_linear
        if self.needs_merge_linear and linear is None:
            raise ValueError("shared_merge=True: pass the encoder's merge layer as merge_linear")
        weight = linear.weight if linear is not None else None
        bias = linear.bias if linear is not None else None
        if self.block == "official":
            # published layer: each direction is Mamba2(x) + x, then the merge of the two
            return merge_directions(x + m_fwd, x + m_bwd, self.merge_mode, weight, bias)
        return x + merge_directions(m_fwd, m_bwd, self.merge_mode, weight, bias)
