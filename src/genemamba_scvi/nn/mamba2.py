"""Mamba-2 mixer whose parameters have exactly the names and shapes of ``mamba_ssm.Mamba2``.

Architecture of the Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs", arXiv:2405.21060, section 7
and Figure 6): one input projection produces ``[z, x, B, C, dt]`` in parallel; ``[x, B, C]`` go through
a depthwise causal convolution and SiLU; the SSD scan (:mod:`genemamba_scvi.nn.ssd`) mixes tokens;
the output is gated by ``z`` inside a grouped RMSNorm (``norm_before_gate=False``:
``RMSNorm(y * silu(z))``) and projected back to ``d_model``.

Parameters (``d_inner = expand * d_model``, ``nheads = d_inner / headdim``):

=================  ===========================================================
``in_proj.weight``  ``[2*d_inner + 2*ngroups*d_state + nheads, d_model]`` (no bias)
``conv1d.weight``   ``[d_inner + 2*ngroups*d_state, 1, d_conv]``
``conv1d.bias``     ``[d_inner + 2*ngroups*d_state]``
``dt_bias``         ``[nheads]`` (inverse softplus of dt ~ logUniform(dt_min, dt_max))
``A_log``           ``[nheads]`` (log of A ~ Uniform(A_init_range))
``D``               ``[nheads]``
``norm.weight``     ``[d_inner]``
``out_proj.weight`` ``[d_model, d_inner]`` (no bias)
=================  ===========================================================

so that ``load_state_dict`` moves weights between ``mamba_ssm.Mamba2(d_model, d_state, d_conv, expand,
headdim, ngroups)`` and this module on either backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genemamba_scvi.nn.config import check_choice, d_model_step
from genemamba_scvi.nn.ssd import (
    BACKENDS,
    INSTALL_HINT,
    causal_conv1d_torch,
    load_mamba_ssm_ops,
    resolve_backend,
    ssd_chunked,
)

__all__ = ["Mamba2Mixer", "RMSNorm", "RMSNormGated"]


class RMSNorm(nn.Module):
    """Root-mean-square LayerNorm (Zhang & Sennrich 2019), computed in float32.

    Parameters
    ----------
    d
        Feature size.
    eps
        Added to the mean square.
    """

    def __init__(self, d: int, eps: float = 1e-5, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last axis; returns the dtype of ``x``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float() if x.dtype != torch.float64 else x
            out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.to(xf.dtype)
        return out.to(x.dtype)


class RMSNormGated(nn.Module):
    """Gated grouped RMSNorm of Mamba-2 (``mamba_ssm.ops.triton.layernorm_gated.RMSNorm``), in float32.

    ``norm_before_gate=False``: ``out = RMSNorm_group(x * silu(z)) * weight``; with
    ``norm_before_gate=True``: ``RMSNorm_group(x) * weight * silu(z)``.

    Parameters
    ----------
    d
        Feature size.
    eps
        Added to the mean square (Mamba2 uses ``1e-5``).
    group_size
        Normalise over groups of this many features (``d_inner // ngroups`` in Mamba2).
    norm_before_gate
        See above.
    """

    def __init__(
        self,
        d: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or d
        self.norm_before_gate = norm_before_gate
        if d % self.group_size:
            raise ValueError(f"d ({d}) must be a multiple of group_size ({self.group_size})")
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x`` (gated by ``z``); returns the dtype of ``x``."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
            xf = x.to(cdt)
            if z is not None and not self.norm_before_gate:
                xf = xf * F.silu(z.to(cdt))
            shape = xf.shape
            xg = xf.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
            xg = xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)
            out = xg.reshape(shape) * self.weight.to(cdt)
            if z is not None and self.norm_before_gate:
                out = out * F.silu(z.to(cdt))
        return out.to(x.dtype)


#: The torch backend on a CPU scans in chunks of at most this many tokens, whatever ``chunk_size`` says: its
#: in-chunk work is quadratic in the chunk length and a CPU has no tensor cores to hide it. On 16 real cells
#: (top-2048, 2 layers, 2 threads; ``benchmarks/cpu_speed.py`` -> ``cpu_speed.json``) 64 was the fastest of
#: 32 / 64 / 128 / 256 for d_model 512 (packed, median times against 256: inference 18.8 -> 12.1 s, training
#: 44.4 -> 34.6 s); the result is the same function (to float rounding: ``ssd_chunked``'s ``chunk_size`` changes
#: no value).
CPU_CHUNK_SIZE = 64


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer (``mamba_ssm.Mamba2`` drop-in) with a pure-PyTorch and a mamba-ssm backend.

    Parameters
    ----------
    d_model
        Model width.
    d_state
        SSM state size N (default 64, as GeneMamba).
    d_conv
        Causal convolution width.
    expand
        ``d_inner = expand * d_model``.
    headdim
        Head size P; ``nheads = d_inner // headdim``.
    ngroups
        Number of B/C groups (heads share B, C within a group).
    A_init_range, dt_min, dt_max, dt_init_floor
        Initialisation, as ``mamba_ssm.Mamba2``.
    chunk_size
        SSD chunk length (the torch backend on a CPU scans in chunks of at most :data:`CPU_CHUNK_SIZE`).
    backend
        ``"auto"`` (mamba_ssm on CUDA when importable, else torch), ``"torch"`` or ``"mamba_ssm"``.
    use_mem_eff_path
        On the mamba_ssm backend, use the fused ``mamba_split_conv1d_scan_combined`` (needs
        causal-conv1d; silently unfused without it).

    Notes
    -----
    Fixed as in ``mamba_ssm.Mamba2`` defaults: no bias in ``in_proj``/``out_proj``, conv bias, SiLU,
    gated RMSNorm with ``norm_before_gate=False``, ``D`` per head, no ``dt_limit``, ``d_ssm = d_inner``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 256,
        backend: str = "auto",
        use_mem_eff_path: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_choice("backend", backend, BACKENDS)
        if backend == "mamba_ssm":
            ops = load_mamba_ssm_ops()
            if ops["chunk_scan"] is None or not torch.cuda.is_available():
                why = "no CUDA device" if not torch.cuda.is_available() else f"import failed: {ops['error']}"
                raise RuntimeError(f'backend="mamba_ssm" cannot run here ({why}); {INSTALL_HINT}.')
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        if self.d_inner % headdim:
            raise ValueError(
                f"expand*d_model ({expand} x {d_model} = {self.d_inner}) must be a multiple of headdim ({headdim}): "
                f"pick d_model as a multiple of {d_model_step(headdim, expand)} or a headdim that divides "
                f"{self.d_inner} (e.g. headdim={math.gcd(self.d_inner, headdim)})"
            )
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads ({self.nheads}) must be a multiple of ngroups ({ngroups})")
        self.chunk_size = chunk_size
        self.backend = backend
        self.use_mem_eff_path = use_mem_eff_path
        self.activation = "silu"

        # in_proj output order: [z, x, B, C, dt]
        self.d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, self.d_in_proj, bias=False, **factory)
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1, **factory)

        # dt ~ logUniform(dt_min, dt_max), stored as its inverse softplus (Mamba-2 initialisation)
        dt = torch.exp(
            torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype or torch.get_default_dtype()))
        self.dt_bias._no_weight_decay = True
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.get_default_dtype()))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    def extra_repr(self) -> str:
        """The settings shown by ``repr(mixer)``."""
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        """The backend that runs for inputs on ``device`` (default: this module's device)."""
        if device is None:
            device = self.in_proj.weight.device
        return resolve_backend(self.backend, device)

    def forward(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mix tokens.

        Parameters
        ----------
        u
            ``[batch, seqlen, d_model]``.
        seq_idx
            Optional ``[batch, seqlen]`` ids of packed sequences (conv and state reset at changes).

        Returns
        -------
        torch.Tensor
            ``[batch, seqlen, d_model]``.
        """
        if u.dim() != 3:  # (an unbatched [L, d] failed on a tuple unpacking deep inside: nn probe, session 35)
            raise ValueError(
                f"u must be [batch, seqlen, d_model], got shape {tuple(u.shape)} (u[None] for one sequence)"
            )
        return self.forward_projected(self.in_proj(u), seq_idx)

    def forward_projected(self, zxbcdt: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after ``in_proj``: ``forward(u) == forward_projected(in_proj(u))``.

        ``in_proj`` acts on each token alone, so a caller that runs the mixer on a sequence and on its
        reversal can project once and reorder the projection (the Bi-Mamba packed path does: half the
        ``in_proj`` work of projecting both directions).

        Parameters
        ----------
        zxbcdt
            ``[batch, seqlen, d_in_proj]`` output of ``in_proj``.
        seq_idx
            As in :meth:`forward`.
        """
        backend = resolve_backend(self.backend, zxbcdt.device)
        if backend == "mamba_ssm":
            return self._forward_mamba_ssm(zxbcdt, seq_idx)
        return self._forward_torch(zxbcdt, seq_idx)

    # ------------------------------------------------------------------------------------------------
    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * self.ngroups * self.d_state, self.nheads], dim=-1)

    def _ssm_inputs(self, xBC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, L, _ = xBC.shape
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, gn, gn], dim=-1)
        return (
            x.reshape(b, L, self.nheads, self.headdim),
            B.reshape(b, L, self.ngroups, self.d_state),
            C.reshape(b, L, self.ngroups, self.d_state),
        )

    def _forward_torch(self, zxbcdt: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        b, L, _ = zxbcdt.shape
        z, xBC, dt = self._split(zxbcdt)
        xBC = causal_conv1d_torch(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias, seq_idx, self.activation)
        x, B, C = self._ssm_inputs(xBC)
        A = -torch.exp(self.A_log.double() if self.A_log.dtype == torch.float64 else self.A_log.float())
        chunk = self.chunk_size if zxbcdt.device.type != "cpu" else min(self.chunk_size, CPU_CHUNK_SIZE)
        y = ssd_chunked(x, dt, A, B, C, chunk, D=self.D, dt_bias=self.dt_bias, dt_softplus=True, seq_idx=seq_idx)
        y = self.norm(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y)

    def _forward_mamba_ssm(self, zxbcdt: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        ops = load_mamba_ssm_ops()
        if seq_idx is not None:
            seq_idx = seq_idx.to(torch.int32).contiguous()
        b, L, _ = zxbcdt.shape
        A = -torch.exp(self.A_log.float())
        if self.use_mem_eff_path and ops["split_conv1d_scan"] is not None:
            return ops["split_conv1d_scan"](
                zxbcdt,
                self.conv1d.weight[:, 0, :],
                self.conv1d.bias,
                self.dt_bias,
                A,
                D=self.D,
                chunk_size=self.chunk_size,
                seq_idx=seq_idx,
                activation=self.activation,
                rmsnorm_weight=self.norm.weight,
                rmsnorm_eps=self.norm.eps,
                outproj_weight=self.out_proj.weight,
                outproj_bias=self.out_proj.bias,
                headdim=self.headdim,
                ngroups=self.ngroups,
                norm_before_gate=False,
            )
        # unfused: conv in PyTorch (supports seq_idx), SSD kernel, gated norm, out_proj
        z, xBC, dt = self._split(zxbcdt)
        xBC = causal_conv1d_torch(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias, seq_idx, self.activation)
        x, B, C = self._ssm_inputs(xBC)
        y = ops["chunk_scan"](
            x.contiguous(),
            dt.contiguous(),
            A,
            B.contiguous(),
            C.contiguous(),
            self.chunk_size,
            D=self.D,
            z=None,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            seq_idx=seq_idx,
        )
        y = self.norm(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y)
