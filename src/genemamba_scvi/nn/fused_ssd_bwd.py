"""Backward of the packed one-pass SSD on CUDA: mamba-ssm's chunk kernels, with the state passing run per sequence.

:class:`genemamba_scvi.nn.fused_ssd._SSDVarlen` differentiates the SSD with mamba-ssm's chunked backward
(Dao & Gu 2024). mamba-ssm's ``_mamba_chunk_scan_combined_bwd`` passes states across the chunks of the whole packed
row in one serial walk per block of the state (``_state_passing_fwd`` to recompute the states, then
``_state_passing_bwd``); with ~576 chunks in a training batch of 48 cells, those two walks took 18.5 of 271 ms a
step on an H200. :func:`ssd_varlen_bwd` runs the same sequence of mamba-ssm's chunk kernels (the recomputed chunk
states, ``dstates`` from the output gradient, ``dx``, ``dB``, ``dC``, ``d(CB)``, ``ddA`` and the ``dt`` chain) and
replaces only the two state walks by :mod:`genemamba_scvi.nn._triton_states` (one program per run of chunks
between the sequence resets; same values, same layouts).

The intra-chunk ``d(C B^T)`` and the gradient of the cumulative ``dt*A`` come from one pass of our
``ssd_dcb_ddacs_kernel`` (:mod:`genemamba_scvi.nn._triton_ssd_bwd`) instead of mamba-ssm's ``_chunk_scan_bwd_dcb``
and ``_chunk_scan_bwd_ddAcs_stable`` (two passes over the same ``dy . x`` products); its per-position row and
column sums become the gradient of ``dt*A`` through a reverse sum restarted at every sequence of the chunk
(:func:`reverse_sum_by_sequence`). ``_SSD_BWD_DDA``: ``"fused"`` (the default since session 9: a training step
0.948x the time of mamba-ssm's pair, interleaved A/B on an H200, ``benchmarks/results/train_ab_s9_call4_h200.json``)
or ``"mamba"``. (Sessions 7-8 saw NaN gradients with it: the reverse sum then ran over the whole chunk, and the
float32 remainder of later cells' cancelling sums reached a one-token pad cell, whose zero hidden state multiplies
its gradient by ``1/sqrt(eps)`` in every RMSNorm; ``benchmarks/NOTES_throughput.md``, section 13.)

``_SSD_BWD_STATES``: ``"runs"`` (the walks above) or ``"mamba"`` (mamba-ssm's own backward, unchanged). On an
H200, "runs" made a training step 6.4% faster (``benchmarks/results/throughput_h200_train_s6.json``). (The
intra-chunk ``ddA`` from the ``d(CB)`` kernel, which would drop ``_chunk_scan_bwd_ddAcs_stable``, is not an
option: mamba-ssm 2.3 refuses it with ``seq_idx``.) CUDA only (mamba-ssm's kernels); the CPU path differentiates
the pure-torch chunked scan.
"""

from __future__ import annotations

from typing import Any

import torch

from genemamba_scvi.nn._launch import _cdiv, _interpreting, _kernel_module, _next_pow2
from genemamba_scvi.nn.config import check_choice

