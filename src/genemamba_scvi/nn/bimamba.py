"""Bidirectional Mamba-2 block (Bi-Mamba) with per-sequence reversal and a gated merge.

One mixer (shared weights) reads the batch and its per-sequence reversal, concatenated along the batch axis, so both
directions run in one set of kernel launches. With right padding, position ``t`` of a cell of length ``n`` maps to
``n-1-t`` and pads stay at the end (a plain ``flip`` would put the pads first and run them through the reverse scan's
state). The reversal is a gather by an index that is its own inverse: the same index maps the backward outputs back.

Blocks
------
``block="prenorm"`` (default)
    ``out = x + merge(mixer(norm(x)), rev(mixer(rev(norm(x)))))``.
``block="official"`` (the published GeneMamba layer: ``Mamba2`` + residual, no norm)
    ``f = x + mixer(x)``, ``b = x + rev(mixer(rev(x)))``, ``out = merge(f, b)``.
``block="official_identity"`` (the published layer of the MineSelf2016/mamba_dev copy, whose ``EncoderLayer.forward``
    computes ``self.mamba(X) + X`` but returns ``X``) ``f = b = x``, ``out = merge(x, x)``; the mixer weights are
    kept (they are in the checkpoint) but never run.

Merge modes (``f``, ``b`` the two directions): ``"mean"`` ``(f+b)/2``; ``"sum"`` ``f+b``; ``"concat"``
``W[f; b] + c``; ``"gate"`` ``z*f + (1-z)*b`` with ``z = sigmoid(W[f; b] + c)``. ``W`` is ``Linear(2d, d)``, per
layer (``merge``) or one shared by all layers (the encoder's). ``bidirectional=False`` runs the forward direction
only (``x + mixer(norm(x))`` / ``x + mixer(x)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from genemamba_scvi.nn.config import GeneMambaConfig, check_choice
from genemamba_scvi.nn.fused import fused_available, gate_merge_add_norm, gate_merge_both, mixer_both, rev_rows
from genemamba_scvi.nn.fused_merge import gate_merge_train
from genemamba_scvi.nn.fused_weights import linear_low
from genemamba_scvi.nn.mamba2 import Mamba2Mixer, RMSNorm
from genemamba_scvi.nn.pooling import check_lengths

__all__ = [
    "BLOCKS",
    "MERGE_MODES",
    "BiMambaBlock",
    "PackedCells",
    "bipack",
    "merge_directions",
    "merge_packed",
    "pack_cells",
    "reversal_index",
    "reversal_index_packed",
    "reverse_sequences",
]

logger = logging.getLogger("genemamba_scvi")
#: Devices on which the fused kernels raised (device -> error): they are not tried again in this process.
_FUSED_FAILED: dict[str, str] = {}


def _fused_usable(device: torch.device) -> bool:
    """Whether this package's Triton kernels may run on ``device`` (CUDA with Triton, no earlier failure there)."""
    return fused_available(device) and str(device) not in _FUSED_FAILED


#: Raised through :func:`_run_fused`: non-reentrant checkpointing ends a layer's recomputation early from inside it
_PASS_THROUGH = tuple(c for c in (getattr(torch.utils.checkpoint, "_StopRecomputationError", None),) if c is not None)


