r"""Mamba-2 SSD (state-space duality) scan backends.

The selective state-space recurrence of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs: Generalized
Models and Efficient Algorithms Through Structured State Space Duality", ICML 2024, arXiv:2405.21060)
is, per head ``h`` with a scalar decay,

.. math::

    H_t = \exp(\Delta_t A) H_{t-1} + \Delta_t x_t B_t^\top, \qquad y_t = H_t C_t + D x_t,

with ``x_t`` of size ``headdim`` (P), ``B_t, C_t`` of size ``d_state`` (N) and ``H_t`` of shape
``(P, N)``. Two backends compute it:

``"torch"``
    :func:`ssd_chunked`, the chunked ("block decomposition") SSD algorithm of the paper (section 6,
    Listing 1) in plain PyTorch: quadratic attention-like form inside chunks of ``Q`` tokens, a linear
    recurrence of the chunk states between chunks. Runs on CPU and GPU, in float32 (or float64).
    :func:`ssd_sequential` is the token-by-token recurrence, used only as a test reference.
``"mamba_ssm"``
    The Triton/CUDA kernels of the ``mamba-ssm`` package (``mamba_chunk_scan_combined``, and the fused
    ``mamba_split_conv1d_scan_combined`` when ``causal-conv1d`` is installed), imported lazily.

Packed sequences: every function takes ``seq_idx`` (``[batch, seqlen]`` integer ids, constant within a
sequence and changing at boundaries) and resets the state (and the causal convolution) at boundaries,
as the mamba-ssm kernels do.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger("genemamba_scvi")

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "causal_conv1d_available",
    "causal_conv1d_torch",
    "load_mamba_ssm_ops",
    "mamba_ssm_available",
    "resolve_backend",
    "segment_ids",
    "ssd_chunked",
    "ssd_sequential",
]

BACKENDS = ("auto", "torch", "mamba_ssm")
INSTALL_HINT = (
    'install the CUDA kernels with `pip install "genemamba-scvi[cuda]"` (mamba-ssm and causal-conv1d, '
    'built for your torch/CUDA), or use backend="torch" (pure PyTorch, CPU and GPU)'
)

_OPS_CACHE: dict[str, Any] = {}
_LOGGED: set[str] = set()


# ----------------------------------------------------------------------------------------------------
# Optional kernels
# ----------------------------------------------------------------------------------------------------
def load_mamba_ssm_ops() -> dict[str, Any]:
    """Import the mamba-ssm (and causal-conv1d) kernels lazily.

    Returns
    -------
    dict
        ``{"chunk_scan": mamba_chunk_scan_combined or None, "split_conv1d_scan":
        mamba_split_conv1d_scan_combined or None (needs causal-conv1d), "rms_norm_fn": the fused
        residual-add + RMSNorm of ``mamba_ssm.ops.triton.layer_norm`` or None, "error": str or None}``.
    """
    if "ops" in _OPS_CACHE:
        return _OPS_CACHE["ops"]
    ops: dict[str, Any] = {"chunk_scan": None, "split_conv1d_scan": None, "rms_norm_fn": None, "error": None}
    try:
        mod = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        try:  # the fused backward reads mamba-ssm 2.3's deterministic-reduction kernels
            importlib.import_module("mamba_ssm.utils.determinism")
        except ModuleNotFoundError:
            version = getattr(importlib.import_module("mamba_ssm"), "__version__", "?")
            raise ImportError(f"mamba-ssm {version} is older than 2.3, which genemamba-scvi needs") from None
        ops["chunk_scan"] = mod.mamba_chunk_scan_combined
        if getattr(mod, "causal_conv1d_fwd_function", None) is not None:
            ops["split_conv1d_scan"] = mod.mamba_split_conv1d_scan_combined
    except Exception as err:  # ImportError, but also broken CUDA extensions (OSError, RuntimeError)
        ops["error"] = f"{type(err).__name__}: {err}"
    if ops["chunk_scan"] is not None:
        try:  # fused residual-add + RMSNorm (Triton), used by the packed encoder path
            ops["rms_norm_fn"] = importlib.import_module("mamba_ssm.ops.triton.layer_norm").rms_norm_fn
        except Exception:
            ops["rms_norm_fn"] = None
    _OPS_CACHE["ops"] = ops
    if ops["chunk_scan"] is not None and torch.cuda.is_available():
        # shipped / remembered Triton launch configurations: no minute of autotuning on the first call
        from genemamba_scvi.nn.kernel_configs import install_tuned_configs

        try:
            install_tuned_configs()
        except Exception as err:  # never let a cache problem stop the kernels themselves
            logger.warning("genemamba_scvi: tuned kernel configurations not installed (%s)", err)
    return ops


def mamba_ssm_available() -> bool:
    """Whether the mamba-ssm SSD kernels can be imported."""
    return load_mamba_ssm_ops()["chunk_scan"] is not None


def causal_conv1d_available() -> bool:
    """Whether the fused mamba-ssm path (which needs causal-conv1d) can be used."""
    return load_mamba_ssm_ops()["split_conv1d_scan"] is not None


def _log_once(message: str) -> None:
    if torch.compiler.is_compiling():  # a logger call breaks torch.compile's graph; eager calls log it
        return
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Turn a requested backend into the one that runs on ``device``.

    Parameters
    ----------
    backend
        ``"auto"``, ``"torch"`` or ``"mamba_ssm"``.
    device
        Device of the inputs; ``None`` means "CUDA if available".

    Returns
    -------
    str
        ``"torch"`` or ``"mamba_ssm"``. ``"auto"`` picks ``"mamba_ssm"`` on CUDA when importable, else
        ``"torch"``, and logs the choice once (logger ``"genemamba_scvi"``).

    Raises
    ------
    ValueError
        Unknown backend name.
    RuntimeError
        ``"mamba_ssm"`` requested where it cannot run (not installed, broken, or not a CUDA device).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if backend == "mamba_ssm":
        if not on_cuda:
            raise RuntimeError(
                f'backend="mamba_ssm" needs a CUDA device (got {device}; CUDA available: '
                f"{torch.cuda.is_available()}); {INSTALL_HINT}."
            )
        ops = load_mamba_ssm_ops()
        if ops["chunk_scan"] is None:
            raise RuntimeError(
                f'backend="mamba_ssm" but mamba-ssm cannot be imported ({ops["error"]}); {INSTALL_HINT}.'
            )
        return "mamba_ssm"
    # auto
    if on_cuda and mamba_ssm_available():
        fused = "fused conv path" if causal_conv1d_available() else "no causal-conv1d: unfused conv"
        _log_once(f"genemamba_scvi: backend='auto' -> 'mamba_ssm' (CUDA kernels, {fused}) on {device}")
        return "mamba_ssm"
    why = "not a CUDA device" if not on_cuda else f"mamba-ssm not importable: {load_mamba_ssm_ops()['error']}"
    _log_once(f"genemamba_scvi: backend='auto' -> 'torch' (chunked SSD in PyTorch; {why}) on {device}")
    return "torch"


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------
def segment_ids(seq_idx: torch.Tensor) -> torch.Tensor:
    """Contiguous segment numbers ``0, 1, 2, ...`` per row, incremented wherever ``seq_idx`` changes.

    Makes the torch backend independent of the id values (only boundaries matter, as in the kernels
    for non-decreasing ids).

    Parameters
    ----------
    seq_idx
        ``[batch, seqlen]`` integer tensor.

    Returns
    -------
    torch.Tensor
        ``[batch, seqlen]`` int64.
    """
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return F.pad(torch.cumsum(change, dim=1), (1, 0))


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Depthwise causal 1-D convolution (the ``conv1d`` of Mamba-2) in plain PyTorch.

    Parameters
    ----------
    x
        ``[batch, seqlen, dim]``.
    weight
        ``[dim, width]`` (``conv1d.weight[:, 0, :]``).
    bias
        ``[dim]`` or None.
    seq_idx
        Optional ``[batch, seqlen]`` sequence ids; taps never cross a sequence boundary.
    activation
        ``"silu"`` / ``"swish"`` or None.

    Returns
    -------
    torch.Tensor
        ``[batch, seqlen, dim]`` in the dtype of ``x``, computed in float32 (float64 for float64 input).
    """
    out_dtype = x.dtype
    width = weight.shape[-1]
    seqlen = x.shape[1]
    cdt = _compute_dtype(x, weight)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf, wf = x.to(cdt), weight.to(cdt)
        if seq_idx is None:
            y = F.conv1d(xf.transpose(1, 2), wf.unsqueeze(1), None, padding=width - 1, groups=wf.shape[0])
            y = y[..., :seqlen].transpose(1, 2)
        else:
            seg = segment_ids(seq_idx)
            y = xf * wf[:, width - 1]
            for k in range(1, min(width, seqlen)):
                # tap k looks k tokens back: weight[width-1-k] * x[t-k], only within the same sequence
                shifted = F.pad(xf[:, :-k], (0, 0, k, 0))
                same = F.pad(seg[:, k:] == seg[:, :-k], (k, 0), value=False)
                y = y + shifted * wf[:, width - 1 - k] * same.unsqueeze(-1).to(cdt)
        if bias is not None:
            y = y + bias.to(cdt)
        if activation in ("silu", "swish"):
            y = F.silu(y)
        elif activation is not None:
            raise ValueError(f"unsupported activation {activation!r}")
    return y.to(out_dtype)