_SSD_BWD_STATES = "runs"
_STATES_BLOCK = 1024  # elements of the flattened [P * N] state per program of the state walks
_SSD_BWD_DDA = "fused"  # or "mamba" (module docstring)
#: Launch shape of ``ssd_dcb_ddacs_kernel``: rows and columns of a chunk's ``[Q, Q]`` tile per program, warps,
#: pipeline stages. H200, 48 cells (``--sweep-ssd-bwd``, session 7): 64 x 64 with 2 warps the fastest of 42 shapes,
#: 0.87 ms against 1.28 ms for mamba-ssm's two kernels (64 x 32 with 4 warps: 1.04-1.11 ms). ``split``: the decay
#: as a row times a column factor on the tiles below the diagonal (``SPLIT_DECAY``; session 13: 18.0-18.2 -> 16.7 ms a
#: 48-cell step, ``train_ab_s13_call3_48cells_h200.json``).
DCB_DDA_CONFIG = {"BM": 64, "BN": 64, "num_warps": 2, "num_stages": 2, "split": True}
#: The intra-chunk backward: ``"mamba"`` (mamba-ssm's dx kernel, then d(CB) and ddA as ``_SSD_BWD_DDA`` says;
#: the default) or ``"fused"`` (:func:`ssd_chunk_bwd`, one pass; off: on an H200 its kernel is 0.90x mamba-ssm's
#: three at its best launch shape and a training step takes 1.125x the time, ``train_ab_s9_call2_h200.json``).
_SSD_BWD_INTRA = "mamba"
#: Launch shape of ``ssd_chunk_bwd_kernel``: source tokens per program, warps, pipeline stages, and whether the
#: blocks of a chunk's second half visit only its second half's rows (a second launch). H200, 48 cells: 2.88 ms a
#: layer against 2.61 ms for mamba-ssm's three kernels (``ssd_chunk_bwd_s8_call2_h200.json``).
CHUNK_BWD_CONFIG = {"BN": 32, "num_warps": 8, "num_stages": 4, "split_rows": True}
#: ``dx``, ``ddt`` and ``dD`` of the default intra-chunk path: ``"mamba"`` (mamba-ssm's
#: ``_chunk_scan_chunk_state_bwd_dx``) or ``"heads"`` (:func:`ssd_chunk_dx`: the heads of a tile side by side, so a
#: chunk's ``C B^T`` is read from HBM once, not once per head; session 13: same values, not faster on an H200).
_SSD_BWD_DX = "mamba"
#: Launch shape of ``ssd_dx_kernel``: tokens per program, rows of ``dy`` per step, warps, pipeline stages (H200, 48
#: cells, ``ssd_dx_s13_call2_h200.json``: 64 x 64 / 4 warps 0.99 ms against mamba-ssm's 1.01 ms).
DX_CONFIG = {"BM": 64, "BK": 64, "num_warps": 4, "num_stages": 2}
#: The inter-chunk share of the gradient of ``dt*A`` added in the pairs' reverse-sum kernel (``seq_rev_sum_kernel``
#: with ``HAS_INTER``), not by six torch operations (``inter_chunk_dda``; False: an ablation). Session 11.
_DDA_IN_REV_SUM = True
#: ``dB`` and ``dC`` of the chunks' own states straight into ``[1, L, G, N]`` when mamba-ssm's kernels run every head
#: of a group in one program (one "split", always so for a training batch: ``nchunks * H >= 132 * H/G``), instead of
#: its wrappers' ``[1, L, splits, G, N]`` buffer and a sum over the splits (a 33 MB fp32 copy each at 48 cells, 48
#: reduction launches a step). False: mamba-ssm's wrappers (an ablation).
_SSD_NO_SPLIT_SUM = True
#: ``d(C B^T)`` stored by ``ssd_dcb_ddacs`` in the dtype its consumer rounds it to: mamba-ssm's ``_bmm_chunk_bwd``
#: casts both operands of its dot to bf16 when ``B`` / ``C`` are bf16, so an fp32 ``[chunks, Q, Q]`` buffer (200 MB a
#: layer at 48 cells, read twice) carries nothing the dot uses; the same values at half the bytes. False: fp32 (an
#: ablation).
_DCB_IN_DOT_DTYPE = True
#: ``C B^T`` of the chunks recomputed in bf16 (with bf16 ``B``, ``C``) instead of fp32: half of its 200 MB a layer
#: (48 cells) written once and read by the dx and d(CB) passes, but rounded before the decay multiplies it (one more
#: bf16 rounding in ``dx`` and in the pairs' ``ddA``). Session 15 (H200, 48 cells): the step 0.976x the fp32 one's
#: time (0.942-0.991); every parameter gradient of the 24 x 512 step as far from session 6's path as the fp32 one
#: (median relative difference 0.0055 against 0.0049; ``training_grad_check_cb16_s15_h200.json``). False: fp32.
_CB_IN_BF16 = True
#: The cumulative sum of ``_chunk_state_bwd_db``'s ``ddA`` shares over each chunk taken inside the reverse-sum kernel
#: (``seq_rev_sum_kernel`` with ``NEXT_RAW``) instead of a ``torch.cumsum`` (0.31 ms and 24 launches a 48-cell step
#: on an H200, session 14's profile). Session 15 (H200): the same gradients (GPU test); the step 0.997x the cumsum's
#: time (0.973-1.036, unresolved; predicted 0.997-0.999). On for its one launch a layer fewer. False: the cumsum.
_DB_CUMSUM_IN_REV_SUM = True


def _runs() -> Any:
    return _kernel_module("_triton_states")


def state_passing_runs_fwd(states: torch.Tensor, dA_last: torch.Tensor, seq_idx: torch.Tensor, chunk_size: int):
    """States entering every chunk, ``[nchunks, H, dim]`` fp32 (``out[0] = 0``), as mamba-ssm's ``_state_passing_fwd``.

    Parameters
    ----------
    states
        ``[nchunks, H, dim]`` each chunk's own final state (from zero).
    dA_last
        ``[H, nchunks]`` the sum of ``dt * A`` over each chunk.
    seq_idx
        ``[L]`` int32 sequence id of every token of the packed row.
    chunk_size
        Tokens per chunk.
    """
    nchunks, nheads, dim = states.shape
    out = torch.empty(nchunks, nheads, dim, dtype=torch.float32, device=states.device)
    if nchunks:
        _runs().state_passing_runs_fwd_kernel[(_cdiv(dim, _STATES_BLOCK), nchunks, nheads)](
            states, dA_last, seq_idx, out, dim, nchunks, seq_idx.shape[-1], chunk_size, states.stride(0),
            states.stride(1), dA_last.stride(0), dA_last.stride(1), out.stride(0), out.stride(1), BLOCK=_STATES_BLOCK,
        )  # fmt: skip
    return out