def _run_fused(device: torch.device, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or None after a failure of the Triton kernels (then not tried again on ``device``).

    Out-of-memory errors (the user's to see) and ``_PASS_THROUGH`` (control flow) are raised, not kernel problems.
    """
    try:
        return fn(*args, **kwargs)
    except (torch.cuda.OutOfMemoryError, *_PASS_THROUGH):
        raise
    except Exception as err:  # Triton cannot compile or launch the kernels on this GPU
        key = str(device)
        _FUSED_FAILED[key] = f"{type(err).__name__}: {err}"
        logger.warning(
            "genemamba_scvi: the fused Bi-Mamba kernels failed on %s (%s); using mamba-ssm's layer "
            "from now on in this process (same function, slower)",
            key,
            _FUSED_FAILED[key][:300],
        )
        return None


MERGE_MODES = ("gate", "concat", "mean", "sum")
BLOCKS = ("prenorm", "official", "official_identity")


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


# ----------------------------------------------------------------------------------------------------
# Packed (varlen) batches: the real tokens of all cells in one row, pads never computed
# ----------------------------------------------------------------------------------------------------
@dataclass
class PackedCells:
    """Index tensors of a packed batch of ``n_cells`` cells holding ``n_tokens`` real tokens in all.

    Built by :func:`pack_cells`. Both directions run as one varlen row of ``2 * n_tokens`` tokens: the
    cells in order, then each cell reversed in place (``[c0, c1, ..., rev(c0), rev(c1), ...]``), with
    one sequence id per cell and direction, so the scan state and the causal convolution reset at every
    cell boundary and one mixer call covers both directions.

    Attributes
    ----------
    cu_seqlens
        ``[n_cells + 1]`` int64 cumulative lengths (``cu_seqlens[i]:cu_seqlens[i+1]`` is cell ``i``).
    n_tokens, n_cells
        Sizes (host integers).
    rev
        ``[n_tokens]`` int64 gather index reversing every cell in place (its own inverse).
    both_index
        ``[2 * n_tokens]`` int64: ``[0..T-1, rev]``, builds the two-direction row in one gather.
    seq_idx
        ``[1, n_tokens]`` int32 cell id of every token (forward direction only).
    seq_idx_both
        ``[1, 2 * n_tokens]`` int32: cell ids, then ``n_cells + id`` for the reversed copies.
    cache
        Tensors derived from these indices by the first layer that needs them (the fused kernels' launch order),
        reused by the other layers of the batch; ``"max_seqlen"``, the encoder's bound on a cell's length.
    """

    cu_seqlens: torch.Tensor
    n_tokens: int
    n_cells: int
    rev: torch.Tensor
    both_index: torch.Tensor
    seq_idx: torch.Tensor
    seq_idx_both: torch.Tensor
    cache: dict[str, Any] = field(default_factory=dict, repr=False)


def pack_cells(cu_seqlens: torch.Tensor, n_tokens: int | None = None) -> PackedCells:
    """Index tensors for a packed batch (no host synchronisation when ``n_tokens`` is given).

    Parameters
    ----------
    cu_seqlens
        ``[n_cells + 1]`` cumulative lengths starting at 0 (cells of length 0 are allowed).
    n_tokens
        ``cu_seqlens[-1]`` as a host integer (read from the device when omitted).

    Returns
    -------
    PackedCells
    """
    cu = cu_seqlens.to(torch.long)
    if n_tokens is None:
        n_tokens = int(cu[-1])
    n_cells = cu.numel() - 1
    device = cu.device
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(n_cells, device=device), lengths, output_size=n_tokens)
    pos = torch.arange(n_tokens, device=device)
    rev = cu[:-1].index_select(0, seq) + cu[1:].index_select(0, seq) - 1 - pos
    seq32 = seq.to(torch.int32)
    return PackedCells(
        cu_seqlens=cu,
        n_tokens=n_tokens,
        n_cells=n_cells,
        rev=rev,
        both_index=torch.cat([pos, rev]),
        seq_idx=seq32.unsqueeze(0),
        seq_idx_both=torch.cat([seq32, seq32 + n_cells]).unsqueeze(0),
    )


class _BiPack(torch.autograd.Function):
    """``[h; h[rev]]`` in one gather; backward ``g[:T] + g[T:][rev]`` (no atomics, deterministic)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, both_index: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rev)
        return h.index_select(0, both_index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rev,) = ctx.saved_tensors
        n = rev.shape[0]
        return grad[n:].index_select(0, rev).add_(grad[:n]), None, None


def bipack(h: torch.Tensor, pack: PackedCells) -> torch.Tensor:
    """Two-direction row ``[2T, d]`` from packed tokens ``h`` ``[T, d]``: the cells, then each reversed."""
    return _BiPack.apply(h, pack.both_index, pack.rev)


def merge_packed(
    out2: torch.Tensor,
    rev: torch.Tensor,
    mode: str = "gate",
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge the two halves of a two-direction mixer output (see :func:`bipack`).

    Parameters
    ----------
    out2
        ``[2T, d]``: forward outputs, then the outputs of the reversed cells (in reversed order).
    rev
        ``[T]`` per-cell reversal index (:attr:`PackedCells.rev`).
    mode, weight, bias
        As :func:`merge_directions`.
    residual
        Added to both directions before the merge (the ``"official"`` block), or None.

    Returns
    -------
    torch.Tensor
        ``[T, d]``. ``"gate"`` is computed as ``lerp(b, f, sigmoid(f W_f^T + b W_b^T + c))`` with two
        chained ``addmm`` (no ``[f; b]`` concatenation), the same function as :func:`merge_directions`.
    """
    n = rev.shape[0]
    f = out2[:n]
    b = rev_rows(out2[n:], rev)
    if residual is not None:
        f = residual + f
        b = residual + b
    if mode != "gate":
        return merge_directions(f, b, mode, weight, bias)
    if weight is None:
        raise ValueError("merge='gate' needs a Linear(2d, d) weight")
    d = f.shape[-1]
    w_f, w_b = weight[:, :d].t(), weight[:, d:].t()
    proj = torch.mm(f, w_f) if bias is None else torch.addmm(bias, f, w_f)
    proj = torch.addmm(proj, b, w_b)
    z = torch.sigmoid(proj).to(f.dtype)
    return torch.lerp(b, f, z)


class BiMambaBlock(nn.Module):
    """One (bi)directional Mamba-2 layer: ``layers.{i}`` of :class:`~genemamba_scvi.nn.GeneMambaEncoder`.

    Parameters
    ----------
    d_model
        Width (default: ``config.d_model``).
    config
        The settings (:class:`~genemamba_scvi.nn.config.GeneMambaConfig`); this block uses the Mamba-2
        mixer settings (``d_state``, ``d_conv``, ``expand``, ``headdim``, ``ngroups``, ``chunk_size``,
        ``backend``, passed to :class:`~genemamba_scvi.nn.mamba2.Mamba2Mixer`), ``bidirectional`` (run
        the mixer on the sequence and its per-sequence reversal; ``False`` gives the unidirectional
        ablation), ``merge`` (``"gate"``, ``"concat"``, ``"mean"`` or ``"sum"``), ``shared_merge`` (the
        merge ``Linear(2d, d)`` is owned by the encoder and passed to :meth:`forward`; this block then
        has no ``merge`` parameters), ``block`` (``"prenorm"``: ``norm`` + residual around the merge,
        ``"official"``: published layer, ``"official_identity"``: published layer that returns its
        input; see the module docstring) and ``norm_eps``.
    **settings
        Settings that override those of ``config``.
    """

    def __init__(self, d_model: int | None = None, config: GeneMambaConfig | None = None, **settings: Any):
        super().__init__()
        cfg = (config or GeneMambaConfig()).replace(**settings)
        if d_model is not None:
            cfg = cfg.replace(d_model=d_model)
        d_model, bidirectional, merge, block = cfg.d_model, cfg.bidirectional, cfg.merge, cfg.block
        shared_merge, norm_eps = cfg.shared_merge, cfg.norm_eps
        check_choice("merge", merge, MERGE_MODES)
        check_choice("block", block, BLOCKS)
        self.d_model = d_model
        self.bidirectional = bidirectional
        self.merge_mode = merge
        self.shared_merge = shared_merge
        self.block = block
        self.norm = RMSNorm(d_model, eps=norm_eps) if block == "prenorm" else None
        self.mixer = Mamba2Mixer(
            d_model,
            d_state=cfg.d_state,
            d_conv=cfg.d_conv,
            expand=cfg.expand,
            headdim=cfg.headdim,
            ngroups=cfg.ngroups,
            chunk_size=cfg.chunk_size,
            backend=cfg.backend,
        )
        needs_linear = bidirectional and merge in ("gate", "concat")
        self.merge = nn.Linear(2 * d_model, d_model) if needs_linear and not shared_merge else None

    #: Packed path: project the ``T`` tokens once and gather the projection for both directions (True),
    #: or gather the tokens and project ``2T`` rows (False; same function, the pre-issue-14 path).
    project_once: bool = True
    #: Packed path on the mamba-ssm backend: both directions by :func:`~genemamba_scvi.nn.fused.mixer_both` (conv,
    #: SSD forward and gated norm of both directions read the ``T``-token projection; no ``[2T, d_in_proj]`` gather).
    #: False: gather the projection, call mamba-ssm's ``mamba_split_conv1d_scan_combined``. H200 (24 x 512, bf16,
    #: ``throughput_h200.json``): 981 against 642 cells/s embedded, 231-235k against 205-207k real tokens/s trained.
    fused_both: bool = True
    #: Also use the fused path when gradients are taken (training; +13% on the H200, two seeds).
    fused_both_training: bool = True
    #: In the fused path, run the SSD scan forward as one Triton pass per (head, sequence)
    #: (:func:`~genemamba_scvi.nn.fused.ssd_varlen`; mamba-ssm's backward). False: mamba-ssm's chunked scan.
    fused_ssd: bool = True
    #: In inference with the one-pass SSD, convolve inside the scan (:func:`~genemamba_scvi.nn.fused.ssd_conv_varlen`):
    #: no ``[2T, C]`` row. Off: slower on an H200, the scan bound by its chunk steps' latency, which the taps lengthen
    #: (7.75 ms against 4.97 for conv_both + ssd_varlen; 777 against 1,069 cells/s for the model;
    #: ``benchmarks/results/conv_ssd_sweep_h200.json``, ``throughput_h200_conv_in_scan.json``).
    fused_conv_ssd: bool = False
    #: In inference on a GPU, merge the directions by :func:`~genemamba_scvi.nn.fused.gate_merge_both` (two GEMMs,
    #: one Triton pass): 1,067 against 971 cells/s on an H200 (``results/throughput_h200_merge_ablation.json``).
    fused_merge: bool = True
    #: With the one-pass merge: fold the gated RMSNorm into the scan (:func:`~genemamba_scvi.nn.fused.ssd_varlen_both`
    #: with ``z``), ``out_proj`` and the merge's row scale: 15% less inference memory, same speed on an H200 (4.79
    #: against 4.78 ms for scan + norm + out_proj, ``benchmarks/results/ssd_gated_sweep_h200.json``); off.
    fold_norm: bool = False
    #: In training on a GPU, the ``"gate"`` merge with its own backward (:func:`~.fused_merge.gate_merge_train`).
    fused_merge_training: bool = True
    #: In the encoder's inference on a GPU, the one-pass merge also adds the update to the residual stream and
    #: applies the next block's pre-norm (:meth:`mix_packed_add_norm`).
    merge_add_norm: bool = True

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
        if self.block == "official_identity":
            return self._identity_merge(x, merge_linear)
        h = self.norm(x) if self.norm is not None else x
        if not self.bidirectional:
            return x + self.mixer(h, seq_idx=seq_idx)
        batch, L, _ = x.shape
        if rev_index is None and seq_idx is not None:
            rev_index = reversal_index_packed(seq_idx)
        elif rev_index is None:
            if lengths is not None:  # (a negative length read the cell unreversed, one past L was clamped: nn probe)
                check_lengths(lengths, L, batch)
            rev_index = reversal_index(torch.full((batch,), L, device=x.device) if lengths is None else lengths, L)
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

    def _identity_merge(self, x: torch.Tensor, merge_linear: nn.Linear | None) -> torch.Tensor:
        """The ``"official_identity"`` layer: both directions are the input itself, then the merge."""
        if not self.bidirectional:
            return x
        weight, bias = self._merge_weights(merge_linear)
        return merge_directions(x, x, self.merge_mode, weight, bias)

    # ------------------------------------------------------------------------------------------------
    # Packed (varlen) path
    # ------------------------------------------------------------------------------------------------
    def _merge_weights(self, merge_linear: nn.Linear | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        linear = self.merge if self.merge is not None else merge_linear
        if self.needs_merge_linear and linear is None:
            raise ValueError("shared_merge=True: pass the encoder's merge layer as merge_linear")
        return (linear.weight, linear.bias) if linear is not None else (None, None)

    def mix_packed(self, h: torch.Tensor, pack: PackedCells, merge_linear: nn.Linear | None = None) -> torch.Tensor:
        """Mixer (both directions in one varlen call) and merge on packed, already normalised tokens.

        Parameters
        ----------
        h
            ``[T, d_model]`` packed tokens (the input of the mixer).
        pack
            Index tensors from :func:`pack_cells`.
        merge_linear
            The shared merge layer when ``shared_merge=True``.

        Returns
        -------
        torch.Tensor
            ``[T, d_model]``: the update that the ``"prenorm"`` block adds to its residual stream.
        """
        if not self.bidirectional:
            return self.mixer(h.unsqueeze(0), seq_idx=pack.seq_idx)[0]
        weight, bias = self._merge_weights(merge_linear)
        merged, out2 = self._one_pass_merge(h, pack, weight, bias, gate_merge_both)
        train_merge = self.fused_merge_training and torch.is_grad_enabled() and self.merge_mode == "gate"
        if merged is None and train_merge and _fused_usable(h.device):  # training only: inference has fused_merge
            merged = _run_fused(h.device, gate_merge_train, out2, pack.rev, weight, bias, cache=pack.cache)
        return merged if merged is not None else merge_packed(out2, pack.rev, self.merge_mode, weight, bias)

    def one_pass_merge_applies(self, device: torch.device) -> bool:
        """Whether :meth:`mix_packed` merges in one Triton pass (inference on a GPU, ``"gate"``, ``fused_merge``)."""
        return (
            self.bidirectional
            and self.fused_merge
            and self.merge_mode == "gate"
            and not torch.is_grad_enabled()
            and _fused_usable(device)
        )

    def _one_pass_merge(self, h: torch.Tensor, pack: PackedCells, weight, bias, fn, **kwargs: Any) -> tuple[Any, Any]:
        """The one-pass merge ``fn`` where it applies and runs: ``(fn(out2, rev, weight, bias, ...), None)``.

        Else ``(None, out2)`` with the mixer's usual output, for the torch merge.
        """
        if not self.one_pass_merge_applies(h.device):
            return None, self._mix_both(h, pack)[0]
        out2, ssq = self._mix_both(h, pack, fold_norm=self.fold_norm)
        norm = self.mixer.norm
        merged = _run_fused(h.device, fn, out2, pack.rev, weight, bias, row_ssq=ssq, norm_dim=norm.group_size,
                            norm_eps=norm.eps, **kwargs)  # fmt: skip
        if merged is not None:
            return merged, None
        # rows without the norm's scale (folded): run the mixer again on the fallback path
        return None, (out2 if ssq is None else self._mix_both(h, pack)[0])

    def mix_packed_add_norm(
        self,
        h: torch.Tensor,
        pack: PackedCells,
        residual: torch.Tensor,
        next_norm: RMSNorm | None,
        merge_linear: nn.Linear | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inference: ``r = residual + mix_packed(h)`` and the next block's pre-norm ``next_norm(r)`` together.

        Where the one-pass merge applies, the residual add and the norm run in the merge's pass
        (:func:`~genemamba_scvi.nn.fused.gate_merge_add_norm`); elsewhere in torch. ``r`` is float32 (the residual
        stream of mamba-ssm's fused add + norm, ``residual_in_fp32``), the norm's output is in the dtype of the
        update; None without ``next_norm`` (after the last block).
        """
        weight, bias = self._merge_weights(merge_linear)
        nw, eps = (next_norm.weight, next_norm.eps) if next_norm is not None else (None, 1e-5)
        if self.bidirectional:
            kw = dict(residual=residual, norm_weight=nw, eps=eps)
            out, out2 = self._one_pass_merge(h, pack, weight, bias, gate_merge_add_norm, **kw)
            if out is not None:
                return out
            delta = merge_packed(out2, pack.rev, self.merge_mode, weight, bias)
        else:
            delta = self.mix_packed(h, pack, merge_linear)
        r = residual.float() + delta.float()
        return r, (next_norm(r).to(delta.dtype) if next_norm is not None else None)

    def _mix_both(self, h: torch.Tensor, pack: PackedCells, fold_norm: bool = False) -> tuple[torch.Tensor, Any]:
        """``([2T, d], row_ssq)``: mixer outputs of the cells and of their reversals, in one varlen call.

        ``in_proj`` runs once on the ``T`` tokens and its output is gathered into the two-direction row
        (``in_proj(h)[rev] == in_proj(h[rev])``): half the ``in_proj`` FLOPs of gathering ``h`` first.
        ``row_ssq`` is None unless ``fold_norm`` folded the gated norm (:func:`~genemamba_scvi.nn.fused.mixer_both`).
        """
        zxbcdt = linear_low(h, self.mixer.in_proj, pack.cache) if self.project_once else None  # (in_proj(h))
        use_fused = self.fused_both and (self.fused_both_training or not torch.is_grad_enabled())
        if zxbcdt is not None and use_fused and self.mixer.resolved_backend(h.device) == "mamba_ssm":
            if _fused_usable(h.device):
                cu = pack.cu_seqlens if self.fused_ssd else None
                out2 = _run_fused(h.device, mixer_both, self.mixer, zxbcdt, pack.rev, pack.seq_idx[0],
                                  pack.seq_idx_both, cu_seqlens=cu, conv_in_scan=self.fused_conv_ssd,
                                  batch_cache=pack.cache, fold_norm=fold_norm)  # fmt: skip
                if out2 is not None:
                    return out2 if fold_norm else (out2, None)
        if zxbcdt is None:  # the earlier path, kept for the benchmark's ablation
            out2 = self.mixer(bipack(h, pack).unsqueeze(0), seq_idx=pack.seq_idx_both)[0]
        else:
            out2 = self.mixer.forward_projected(bipack(zxbcdt, pack).unsqueeze(0), seq_idx=pack.seq_idx_both)[0]
        return out2, None

    def forward_packed(self, x: torch.Tensor, pack: PackedCells, merge_linear: nn.Linear | None = None) -> torch.Tensor:
        """The layer on packed tokens ``x`` ``[T, d_model]`` (same function as :meth:`forward` per cell).

        Pads are never computed: the real tokens of all cells form one row, each cell and its reversal
        are two sequences of that row (:func:`pack_cells`), and one mixer call covers both directions.
        """
        if self.block == "prenorm":
            return x + self.mix_packed(self.norm(x), pack, merge_linear)
        if self.block == "official_identity":
            return self._identity_merge(x, merge_linear)
        if not self.bidirectional:
            return x + self.mixer(x.unsqueeze(0), seq_idx=pack.seq_idx)[0]
        out2 = self._mix_both(x, pack)[0]
        weight, bias = self._merge_weights(merge_linear)
        return merge_packed(out2, pack.rev, self.merge_mode, weight, bias, residual=x)
