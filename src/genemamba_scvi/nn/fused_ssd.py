"""One-pass SSD scan forward over a packed varlen row (Triton), with mamba-ssm's backward.

Used by :func:`genemamba_scvi.nn.fused.mixer_both` for both directions of a packed Bi-Mamba layer; the kernel is
in :mod:`genemamba_scvi.nn._triton_ssd` (imported on first use, so this module imports nothing but torch).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from genemamba_scvi.nn._launch import _interpreting, _kernel_module

__all__ = [
    "SSD_CONV_FWD_CONFIG",
    "SSD_FWD_CONFIG",
    "ssd_conv_varlen",
    "ssd_order",
    "ssd_split_plan",
    "ssd_split_target",
    "ssd_varlen",
    "ssd_varlen_both",
    "ssd_varlen_supports",
]

#: Launch shape of the one-pass SSD forward: rows per chunk step, warps, software-pipeline stages, and heads per
#: program (``"heads"`` > 1: the heads of a group share B, C and ``C B^T``; ``ssd_varlen_heads_fwd_kernel``).
#: Q 16, 4 warps, 2 stages, 4 heads: the fastest of 24 shapes on an H200, 2.48 ms against 2.92 ms with one head per
#: program (Q 16, 4 warps, 3 stages) and 6.17 ms for mamba-ssm's scan, both directions of 256 cells
#: (benchmarks/results/ssd_sweep3_h200.json; 2 heads per program were slower than 1 at every shape).
SSD_FWD_CONFIG = {"Q": 16, "num_warps": 4, "num_stages": 2, "heads": 4}
#: Fewer programs than this and the scan runs one head per program (0: always ``heads``). Off: at a 48-cell
#: training step (384 programs at 4 heads) one head per program trained 1.2% slower on an H200
#: (``benchmarks/results/throughput_h200_train_s5.json``, ``ablation_ssd_one_head_small`` at 528).
_SSD_MIN_PROGRAMS = 0
#: Few cells a batch: the scan's time is the longest sequence's walk (a chain of dependent chunk steps), while
#: most programs have finished. When the longest sequence (the encoder's ``max_seqlen``) is over ``_SSD_SPLIT_WHEN``
#: times the rows an SM slot would walk with the work spread evenly, every sequence over ``_SSD_SPLIT_FACTOR`` times
#: that share is split into near-equal segments walked by separate programs, in two passes (:func:`ssd_split_plan`;
#: the states the segments leave, then the walks from the folded states). On an H100, top-4096 x 24 cells (a
#: 4,096-gene cell walks 256 steps, an even share ~86): the step 0.961x the unsplit one's (95% interval
#: 0.920-0.984; ``train_ab_s24_split_4096_call4_h100.json``; an earlier run 0.985x, n.s.). At 32 cells of top-2048
#: the split (2,048-gene cells in two) measured 1.023x (0.986-1.073, n.s.), so ``_SSD_SPLIT_WHEN`` 2 leaves that
#: batch (the model's default) unsplit unless its cells are short (a mean under ~1,050 genes).
#: Full-length 8 x 8,192 cells: 0.938x (1.062-1.071 the other way; ``train_ab_s25_split_8192_h100.json``).
#: False: never (``benchmarks/NOTES_throughput.md`` sections 26-27).
_SSD_SPLIT = True
_SSD_SPLIT_WHEN = 2.0
_SSD_SPLIT_FACTOR = 1.5
#: Nor below this many scan rows (both directions of every cell): a small batch's training step waits on the host
#: that enqueues it, not on the GPU, so the scan's saving cannot show while its plan and second launch a layer cost
#: host time. On an H100, 16 cells of top-2048 (~44.5k rows) ran host-bound in every round, the split ~3% slower
#: in wall time; 24 cells of top-4096 (~90k rows) gained (``train_ab_s25_split_2048x16_h100.json``, section 27).
_SSD_SPLIT_MIN_TOTAL_ROWS = 65_536
#: A segment's rows as a multiple of an even share, the shortest segment (rows), the programs of the scan resident on
#: an SM (255 registers a thread at 4 warps: 2), and a fixed segment length (rows; tests) instead of the rule above.
_SSD_SPLIT_SCALE = 1.0
_SSD_SPLIT_MIN_ROWS = 256
_SSD_PROGRAMS_PER_SM = 2
_SSD_SPLIT_ROWS: int | None = None
#: Launch shape of :func:`ssd_conv_varlen` (the same walk, with the convolution's taps loaded in each chunk step).
SSD_CONV_FWD_CONFIG = {"Q": 16, "num_warps": 4, "num_stages": 3}


#: The encoder computes every layer's ``A = -exp(A_log)`` in one go per batch (:func:`neg_exp_a`: a stack, an exp
#: and a negation, three launches) instead of two launches in each layer's forward; False: per layer (an ablation).
_A_ONCE = True


def neg_exp_a(mixers: Any) -> dict[int, torch.Tensor]:
    """``{id(m.A_log): -exp(m.A_log)}`` (fp32) of the mixers, from one stacked computation (autograd-tracked).

    Empty when the logs differ in shape, dtype or device (each layer then computes its own), or with ``_A_ONCE``
    off. Call it outside any checkpointed function: a layer's recomputation must find the same tensors.
    """
    logs = [m.A_log for m in mixers]
    if not _A_ONCE or len(logs) < 2 or len({(t.shape, t.dtype, t.device) for t in logs}) != 1:
        return {}
    A = -torch.exp(torch.stack(logs).float())
    return {id(t): a for t, a in zip(logs, A.unbind(0))}


def _ssd_kernels() -> Any:
    """The one-pass SSD kernels (``_triton_ssd``)."""
    return _kernel_module("_triton_ssd")


def _kernels() -> Any:
    """The kernels of the fused mixer (``_triton_bimamba``)."""
    return _kernel_module("_triton_bimamba")


# ----------------------------------------------------------------------------------------------------
# One-pass SSD forward over a packed varlen row (mamba-ssm's backward)
# ----------------------------------------------------------------------------------------------------
def _split_xbc(xbc: torch.Tensor, nheads: int, headdim: int, ngroups: int, d_state: int):
    """``[L, H*P + 2*G*N]`` -> views ``x [1, L, H, P]``, ``B``, ``C`` ``[1, L, G, N]``."""
    L, d_inner, gn = xbc.shape[0], nheads * headdim, ngroups * d_state
    x, B, C = torch.split(xbc, [d_inner, gn, gn], dim=-1)
    return (
        x.view(1, L, nheads, headdim),
        B.view(1, L, ngroups, d_state),
        C.view(1, L, ngroups, d_state),
    )


def _launch_ssd(xbc, dt, A, D, dt_bias, cu, order, shape, dt_softplus, gate=None, cache=None):
    """Run the one-pass SSD forward.

    ``gate = (z, T_half)``: a two-direction row (``ssd_varlen_both``), ``dt`` read at the token, and with ``z`` not
    None the outputs gated. ``cache``: a batch's dict (the layers share the work items of a split scan).

    Returns ``y`` ``[L, H*P]`` (dtype of ``xbc``) and, with ``z``, ``ssq`` ``[L, n_blocks]`` fp32 (else None).
    """
    nheads, headdim, ngroups, d_state = shape
    L, d_inner, gn = xbc.shape[0], nheads * headdim, ngroups * d_state
    y = torch.empty(L, d_inner, dtype=xbc.dtype, device=xbc.device)
    cfg = SSD_FWD_CONFIG
    hb = cfg.get("heads", 1)
    hb = hb if hb > 1 and (nheads // ngroups) % hb == 0 else 1  # heads of one group per program
    if nheads // hb * (cu.numel() - 1) < _SSD_MIN_PROGRAMS:
        hb = 1
    z, t_half = gate if gate is not None else (None, 0)
    ssq = torch.empty(L, nheads // hb, dtype=torch.float32, device=xbc.device) if z is not None else None
    n_seq = cu.numel() - 1
    if L and n_seq:
        if order is None:
            order = ssd_order(cu)
        z = z if z is not None else y
        bias, B = (dt_bias if dt_bias is not None else A), xbc[:, d_inner:]
        args = (
            xbc, dt, bias, A, B, xbc[:, d_inner + gn :],
            D if D is not None else A, y, cu, order, xbc.stride(0), dt.stride(0), xbc.stride(0), xbc.stride(0),
            y.stride(0), nheads // ngroups, nheads, z, ssq if ssq is not None else y, z.stride(0), t_half,
        )  # fmt: skip
        consts = dict(P=headdim, N=d_state, Q=cfg["Q"], HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
                      DT_SOFTPLUS=dt_softplus, NUM_STAGES=cfg["num_stages"], INTERPRET=_interpreting(),
                      GATE=ssq is not None, DT_TOKEN=gate is not None, num_warps=cfg["num_warps"])  # fmt: skip
        if cfg.get("maxnreg"):  # registers a thread (Triton's maxnreg): more programs an SM, spilling the rest
            consts["maxnreg"] = cfg["maxnreg"]
        k = _ssd_kernels()
        batch = cache if cache is not None else {}  # max_seqlen: the encoder's bound on a cell's length
        target = ssd_split_target(L, nheads // hb, xbc.device, batch.get("max_seqlen")) if hb > 1 else None
        if target is not None:  # long sequences over several programs: their segments' states first
            key = f"ssd_split_{target}"
            if key not in batch:
                batch[key] = ssd_split_plan(cu, order, L, target)
            items = batch[key]
            n_items = items.shape[0]
            states = torch.empty(n_items, nheads, d_state, headdim, dtype=torch.float32, device=xbc.device)
            decay = torch.empty(n_items, nheads, dtype=torch.float32, device=xbc.device)
            shared = ("P", "N", "Q", "HAS_DT_BIAS", "DT_SOFTPLUS", "NUM_STAGES", "INTERPRET", "DT_TOKEN", "num_warps")
            first = {name: consts[name] for name in shared}  # (the walk's own settings)
            k.ssd_split_states_kernel[(nheads // hb * n_items,)](
                xbc, dt, bias, A, B, items, states, decay, xbc.stride(0), dt.stride(0), xbc.stride(0),
                nheads // ngroups, nheads, t_half, HB=hb, **first,
            )  # fmt: skip
            k.ssd_varlen_heads_fwd_kernel[(nheads // hb * n_items,)](*args, items, states, decay, HB=hb, SPLIT=True,
                                                                     **consts)  # fmt: skip
        elif hb > 1:
            k.ssd_varlen_heads_fwd_kernel[(nheads // hb * n_seq,)](*args, cu, y, y, HB=hb, **consts)
        else:
            k.ssd_varlen_fwd_kernel[(nheads * n_seq,)](*args, **consts)
    return y, ssq


@functools.lru_cache(maxsize=8)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def ssd_split_target(n_rows: int, n_blocks: int, device: torch.device, max_seqlen: int | None = None) -> int | None:
    """Rows a segment of a split sequence should hold, or None: no split.

    The scan has ``n_rows`` rows and ``n_blocks`` programs a sequence; None without ``max_seqlen``, with no sequence
    that long, with splitting off, or not on CUDA. With the ``ceil(n_rows / Q) * n_blocks`` chunk steps spread
    evenly over the resident programs, each walks ``s`` steps; a longest sequence over ``_SSD_SPLIT_WHEN * Q * s``
    rows would set the kernel's time alone, so the sequences over ``_SSD_SPLIT_FACTOR * Q * s`` rows are cut into
    segments of about ``Q * s`` rows (at least ``_SSD_SPLIT_MIN_ROWS``). ``max_seqlen`` (a host integer, the longest
    sequence or a bound on it) keeps batches with nothing to split off the two-pass path, which costs a plan and a
    launch a layer (2% of an inference pass of 256 cells on an H100, session 24); a scan of fewer than
    ``_SSD_SPLIT_MIN_TOTAL_ROWS`` rows is not split (its step is bound by the host's launches).
    """
    if _SSD_SPLIT_ROWS is not None:
        return int(_SSD_SPLIT_ROWS)
    if not _SSD_SPLIT or device.type != "cuda" or max_seqlen is None or n_rows < _SSD_SPLIT_MIN_TOTAL_ROWS:
        return None
    q = SSD_FWD_CONFIG["Q"]
    slots = _SSD_PROGRAMS_PER_SM * _sm_count(device.index)
    steps = -(-(-(-n_rows // q) * n_blocks) // slots)
    target = max(q * math.ceil(steps * _SSD_SPLIT_SCALE), _SSD_SPLIT_MIN_ROWS)
    return target if _SSD_SPLIT_WHEN * target < min(max_seqlen, n_rows) else None


def ssd_split_plan(cu: torch.Tensor, order: torch.Tensor, n_rows: int, target: int) -> torch.Tensor:
    """Work items of a split scan, on the device and without a host synchronisation.

    ``[n_items, 5]`` int64 rows ``(sequence start, sequence end, segment start, segment end, first item of the
    sequence)``. Sequences in ``order`` (longest first); one longer than ``_SSD_SPLIT_FACTOR * target`` rows becomes
    ``ceil(length / target)`` segments of equal length (rounded up to the scan's chunk step), the others one
    item. ``n_items = n_seq + n_rows // target + 1`` bounds the count from above; the items past the last are empty
    (all bounds 0, their own first item).
    """
    q = SSD_FWD_CONFIG["Q"]
    n_seq = cu.numel() - 1
    lens = (cu[1:] - cu[:-1]).index_select(0, order)
    long = lens > int(_SSD_SPLIT_FACTOR * target)
    nseg = torch.where(long, (lens + target - 1) // target, torch.ones_like(lens))
    seg_len = (lens + nseg - 1) // nseg
    seg_len = (seg_len + q - 1) // q * q
    cum = torch.cumsum(nseg, 0)
    w = torch.arange(n_seq + n_rows // target + 1, device=cu.device)
    k = torch.searchsorted(cum, w, right=True)
    valid = k < n_seq
    kc = k.clamp(max=max(n_seq - 1, 0))
    first = cum[kc] - nseg[kc]
    s = order[kc]
    seq_start, seq_end = cu[s], cu[s + 1]
    c0 = torch.minimum(seq_start + (w - first) * seg_len[kc], seq_end)
    c1 = torch.minimum(c0 + seg_len[kc], seq_end)
    items = torch.stack([seq_start, seq_end, c0, c1, first], dim=1)
    return torch.where(valid[:, None], items, F.pad(w[:, None], (4, 0))).contiguous()


class _SSDVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xbc, dt, A, D, dt_bias, cu, seq_idx, shape, chunk_size, dt_softplus, order, cache):
        if xbc.stride(-1) != 1:
            xbc = xbc.contiguous()
        dt = dt.contiguous()
        y, _ = _launch_ssd(xbc, dt, A, D, dt_bias, cu, order, shape, dt_softplus, cache=cache)
        ctx.save_for_backward(xbc, dt, A, D, dt_bias, seq_idx)
        ctx.shape, ctx.chunk_size, ctx.dt_softplus = shape, chunk_size, dt_softplus
        return y

    @staticmethod
    def backward(ctx, dy):
        xbc, dt, A, D, dt_bias, seq_idx = ctx.saved_tensors
        L = xbc.shape[0]
        shape = ctx.shape
        dy = dy.contiguous().view(1, L, shape[0], shape[1])
        from genemamba_scvi.nn.ssd import load_mamba_ssm_ops, ssd_chunked

        if xbc.is_cuda and load_mamba_ssm_ops()["chunk_scan"] is not None:
            from genemamba_scvi.nn.fused_ssd_bwd import ssd_varlen_bwd

            # mamba-ssm's chunk kernels (with the state walks run per sequence) write dx, dB and dC into views of
            # one buffer: the gradient of xbc needs no concatenation
            dxbc = torch.empty_like(xbc)
            x, B, C = _split_xbc(xbc, *shape)
            dx, dB, dC = _split_xbc(dxbc, *shape)
            ddt, dA, dD, ddt_bias = ssd_varlen_bwd(dy, x, dt.unsqueeze(0), A, B, C, ctx.chunk_size, D, dt_bias,
                                                   seq_idx, ctx.dt_softplus, dx, dB, dC)  # fmt: skip
            ddt = ddt[0]
        else:  # CPU (Triton's interpreter) or no mamba-ssm: differentiate the pure-torch chunked scan
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None
                          for t in (xbc, dt, A, D, dt_bias)]  # fmt: skip
                xbc_, dt_, A_, D_, dtb_ = leaves
                x_, B_, C_ = _split_xbc(xbc_, *shape)
                y = ssd_chunked(x_, dt_.unsqueeze(0), A_, B_, C_, ctx.chunk_size, D=D_, dt_bias=dtb_,
                                dt_softplus=ctx.dt_softplus, seq_idx=seq_idx)  # fmt: skip
                inputs = [t for t in leaves if t is not None]
                grads = iter(torch.autograd.grad(y, inputs, dy))
                dxbc, ddt, dA, dD, ddt_bias = (next(grads) if t is not None else None for t in leaves)
        return dxbc, ddt, dA, dD, ddt_bias, None, None, None, None, None, None, None


def ssd_varlen_supports(headdim: int, d_state: int) -> bool:
    """Whether :func:`ssd_varlen` takes these sizes: powers of two from 16 (Triton's block and dot sizes)."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (headdim, d_state))


def _check_sizes(name: str, headdim: int, d_state: int) -> None:
    if not ssd_varlen_supports(headdim, d_state):
        raise ValueError(f"{name} needs headdim and d_state that are powers of two >= 16, not {headdim}, {d_state}")


def ssd_varlen(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seq_idx: torch.Tensor,
    *,
    nheads: int,
    headdim: int,
    ngroups: int,
    d_state: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    chunk_size: int = 256,
    order: torch.Tensor | None = None,
    cache: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Mamba-2's SSD scan of a packed varlen row in one Triton kernel (forward); mamba-ssm's backward.

    Parameters
    ----------
    xbc
        ``[L, H*P + 2*G*N]``: the convolved ``x``, ``B`` and ``C`` columns of every row (``conv_both``'s
        output).
    dt
        ``[L, H]`` raw time steps (before ``dt_bias`` and softplus).
    A
        ``[H]`` (negative) decay rates.
    cu_seqlens
        ``[n_seq + 1]`` sequence starts in the row (empty sequences allowed); the state starts at 0 in each.
    seq_idx
        ``[1, L]`` int32 sequence id of every row (for mamba-ssm's backward).
    nheads, headdim, ngroups, d_state
        ``H``, ``P``, ``G``, ``N``.
    D, dt_bias, dt_softplus, chunk_size
        As ``mamba_chunk_scan_combined`` (``chunk_size`` is the backward's; the forward walks chunks of
        ``SSD_FWD_CONFIG["Q"]`` rows).
    order
        :func:`ssd_order` of ``cu_seqlens`` (computed here when omitted; a batch's layers can share it).
    cache
        A dict the layers of one batch share: a split scan's work items (:func:`ssd_split_plan`) are kept there,
        and its ``"max_seqlen"`` (the longest sequence, a host integer) allows the split (:func:`ssd_split_target`).

    Returns
    -------
    torch.Tensor
        ``[L, H*P]`` in the dtype of ``xbc``: the same function as ``mamba_chunk_scan_combined`` with
        ``seq_idx`` (no ``z``).
    """
    _check_sizes("ssd_varlen", headdim, d_state)
    shape = (nheads, headdim, ngroups, d_state)
    cu = cu_seqlens.to(device=xbc.device, dtype=torch.int64).contiguous()
    return _SSDVarlen.apply(xbc, dt, A, D, dt_bias, cu, seq_idx, shape, chunk_size, dt_softplus, order, cache)


def ssd_varlen_both(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    cu_seqlens: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    nheads: int,
    headdim: int,
    ngroups: int,
    d_state: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    order: torch.Tensor | None = None,
    cache: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`ssd_varlen` on a two-direction row, ``dt`` read at the token, optionally gated (inference).

    Parameters
    ----------
    xbc, A, cu_seqlens
        As :func:`ssd_varlen`, on the ``[2T]`` two-direction row: ``cu_seqlens`` holds the cells, then the cells
        reversed in place (``BiMambaBlock``'s row: rows ``0..T-1`` the tokens, row ``T + j`` token ``rev[j]``).
    dt
        ``[T, H]`` raw time steps of the ``T`` tokens (read at each row's token: no ``[2T, H]`` gather).
    z
        ``[T, H*P]`` gates of the ``T`` tokens (a column slice of the projection is fine), or None: no gate.
    nheads, headdim, ngroups, d_state, D, dt_bias, dt_softplus, order, cache
        As :func:`ssd_varlen`.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor | None]
        Without ``z``: ``y`` ``[2T, H*P]`` (dtype of ``xbc``) and None. With ``z``: ``g = y * silu(z)`` and ``ssq``
        ``[2T, n_blocks]`` float32, partial sums of ``g^2`` (fp32, before rounding) whose row sum is the gated
        norm's sum of squares: ``RMSNorm(g) * w == g * w * rsqrt(ssq.sum(1) / (H*P) + eps)``.
    """
    _check_sizes("ssd_varlen_both", headdim, d_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xbc, dt, A, z)):
        raise RuntimeError("ssd_varlen_both has no backward: call it under torch.no_grad() / inference_mode()")
    L = xbc.shape[0]
    zshape = (L // 2, nheads * headdim)
    if L % 2 or dt.shape != (L // 2, nheads) or (z is not None and tuple(z.shape) != zshape):
        got = list(z.shape) if z is not None else None
        raise ValueError(f"a two-direction row of L = {L} rows takes dt [L/2, H] = [{L // 2}, {nheads}] and z "
                         f"{list(zshape)} or None, not {list(dt.shape)} and {got}")  # fmt: skip
    if xbc.stride(-1) != 1:
        xbc = xbc.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    cu = cu_seqlens.to(device=xbc.device, dtype=torch.int64).contiguous()
    shape = (nheads, headdim, ngroups, d_state)
    return _launch_ssd(
        xbc, dt.contiguous(), A, D, dt_bias, cu, order, shape, dt_softplus, gate=(z, L // 2), cache=cache
    )


def ssd_order(cu_seqlens: torch.Tensor, both: bool = False) -> torch.Tensor:
    """Launch order of the sequences for the one-pass kernels: longest first (the long ones set the kernel's time).

    ``both``: ``cu_seqlens`` holds cells and the order runs over the two-direction row of :func:`ssd_conv_varlen`
    (sequence ``i`` forward, ``n_cells + i`` reversed; the two directions of a cell are neighbours).
    """
    order = torch.argsort(cu_seqlens[1:] - cu_seqlens[:-1], descending=True)
    if both:
        order = torch.stack([order, order + (cu_seqlens.numel() - 1)], dim=1).reshape(-1)
    return order


def ssd_conv_varlen(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    A: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    nheads: int,
    headdim: int,
    ngroups: int,
    d_state: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal conv + SiLU + SSD of the cells and of their in-place reversals in one Triton kernel (inference).

    The same function as ``ssd_varlen(conv_both(xbc, ...), cat([dt, dt[rev]]), ...)`` on the two-direction row,
    without writing and re-reading the ``[2T, C]`` convolved row: each program convolves the taps of its chunk
    straight from ``xbc``. No backward (training keeps the convolved row for mamba-ssm's SSD backward).

    Parameters
    ----------
    xbc
        ``[T, H*P + 2*G*N]`` unconvolved ``x``, ``B``, ``C`` columns of the packed tokens (a column slice of the
        projection is fine).
    dt
        ``[T, H]`` raw time steps of the tokens (a column slice is fine).
    conv_weight, conv_bias
        ``[C, K]`` depthwise taps (``conv1d.weight[:, 0, :]``) and ``[C]`` or None.
    A
        ``[H]`` decay rates.
    cu_seqlens
        ``[n_cells + 1]`` cell starts (empty cells allowed).
    nheads, headdim, ngroups, d_state, D, dt_bias, dt_softplus
        As :func:`ssd_varlen`.
    order
        ``ssd_order(cu_seqlens, both=True)`` (computed when omitted).

    Returns
    -------
    torch.Tensor
        ``[2T, H*P]`` in the dtype of ``xbc``: rows ``0..T-1`` the cells, rows ``T..2T-1`` each cell reversed.
    """
    _check_sizes("ssd_conv_varlen", headdim, d_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xbc, dt, conv_weight, A)):
        raise RuntimeError("ssd_conv_varlen has no backward: call it under torch.no_grad() / inference_mode()")
    T = xbc.shape[0]
    d_inner, gn = nheads * headdim, ngroups * d_state
    if xbc.stride(-1) != 1:
        xbc = xbc.contiguous()
    if dt.stride(-1) != 1:
        dt = dt.contiguous()
    cu = cu_seqlens.to(device=xbc.device, dtype=torch.int64).contiguous()
    n_cells = cu.numel() - 1
    y = torch.empty(2 * T, d_inner, dtype=xbc.dtype, device=xbc.device)
    if T and n_cells:
        if order is None:
            order = ssd_order(cu, both=True)
        cfg = SSD_CONV_FWD_CONFIG
        _ssd_kernels().ssd_conv_varlen_fwd_kernel[(nheads * 2 * n_cells,)](
            xbc, dt, dt_bias if dt_bias is not None else A, A, D if D is not None else A, conv_weight,
            conv_bias if conv_bias is not None else conv_weight, y, cu, order, T, n_cells, xbc.stride(0),
            dt.stride(0), conv_weight.stride(0), y.stride(0), nheads // ngroups, nheads, d_inner, gn,
            P=headdim, N=d_state, Q=cfg["Q"], K=conv_weight.shape[-1], HAS_D=D is not None,
            HAS_DT_BIAS=dt_bias is not None, HAS_CONV_BIAS=conv_bias is not None, DT_SOFTPLUS=dt_softplus,
            NUM_STAGES=cfg["num_stages"], INTERPRET=_interpreting(), num_warps=cfg["num_warps"],
        )  # fmt: skip
    return y