def state_passing_runs_bwd(out, dA_last, dout, seq_idx, chunk_size, dtype):
    """Backward of :func:`state_passing_runs_fwd`, as mamba-ssm's ``_state_passing_bwd`` (no initial or final state).

    Returns ``dstates`` ``[nchunks, H, dim]`` in ``dtype`` (entry ``c``: the gradient of the state leaving chunk
    ``c``), ``ddA_last`` ``[H, nchunks]`` fp32 and ``out`` converted to ``dtype``.
    """
    nchunks, nheads, dim = out.shape
    n_blocks = _cdiv(dim, _STATES_BLOCK)
    dstates = torch.empty(nchunks, nheads, dim, dtype=dtype, device=out.device)
    states_lo = torch.empty(nchunks, nheads, dim, dtype=dtype, device=out.device)
    ddA = torch.empty(nheads, nchunks, n_blocks, dtype=torch.float32, device=out.device)
    if nchunks:
        _runs().state_passing_runs_bwd_kernel[(n_blocks, nchunks, nheads)](
            out, dA_last, dout, seq_idx, dstates, ddA, states_lo, dim, nchunks, seq_idx.shape[-1], chunk_size,
            out.stride(0), out.stride(1), dA_last.stride(0), dA_last.stride(1), dout.stride(0), dout.stride(1),
            dstates.stride(0), dstates.stride(1), ddA.stride(0), ddA.stride(1), BLOCK=_STATES_BLOCK,
        )  # fmt: skip
    return dstates, ddA.sum(-1), states_lo


def ssd_dcb_ddacs(x, dt, dA_cs, dy, CB, seq_idx, ddacs, out_dtype=torch.float32):
    """``d(C B^T)`` of the chunks, and the intra-chunk gradient of the cumulative ``dt*A`` added into ``ddacs``.

    Parameters
    ----------
    x, dy
        ``[1, L, H, P]`` the scan's input and output gradient (last dimension contiguous).
    dt, dA_cs
        ``[1, H, nchunks, Q]`` fp32 the per-chunk ``dt`` and cumulative ``dt*A`` (``_chunk_cumsum_fwd``).
    CB
        ``[1, nchunks, G, Q, Q]`` ``C B^T`` per chunk (zero across sequences, as ``_bmm_chunk_fwd`` writes it).
    seq_idx
        ``[1, L]`` int32 sequence ids, or None.
    ddacs
        ``[1, H, nchunks, Q]`` fp32, added into in place (last dimension contiguous).
    out_dtype
        Of the returned ``d(C B^T)`` (summed in fp32, rounded once when stored).

    Returns
    -------
    torch.Tensor
        ``[1, nchunks, G, Q, Q]``, what mamba-ssm's ``_chunk_scan_bwd_dcb`` returns (in fp32). After the call,
        ``ddacs`` holds its old value plus, at each position ``j``, ``sum_n W_jn - sum_m W_mj`` (module docstring
        of :mod:`genemamba_scvi.nn._triton_ssd_bwd`); its reverse cumulative sum over the positions of the same
        sequence (:func:`reverse_sum_by_sequence`) is what ``_chunk_scan_bwd_ddAcs_stable`` returns.
    """
    _, L, H, P = x.shape
    _, nchunks, G, Q, _ = CB.shape
    if x.stride(-1) != 1 or dy.stride(-1) != 1 or ddacs.stride(-1) != 1:
        raise ValueError("ssd_dcb_ddacs: x, dy and ddacs need a contiguous last dimension")
    if dA_cs.shape != (1, H, nchunks, Q) or ddacs.shape != dA_cs.shape or dt.shape != dA_cs.shape:
        raise ValueError(f"ssd_dcb_ddacs: dt {tuple(dt.shape)}, dA_cs {tuple(dA_cs.shape)} and ddacs "
                         f"{tuple(ddacs.shape)} must all be (1, {H}, {nchunks}, {Q})")  # fmt: skip
    dcb = torch.empty(1, nchunks, G, Q, Q, dtype=out_dtype, device=x.device)
    cfg = DCB_DDA_CONFIG
    bm, bn = cfg["BM"], cfg["BN"]
    if nchunks and L:
        _kernel_module("_triton_ssd_bwd").ssd_dcb_ddacs_kernel[(_cdiv(Q, bm) * _cdiv(Q, bn), nchunks, G)](
            x, dy, CB, dt, dA_cs, seq_idx if seq_idx is not None else dt, dcb, ddacs, L, Q, P,
            x.stride(1), x.stride(2), dy.stride(1), dy.stride(2), CB.stride(1), CB.stride(2), CB.stride(3),
            CB.stride(4), dt.stride(1), dt.stride(2), dA_cs.stride(1), dA_cs.stride(2), dcb.stride(1), dcb.stride(2),
            dcb.stride(3), dcb.stride(4), ddacs.stride(1), ddacs.stride(2), HPG=H // G, HAS_SEQ=seq_idx is not None,
            INTERPRET=_interpreting(), BM=bm, BN=bn, BK=max(_next_pow2(P), 16),
            SPLIT_DECAY=cfg.get("split", False), num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )  # fmt: skip
    return dcb