def _prepare(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    """Upcast, apply ``dt_bias``/softplus, broadcast groups to heads."""
    cdt = _compute_dtype(x, dt, B, C)
    nheads = x.shape[2]
    ngroups = B.shape[2]
    if nheads % ngroups != 0:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    x, dt, A, B, C = x.to(cdt), dt.to(cdt), A.to(cdt), B.to(cdt), C.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    if ngroups != nheads:
        head_to_group = torch.arange(nheads, device=x.device) // (nheads // ngroups)
        B = B.index_select(2, head_to_group)
        C = C.index_select(2, head_to_group)
    return x, dt, A, B, C


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    if D is None:
        return y
    D = D.to(y.dtype)
    return y + x * (D[:, None] if D.dim() == 1 else D)


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sums ``out[..., i, j] = sum_{k=j+1..i} a[..., k]`` for ``i >= j``, ``-inf`` above.

    Summing masked copies (instead of differencing one cumulative sum) keeps float32 exact to rounding
    of the summands, as in the paper's minimal SSD listing.
    """
    T = a.shape[-1]
    a_rep = a.unsqueeze(-1).expand(*a.shape, T)  # [..., i(k), j]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    out = torch.cumsum(a_rep.masked_fill(~strict, 0.0), dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0)
    return out.masked_fill(~lower, float("-inf"))


# ----------------------------------------------------------------------------------------------------
# Torch backend: chunked SSD
# ----------------------------------------------------------------------------------------------------
def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan (Dao & Gu 2024, section 6 / Listing 1) in plain PyTorch.

    Same arguments and semantics as ``mamba_ssm``'s ``mamba_chunk_scan_combined`` (without ``z``).

    Parameters
    ----------
    x
        ``[batch, seqlen, nheads, headdim]``.
    dt
        ``[batch, seqlen, nheads]`` (before ``dt_bias``/softplus when those are given).
    A
        ``[nheads]`` (negative decay rates).
    B, C
        ``[batch, seqlen, ngroups, d_state]``; ``nheads`` must be a multiple of ``ngroups``.
    chunk_size
        Chunk length ``Q``; the effective chunk is ``min(chunk_size, seqlen)``. Any ``seqlen`` works
        (the tail is zero-padded, which cannot influence earlier tokens). Mathematically the result
        does not depend on it.
    D
        Optional skip ``[nheads]`` or ``[nheads, headdim]``.
    dt_bias
        Optional ``[nheads]`` added to ``dt``.
    dt_softplus
        Apply softplus to ``dt`` (after ``dt_bias``).
    seq_idx
        Optional ``[batch, seqlen]`` ids of packed sequences; the state resets where the id changes.
    initial_states
        Optional ``[batch, nheads, headdim, d_state]`` state before the first token.
    return_final_states
        Also return the state after the last token.

    Returns
    -------
    torch.Tensor or tuple
        ``y`` ``[batch, seqlen, nheads, headdim]`` in the dtype of ``x`` (computed in float32, or float64
        for float64 inputs, with autocast off), and the final state ``[batch, nheads, headdim, d_state]``
        (float32/float64) when ``return_final_states``.

    Notes
    -----
    Causality holds for finite inputs only: a NaN or inf in ``x``, ``B`` or ``dt`` at one position reaches the
    earlier positions of its chunk and, through the chunk states, others (the masked products are ``0 x NaN``),
    and in a packed row the other sequences sharing those chunks; :func:`ssd_sequential` keeps it causal.
    Non-finite activations mean a diverged model: training stops at the first non-finite loss and embeddings are
    refused when non-finite (nn probe, session 35; ``benchmarks/nan_reach.py`` records where it reaches).
    """
    out_dtype = x.dtype
    batch, seqlen, nheads, headdim = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
        cdt = x.dtype
        d_state = B.shape[-1]
        Q = max(1, min(int(chunk_size), seqlen))
        pad = (-seqlen) % Q
        seg = segment_ids(seq_idx) if seq_idx is not None else None
        xs, dts, Bs, Cs = x, dt, B, C
        if pad:
            xs = F.pad(xs, (0, 0, 0, 0, 0, pad))
            dts = F.pad(dts, (0, 0, 0, pad))
            Bs = F.pad(Bs, (0, 0, 0, 0, 0, pad))
            Cs = F.pad(Cs, (0, 0, 0, 0, 0, pad))
            if seg is not None:
                seg = torch.cat([seg, seg[:, -1:].expand(-1, pad)], dim=1)
        nchunks = (seqlen + pad) // Q

        # [b, h, c, Q, ...] layout
        X = (xs * dts.unsqueeze(-1)).view(batch, nchunks, Q, nheads, headdim).permute(0, 3, 1, 2, 4)
        Bc = Bs.view(batch, nchunks, Q, nheads, d_state).permute(0, 3, 1, 2, 4)
        Cc = Cs.view(batch, nchunks, Q, nheads, d_state).permute(0, 3, 1, 2, 4)
        a = (dts * A).view(batch, nchunks, Q, nheads).permute(0, 3, 1, 2)  # dt * A, [b, h, c, Q]
        a_cum = torch.cumsum(a, dim=-1)
        segc = seg.view(batch, nchunks, Q) if seg is not None else None

        # 1. intra-chunk outputs (diagonal blocks): y_i = sum_{j<=i} C_i.B_j exp(sum_{j<k<=i} a_k) dt_j x_j
        seg_exp = _segsum(a)  # [b, h, c, Q, Q]
        if segc is not None:
            same = (segc.unsqueeze(-1) == segc.unsqueeze(-2)).unsqueeze(1)  # [b, 1, c, Q, Q]
            seg_exp = seg_exp.masked_fill(~same, float("-inf"))
        scores = torch.matmul(Cc, Bc.transpose(-1, -2)) * torch.exp(seg_exp)
        Y = torch.matmul(scores, X)  # [b, h, c, Q, P]

        # 2. state of each chunk at its end, from its own tokens (B terms of the low-rank blocks)
        suffix = torch.flip(torch.cumsum(torch.flip(F.pad(a[..., 1:], (0, 1)), [-1]), -1), [-1])  # sum_{k>j}
        decay_to_end = torch.exp(suffix)
        if segc is not None:
            decay_to_end = decay_to_end * (segc == segc[..., -1:]).unsqueeze(1).to(cdt)
        states = torch.matmul((X * decay_to_end.unsqueeze(-1)).transpose(-1, -2), Bc)  # [b, h, c, P, N]

        # 3. inter-chunk recurrence on the chunk states (A terms), as one masked matrix of decays
        if initial_states is None:
            init = torch.zeros(batch, nheads, 1, headdim, d_state, dtype=cdt, device=x.device)
        else:
            init = initial_states.to(cdt).unsqueeze(2)
        states = torch.cat([init, states], dim=2)  # [b, h, c+1, P, N]
        # segment owning the state entering chunk c (= leaving chunk c-1); the initial state belongs to the
        # first token's sequence
        sid = torch.cat([segc[:, :1, 0], segc[:, :, -1]], dim=1) if segc is not None else None  # [b, c+1]
        if nchunks + 1 <= _INTER_CHUNK_MATRIX_MAX:
            decay_chunk = torch.exp(_segsum(F.pad(a.sum(-1), (1, 0))))  # [b, h, c+1, c+1]
            if sid is not None:
                decay_chunk = decay_chunk * (sid.unsqueeze(-1) == sid.unsqueeze(-2)).unsqueeze(1).to(cdt)
            new_states = torch.einsum("bhzc,bhcpn->bhzpn", decay_chunk, states)
        else:  # many chunks (a long packed batch): the same recurrence chunk by chunk, linear in the chunks
            new_states = _inter_chunk_scan(states, a.sum(-1), sid)
        prev_states, final_state = new_states[:, :, :-1], new_states[:, :, -1]

        # 4. contribution of the entering state to each token (C terms)
        decay_in = torch.exp(a_cum)
        if segc is not None:
            decay_in = decay_in * (segc == sid[:, :-1].unsqueeze(-1)).unsqueeze(1).to(cdt)
        Y = Y + torch.matmul(Cc, prev_states.transpose(-1, -2)) * decay_in.unsqueeze(-1)

        y = Y.permute(0, 2, 3, 1, 4).reshape(batch, nchunks * Q, nheads, headdim)[:, :seqlen]
        y = _add_skip(y, x, D)
    y = y.to(out_dtype)
    return (y, final_state) if return_final_states else y


#: up to this many chunk states the inter-chunk recurrence is one (c+1) x (c+1) matrix of decays; beyond, whose
#: cost grows with the square of the chunks, a scan over the chunks. Through the API on 2 CPU threads (d_model 256,
#: top-2048, benchmarks/results/cpu_batch_size_scan.json): 64 cells a batch (2,048 chunks) 1.2x faster with the scan,
#: 4 cells (128 chunks, the CPU default) no faster (0.74-0.93x), hence the matrix up to 256
_INTER_CHUNK_MATRIX_MAX = 256


def _inter_chunk_scan(states: torch.Tensor, chunk_a: torch.Tensor, sid: torch.Tensor | None) -> torch.Tensor:
    """``new[z] = exp(chunk_a[z-1]) * new[z-1] * [sid[z] == sid[z-1]] + states[z]``, ``new[0] = states[0]``.

    ``states``: ``[b, h, c+1, P, N]`` (the entering state, then each chunk's own end state); ``chunk_a``:
    ``[b, h, c]`` (the sum of ``dt * A`` over each chunk); ``sid``: ``[b, c+1]`` segment of each state or ``None``.
    The masked matrix form (``decay[z, c'] = exp(sum of chunk_a between) * [sid[z] == sid[c']]``) written as a
    recurrence: segments are contiguous, so equal ends mean every step between is within one segment.
    """
    carry = torch.exp(chunk_a)  # [b, h, c]
    if sid is not None:
        carry = carry * (sid[:, 1:] == sid[:, :-1]).unsqueeze(1).to(carry.dtype)
    # unbind, not states[:, :, z]: autograd gives each indexed slice a zero-filled gradient of the whole tensor,
    # so the backward of the indexing loop grew with the square of the chunks (a CPU training step of 32 cells of
    # top-2048 took ~60 s against ~3 s; user probe, benchmarks/results/cpu_scan_backward.json)
    steps, carries = states.unbind(2), carry.unbind(2)
    out = [steps[0]]
    for z in range(1, len(steps)):
        out.append(carries[z - 1][:, :, None, None] * out[-1] + steps[z])
    return torch.stack(out, dim=2)


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token SSD recurrence (reference for tests; slow).

    ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``, ``y_t = H_t C_t + D x_t`` (Dao & Gu 2024, eq. 1-2);
    arguments as :func:`ssd_chunked`.
    """
    out_dtype = x.dtype
    batch, seqlen, nheads, headdim = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
        d_state = B.shape[-1]
        if initial_states is None:
            h = torch.zeros(batch, nheads, headdim, d_state, dtype=x.dtype, device=x.device)
        else:
            h = initial_states.to(x.dtype)
        ys = []
        for t in range(seqlen):
            decay = torch.exp(dt[:, t] * A)  # [b, h]
            if seq_idx is not None and t > 0:
                decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1]).to(x.dtype).unsqueeze(-1)
            inp = (dt[:, t].unsqueeze(-1) * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(-2)  # [b, h, P, N]
            h = h * decay[..., None, None] + inp
            ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
        y = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, nheads, headdim)
        y = _add_skip(y, x, D)
    y = y.to(out_dtype)
    return (y, h) if return_final_states else y