def reverse_sum_by_sequence(
    r: torch.Tensor,
    seq_idx: torch.Tensor | None,
    chunk_size: int,
    inter: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    next_raw: bool = False,
) -> torch.Tensor:
    """The reverse cumulative sum of ``r`` over each chunk, restarted at every sequence (``seq_rev_sum_kernel``).

    ``r`` ``[1, H, nchunks, Q]`` fp32 (per position ``rows_j - cols_j``, see :mod:`._triton_ssd_bwd`); returns the
    same shape: at ``j``, the sum of ``r_k`` over ``k >= j`` in ``j``'s chunk and sequence, which is the gradient of
    ``dt*A`` at ``j`` from the chunk's pairs. A plain reverse cumulative sum over the chunk also adds, at every
    position before a later sequence, that sequence's sum of ``r``: zero in exact arithmetic, a float32 remainder
    in practice. A one-token pad cell of a packed batch, whose hidden state is zero, multiplies the gradient it
    receives by ``1/sqrt(eps)`` in every RMSNorm backward, so that remainder grew to NaN through 18 layers on a
    real 48-cell batch (``benchmarks/NOTES_throughput.md``, section 13).

    ``inter``: ``(prev, last, next)``, the inter-chunk shares (:func:`inter_chunk_dda`), added in the same pass;
    ``next_raw``: ``next`` before its cumulative sum over each chunk, which the kernel then takes.
    """
    _, H, nchunks, Q = r.shape
    if inter is not None and next_raw and seq_idx is None:  # (the torch path takes the summed shares)
        inter = (inter[0], inter[1], inter[2].cumsum(-1))
    if seq_idx is None:
        out = r.flip([-1]).cumsum(dim=-1).flip([-1])
        return out if inter is None else out + inter_chunk_dda(*inter)
    if not r.is_contiguous() or Q != chunk_size or Q & (Q - 1):
        raise ValueError("reverse_sum_by_sequence: r must be contiguous [1, H, nchunks, chunk_size], Q a power of 2")
    out = torch.empty_like(r)
    L = seq_idx.shape[-1]
    prev, last, nxt = inter if inter is not None else (r, r[0, :, :, 0], r)
    if inter is not None and (prev.shape != r.shape or nxt.shape != r.shape or last.shape != (H, nchunks)
                              or prev.stride(-1) != 1 or nxt.stride(-1) != 1):  # fmt: skip
        raise ValueError(
            "reverse_sum_by_sequence: inter needs prev and next shaped as r (last dimension contiguous) "
            f"and last [H, nchunks]; got {tuple(prev.shape)}, {tuple(last.shape)}, {tuple(nxt.shape)}"
        )
    if nchunks and L:
        _kernel_module("_triton_ssd_bwd").seq_rev_sum_kernel[(nchunks, H)](
            r, seq_idx, out, prev, last, nxt, L, r.stride(1), r.stride(2), prev.stride(1), prev.stride(2),
            last.stride(0), last.stride(1), nxt.stride(1), nxt.stride(2), Q=Q, HAS_INTER=inter is not None,
            NEXT_RAW=inter is not None and next_raw, num_warps=4,
        )  # fmt: skip
    return out


def inter_chunk_dda(prev: torch.Tensor, last: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """The inter-chunk share of the gradient of ``dt*A`` (torch; what ``seq_rev_sum_kernel`` adds with ``inter``).

    ``nxt + reverse cumulative sum over the chunk of prev`` with ``last`` added at each chunk's last position:
    ``prev``, ``nxt`` ``[1, H, nchunks, Q]`` (mamba-ssm's ``_chunk_scan_bwd_dC`` and ``_chunk_state_bwd_db``),
    ``last`` ``[H, nchunks]`` (the state walk's backward). ``prev``'s last positions are modified in place.
    """
    prev[..., -1] += last[None]
    return nxt + prev.flip([-1]).cumsum(dim=-1).flip([-1])


def _need_contiguous_last(fn: str, **tensors: torch.Tensor) -> None:
    """Raise naming the first of ``tensors`` whose last dimension is not contiguous (the kernels index it by 1)."""
    for name, t in tensors.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{fn}: {name} needs a contiguous last dimension")


def ssd_chunk_dx(x, dt, dA_cs, B, CB, dy, dstates, D, seq_idx, dx):
    """``dx``, ``ddt`` and ``dD`` of the chunked SSD (``ssd_dx_kernel``), as mamba-ssm's dx kernel returns them.

    Same arguments, in the same order, as mamba-ssm's ``_chunk_scan_chunk_state_bwd_dx``; ``dx`` is written.

    Parameters
    ----------
    x, dy
        ``[1, L, H, P]`` the scan's input and output gradient (last dimension contiguous).
    dt, dA_cs
        ``[1, H, nchunks, Q]`` fp32 the per-chunk ``dt`` and cumulative ``dt*A`` (``_chunk_cumsum_fwd``).
    B
        ``[1, L, G, N]`` (last dimension contiguous).
    CB
        ``[1, nchunks, G, Q, Q]`` ``C B^T`` per chunk.
    dstates
        ``[1, nchunks, H, P, N]`` gradient of the state leaving each chunk.
    D
        ``[H]`` or None.
    seq_idx
        ``[1, L]`` int32 sequence ids, or None.
    dx
        ``[1, L, H, P]``, written.

    Returns
    -------
    tuple
        ``dx``; ``ddt`` ``[1, H, nchunks, Q]`` fp32 (zero past the row); ``dD`` ``[H]`` in ``D``'s dtype, or None.
    """
    _, L, H, P = x.shape
    _, nchunks, G, Q, _ = CB.shape
    N = B.shape[-1]
    _need_contiguous_last("ssd_chunk_dx", x=x, dy=dy, B=B, dx=dx, dt=dt, dA_cs=dA_cs)
    if D is not None and D.dim() != 1:
        raise ValueError("ssd_chunk_dx: D must have one value per head")
    cfg = DX_CONFIG
    bm, bk = min(cfg["BM"], Q), min(cfg["BK"], Q)
    if Q & (Q - 1) or P & (P - 1) or N & (N - 1) or Q % bm or Q % bk or min(bm, bk, P, N) < 16:
        raise ValueError(f"ssd_chunk_dx: chunk {Q}, head dim {P} and state {N} must be powers of two of at least 16, "
                         f"the chunk a multiple of BM={bm} and BK={bk} (at least 16)")  # fmt: skip
    n_prog = nchunks * (Q // bm) * H
    ddt = torch.empty(1, H, nchunks, Q, dtype=torch.float32, device=x.device)
    dd = torch.empty(n_prog, dtype=torch.float32, device=x.device) if D is not None else None
    if n_prog:
        _kernel_module("_triton_ssd_dx").ssd_dx_kernel[(n_prog,)](
            x, dy, B, CB, dt, dA_cs, seq_idx if seq_idx is not None else dt, dstates, D if D is not None else dt,
            dx, ddt, dd if dd is not None else dt, L,
            x.stride(1), x.stride(2), dy.stride(1), dy.stride(2), B.stride(1), B.stride(2),
            CB.stride(1), CB.stride(2), CB.stride(3), CB.stride(4), dt.stride(1), dt.stride(2),
            dA_cs.stride(1), dA_cs.stride(2), dstates.stride(1), dstates.stride(2), dstates.stride(3),
            dstates.stride(4), dx.stride(1), dx.stride(2),
            H=H, HPG=H // G, Q=Q, P=P, N=N, BM=bm, BK=bk, HAS_SEQ=seq_idx is not None, HAS_D=D is not None,
            INTERPRET=_interpreting(), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    dD = dd.view(-1, H).sum(0).to(D.dtype) if dd is not None else None
    return dx, ddt, dD


def ssd_chunk_bwd(x, dy, B, CB, dt, dA_cs, seq_idx, dstates, D, dx):
    """The intra-chunk backward of the SSD in one pass (``ssd_chunk_bwd_kernel``).

    Returns what mamba-ssm's ``_chunk_scan_chunk_state_bwd_dx`` (``dx`` written into the given buffer, ``ddt``,
    ``dD``) and ``_chunk_scan_bwd_dcb`` (``dCB``) return, and ``dda_raw`` ``[1, H, nchunks, Q]`` fp32: at each
    position the gradient of the cumulative ``dt*A`` from the intra-chunk pairs, whose reverse cumulative sum over
    the positions of the same sequence (:func:`reverse_sum_by_sequence`) is what ``_chunk_scan_bwd_ddAcs_stable``
    returns.

    Parameters
    ----------
    x, dy
        ``[1, L, H, P]`` the scan's input and output gradient (last dimension contiguous).
    B
        ``[1, L, G, N]``.
    CB
        ``[1, nchunks, G, Q, Q]`` fp32 ``C B^T`` per chunk (contiguous).
    dt, dA_cs
        ``[1, H, nchunks, Q]`` fp32 (``_chunk_cumsum_fwd``; contiguous).
    seq_idx
        ``[1, L]`` int32 sequence ids, or None.
    dstates
        ``[1, nchunks, H, P, N]`` gradient of the state leaving each chunk.
    D
        ``[H]`` or None.
    dx
        ``[1, L, H, P]`` written.
    """
    _, L, H, P = x.shape
    _, nchunks, G, Q, _ = CB.shape
    N = B.shape[-1]
    _need_contiguous_last("ssd_chunk_bwd", x=x, dy=dy, B=B, dx=dx)
    if not (CB.is_contiguous() and dt.is_contiguous() and dA_cs.is_contiguous()):
        raise ValueError("ssd_chunk_bwd: CB, dt and dA_cs must be contiguous")
    if D is not None and D.dim() != 1:
        raise ValueError("ssd_chunk_bwd: D must have one value per head")
    cfg = CHUNK_BWD_CONFIG
    bn = min(cfg["BN"], Q)
    if Q % bn or Q & (Q - 1):
        raise ValueError(f"ssd_chunk_bwd: chunk size {Q} must be a power of two and a multiple of BN={bn}")
    n_blocks = Q // bn
    dev = x.device
    ddt = torch.empty_like(dt)
    cols = torch.empty_like(dt)
    dcb = torch.empty_like(CB)
    rows = torch.zeros(nchunks, n_blocks, H, Q, dtype=torch.float32, device=dev)
    dd = torch.empty(nchunks, n_blocks, H, dtype=torch.float32, device=dev) if D is not None else None
    # blocks of the chunk's first half visit all rows; those of the second half only the second half's rows
    half = Q // 2 if (cfg.get("split_rows", True) and Q >= 2 * bn and (Q // 2) % bn == 0) else 0
    launches = [(0, half // bn, 0), (half // bn, n_blocks - half // bn, half)] if half else [(0, n_blocks, 0)]
    if nchunks and L:
        kernel = _kernel_module("_triton_ssd_chunk_bwd").ssd_chunk_bwd_kernel
        for nb0, count, row0 in launches:
            kernel[(count, nchunks, G)](
                x, dy, B, CB, dt, dA_cs, seq_idx if seq_idx is not None else dt, dstates,
                D if D is not None else dt, dx, ddt, dd if dd is not None else dt, dcb, rows, cols, L, nb0,
                x.stride(1), x.stride(2), dy.stride(1), dy.stride(2), B.stride(1), B.stride(2),
                CB.stride(1), CB.stride(2), CB.stride(3), CB.stride(4), dt.stride(1), dt.stride(2),
                dA_cs.stride(1), dA_cs.stride(2), dstates.stride(1), dstates.stride(2), dstates.stride(3),
                dstates.stride(4), dx.stride(1), dx.stride(2),
                HPG=H // G, Q=Q, P=P, N=N, BN=bn, ROW0=row0, HAS_SEQ=seq_idx is not None, HAS_D=D is not None,
                INTERPRET=_interpreting(), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )  # fmt: skip
    dda_raw = (rows.sum(1).transpose(0, 1) - cols[0])[None]
    dD = dd.sum((0, 1)).to(D.dtype) if dd is not None else None
    return ddt, dD, dcb, dda_raw


def _own_state_grad(kind: str, a, st, bc, dA_cs, seq_idx, dt=None, cumsum: bool = True):
    """``dB`` or ``dC`` of the chunks' own states, with their share of the gradient of the cumulative ``dt*A``.

    ``kind="db"``: ``a = x``, ``st = dstates``, ``bc = B``, given ``dt``; ``"dc"``: ``a = dy``, ``st`` the states
    entering each chunk, ``bc = C``. mamba-ssm's ``_chunk_state_bwd_db`` / ``_chunk_scan_bwd_dC`` without their sum
    over head splits, called only when there is one split; else their wrappers. Same kernels (with their autotuned
    configurations and zero-filling pre-hooks), same arguments. ``cumsum=False`` (``"db"``): the ``ddA`` shares
    are returned before their cumulative sum over the chunk where this launches the kernel itself.

    Returns ``(grad, ddA, summed)``: ``summed`` says whether ``ddA`` holds the cumulative sums.
    """
    from mamba_ssm.ops.triton import ssd_chunk_scan, ssd_chunk_state
    from mamba_ssm.utils.determinism import alloc_tile_workspace, finalize_tile_workspace, use_deterministic_mode

    batch, seqlen, nheads, headdim = a.shape
    nchunks, Q = dA_cs.shape[2], dA_cs.shape[3]
    ngroups, dstate = bc.shape[2], bc.shape[3]
    ratio = nheads // ngroups
    n_sm = torch.cuda.get_device_properties(a.device).multi_processor_count
    per_program = max(min(_cdiv(batch * nchunks * nheads, n_sm), ratio), 1)  # (as mamba-ssm chooses it)
    if not _SSD_NO_SPLIT_SUM or per_program < ratio:
        if kind == "db":
            grad, dda = ssd_chunk_state._chunk_state_bwd_db(a, dt, dA_cs, st, seq_idx=seq_idx, B=bc, ngroups=ngroups)
        else:
            grad, dda = ssd_chunk_scan._chunk_scan_bwd_dC(st, dA_cs, a, seq_idx=seq_idx, C=bc, ngroups=ngroups)
        return grad, dda, True
    det = use_deterministic_mode()
    mod, name = (ssd_chunk_state, "STATE_BWD_DB") if kind == "db" else (ssd_chunk_scan, "SCAN_BWD_DC")
    tiles = _cdiv(dstate, getattr(mod, f"_CHUNK_{name}_MIN_BLOCK_N"))
    dda, stride_tile = alloc_tile_workspace((batch, nheads, nchunks, Q), tiles, torch.float32, a.device, det)
    out = torch.empty(batch, seqlen, 1, ngroups, dstate, device=a.device, dtype=torch.float32)
    t_strides = (0, 2, 1, 3)  # dt, dA_cs and ddA are [b, H, c, Q]; the kernels take (batch, chunk, head, position)
    args = [a, st, bc, *([dt] if dt is not None else []), dA_cs, seq_idx, out, dda, Q, dstate, headdim, batch, seqlen,
            nheads, ratio, ngroups, *a.stride(), *st.stride(), *bc.stride(),
            *([dt.stride(i) for i in t_strides] if dt is not None else []), *(dA_cs.stride(i) for i in t_strides),
            *((seq_idx.stride(0), seq_idx.stride(1)) if seq_idx is not None else (0, 0)), *out.stride(),
            *(dda.stride(i) for i in t_strides), stride_tile]  # fmt: skip
    kernel = ssd_chunk_state._chunk_state_bwd_db_kernel if kind == "db" else ssd_chunk_scan._chunk_scan_bwd_dc_kernel

    def grid(meta):
        return (_cdiv(Q, meta["BLOCK_SIZE_M"]) * _cdiv(dstate, meta["BLOCK_SIZE_N"]), batch * nchunks, ngroups)

    with torch.cuda.device(a.device.index):
        kernel[grid](*args, HAS_DDA_CS=True, HAS_SEQ_IDX=seq_idx is not None, DETERMINISTIC_REDUCTION=det,
                     BLOCK_SIZE_K=max(_next_pow2(headdim), 16))  # fmt: skip
    dda = finalize_tile_workspace(dda, det)
    if kind == "db" and cumsum:  # (as mamba-ssm: the first position's share is zero; a sum over all is the same)
        torch.cumsum(dda, dim=-1, out=dda)
    return out[:, :, 0], dda, kind == "dc" or cumsum


def ssd_varlen_bwd(dy, x, dt, A, B, C, chunk_size, D, dt_bias, seq_idx, dt_softplus, dx, dB, dC):
    """Gradients of the packed SSD (no gate, no initial state).

    Returns ``ddt`` ``[1, L, H]``, ``dA``, ``dD``, ``ddt_bias``; ``dx``, ``dB``, ``dC`` are written into the given
    buffers.

    Shapes as mamba-ssm's ``_mamba_chunk_scan_combined_bwd`` (batch 1): ``dy``, ``x`` ``[1, L, H, P]``, ``dt``
    ``[1, L, H]``, ``B``, ``C`` ``[1, L, G, N]``, ``seq_idx`` ``[1, L]``.
    """
    from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state, ssd_combined

    check_choice("_SSD_BWD_STATES", _SSD_BWD_STATES, ("runs", "mamba"))
    check_choice("_SSD_BWD_DDA", _SSD_BWD_DDA, ("fused", "mamba"))
    check_choice("_SSD_BWD_INTRA", _SSD_BWD_INTRA, ("fused", "mamba"))
    check_choice("_SSD_BWD_DX", _SSD_BWD_DX, ("heads", "mamba"))
    if _SSD_BWD_STATES == "mamba":
        _, ddt, dA, _, _, dD, _, ddt_bias, _ = ssd_combined._mamba_chunk_scan_combined_bwd(
            dy, x, dt, A, B, C, x, chunk_size, D=D, dt_bias=dt_bias, seq_idx=seq_idx, dt_softplus=dt_softplus,
            dx=dx, dB=dB, dC=dC,
        )  # fmt: skip  # "out" (x here) is only read with z
        return ddt, dA, dD, ddt_bias
    nheads, headdim = x.shape[2], x.shape[3]
    ngroups, dstate = B.shape[2], B.shape[3]
    dt_in = dt  # read only by both cumsum kernels (mamba-ssm's combined backward clones it; no need)
    # forward quantities, recomputed: cumulative dt*A per chunk, C B^T per chunk, each chunk's own state
    dA_cs, dt_c = ssd_chunk_state._chunk_cumsum_fwd(dt_in, A, chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus)
    low_cb = _CB_IN_BF16 and _SSD_BWD_INTRA == "mamba" and C.dtype == B.dtype == torch.bfloat16
    CB = ssd_bmm._bmm_chunk_fwd(C, B, chunk_size, seq_idx=seq_idx, output_dtype=C.dtype if low_cb else torch.float32)
    own = ssd_chunk_state._chunk_state_fwd(B, x, dt_c, dA_cs, seq_idx=seq_idx, states_in_fp32=True)  # [1, c, H, P, N]
    nchunks = own.shape[1]
    seq = seq_idx[0]
    dA_last = dA_cs[0, :, :, -1]  # [H, nchunks]
    states = state_passing_runs_fwd(own[0].reshape(nchunks, nheads, -1), dA_last, seq, chunk_size)
    # gradient of the state entering every chunk, from the outputs; then back through the state walk
    dstates_in = ssd_chunk_scan._chunk_scan_bwd_dstates(C, dA_cs, dy, seq_idx=seq_idx, dtype=states.dtype)
    dstates, ddA_last, states_lo = state_passing_runs_bwd(
        states, dA_last, dstates_in[0].reshape(nchunks, nheads, -1), seq, chunk_size, x.dtype
    )
    dstates = dstates.view(1, nchunks, nheads, headdim, dstate)
    states_lo = states_lo.view(1, nchunks, nheads, headdim, dstate)
    fold = _DB_CUMSUM_IN_REV_SUM and _SSD_BWD_INTRA != "fused" and _SSD_BWD_DDA == "fused" and _DDA_IN_REV_SUM
    dB_own, ddA_next, summed = _own_state_grad("db", x, dstates, B, dA_cs, seq_idx, dt=dt_c, cumsum=not fold)
    dC_own, ddA_prev, _ = _own_state_grad("dc", dy, states_lo, C, dA_cs, seq_idx)
    # d(cumulative dt*A): the state read at each chunk's start, through the walk's scale, enters at the last
    # position of the chunk; a reverse cumulative sum turns it into d(dt*A) at each position (inter_chunk_dda, or
    # in the reverse-sum kernel of the pairs' share)
    inter = (ddA_prev, ddA_last, ddA_next)
    if _SSD_BWD_INTRA == "fused":  # dx, ddt, dD, d(CB) and the pairs' ddA from one pass (ssd_chunk_bwd)
        ddt, dD, dCB, dda_raw = ssd_chunk_bwd(x, dy, B, CB, dt_c, dA_cs, seq_idx, dstates, D, dx)
        ddA = inter_chunk_dda(*inter) + reverse_sum_by_sequence(dda_raw.contiguous(), seq_idx, chunk_size)
    else:
        chunk_dx = ssd_combined._chunk_scan_chunk_state_bwd_dx if _SSD_BWD_DX == "mamba" else ssd_chunk_dx
        dx, ddt, dD = chunk_dx(x, dt_c, dA_cs, B, CB, dy, dstates, D=D, seq_idx=seq_idx, dx=dx)
        if _SSD_BWD_DDA == "fused":  # the intra-chunk pairs' row and column sums from the dcb pass
            rowcol = torch.zeros(ddA_prev.shape, dtype=torch.float32, device=x.device)
            low = _DCB_IN_DOT_DTYPE and C.dtype in (torch.bfloat16, torch.float16) and B.dtype == C.dtype
            dCB = ssd_dcb_ddacs(x, dt_c, dA_cs, dy, CB, seq_idx, rowcol, out_dtype=C.dtype if low else torch.float32)
            if _DDA_IN_REV_SUM:
                ddA = reverse_sum_by_sequence(rowcol, seq_idx, chunk_size, inter, next_raw=not summed)
            else:
                ddA = inter_chunk_dda(*inter) + reverse_sum_by_sequence(rowcol, seq_idx, chunk_size)
        else:
            dCB = ssd_chunk_scan._chunk_scan_bwd_dcb(x, dt_c, dA_cs, dy, seq_idx=seq_idx, ngroups=ngroups)
            ddA = inter_chunk_dda(*inter) + ssd_chunk_scan._chunk_scan_bwd_ddAcs_stable(x, dt_c, dA_cs, dy, CB)
    if dCB.dtype not in (torch.bfloat16, torch.float16):  # (a low-precision dCB is what _bmm_chunk_bwd's dot takes)
        dCB = dCB.to(CB.dtype)
    ssd_bmm._bmm_chunk_bwd(C, dCB, residual=dB_own, out=dB)
    ssd_bmm._bmm_chunk_bwd(B, dCB.transpose(-1, -2), residual=dC_own, out=dC)
    ddt_out = torch.empty_like(dt)
    _, dA, ddt_bias = ssd_chunk_state._chunk_cumsum_bwd(ddA, ddt, dt_in, A, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                                        ddt=ddt_out)  # fmt: skip
    return ddt_out, dA, dD, ddt_bias
