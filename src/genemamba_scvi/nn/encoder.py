"""GeneMamba encoder: token embedding -> N Bi-Mamba blocks -> final RMSNorm, plus cell pooling."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from genemamba_scvi.nn.bimamba import (
    BLOCKS,
    MERGE_MODES,
    BiMambaBlock,
    pack_cells,
    reversal_index,
    reversal_index_packed,
)
from genemamba_scvi.nn.config import GeneMambaConfig, check_choice, check_count
from genemamba_scvi.nn.fused_norm import add_rms_norm
from genemamba_scvi.nn.fused_ssd import neg_exp_a
from genemamba_scvi.nn.fused_weights import cast_weights_once
from genemamba_scvi.nn.graphs import PackedGraphs, embed_rows, graphs_of, pad_packed_row
from genemamba_scvi.nn.mamba2 import RMSNorm
from genemamba_scvi.nn.pooling import (
    POOLINGS,
    _need_tensors,
    check_lengths,
    check_max_seqlen,
    check_tokens,
    pack_tokens,
    pool_hidden,
    pool_packed,
    unpack_hidden,
)
from genemamba_scvi.nn.ssd import BACKENDS, load_mamba_ssm_ops, resolve_backend

__all__ = [
    "MAMBA_SSM_MAX_CALL_ELEMENTS",
    "POOLINGS",
    "GeneMambaEncoder",
    "pack_tokens",
    "pool_hidden",
    "pool_packed",
    "unpack_hidden",
]

logger = logging.getLogger("genemamba_scvi")

#: mamba-ssm 2.3.2 kernels fail (illegal memory access) near 2^31 elements in one call; stay under 2^30.
MAMBA_SSM_MAX_CALL_ELEMENTS = 2**30
#: The residual stream's add + RMSNorm on CUDA with mamba-ssm: "triton" (``nn.fused_norm.add_rms_norm``, tiles of
#: rows) or "mamba" (mamba-ssm's ``rms_norm_fn``, the same values; its backward walks rows one at a time).
_ADD_NORM = "triton"
#: ``cuda_graphs=None`` and ``graph_bucket_tokens=None`` resolve to these (benchmarks switch them for A/B runs).
_CUDA_GRAPHS = False
_GRAPH_BUCKET_TOKENS = 1024


class GeneMambaEncoder(nn.Module):
    """GeneMamba encoder over rank-ordered gene tokens.

    Parameters
    ----------
    vocab_size
        Number of tokens, specials included (``<pad>`` = 0 is the padding index).
    config
        The settings (:class:`~genemamba_scvi.nn.config.GeneMambaConfig`: ``d_model``, ``n_layers`` (0
        gives the bag-of-genes baseline: embedding + ``norm_f`` + pooling), the Mamba-2 mixer settings,
        ``bidirectional``, ``merge``, ``shared_merge`` (one merge ``Linear(2d, d)`` at encoder level,
        ``merge.weight``/``merge.bias``, used by every layer, as in the published code), ``block``,
        ``backend``, ``pooling``, ``ngroups``, ``norm_eps``); default: all defaults.
    **settings
        Settings that override those of ``config`` (e.g. ``d_model=64, n_layers=2``).

    Attributes
    ----------
    max_call_elements
        When set, batches whose ``n_directions * B * L * d_in_proj`` exceeds it are run in sub-batches
        (on any backend). ``None`` (default) applies :data:`MAMBA_SSM_MAX_CALL_ELEMENTS` on the
        mamba_ssm backend only.
    last_n_sub_batches
        Number of sub-batches used by the last forward call.
    fused_add_norm
        Packed path only: use mamba-ssm's fused residual-add + RMSNorm Triton kernel (fp32 residual
        stream) between layers. ``None`` (default) uses it on the mamba_ssm backend when importable.
    pack_multiple
        Packed path only: round each packed row up to a multiple of this many tokens with one dummy
        cell of pad tokens (its outputs are dropped; it cannot touch real cells). Stable divisibility
        of the row length stops Triton from compiling a new kernel specialisation when a batch
        happens to have a token count divisible by 16. ``None`` (default): 16 on the mamba_ssm
        backend, 1 (off) otherwise.
    gradient_checkpointing
        In training, keep only each layer's input for the backward pass and recompute the layer there
        (one more forward per layer, much less activation memory: for long cells or big batches).
        Same outputs and gradients. Default ``False``.
    cuda_graphs
        Packed path, training on CUDA: replay the encoder's forward and backward as CUDA graphs, one pair
        per token bucket (:mod:`~genemamba_scvi.nn.graphs`): the host enqueues a step with a few launches
        instead of thousands, which matters when the GPU outruns the host (small batches, fast GPUs).
        Rows are padded to a multiple of ``graph_bucket_tokens`` (one dummy cell); the first batch of a
        bucket runs eagerly, the second is captured. Same outputs; gradients equal up to the order of
        floating-point sums. Ignored with ``gradient_checkpointing``, in inference and off CUDA. ``None``
        (default): off.
    graph_bucket_tokens
        Token granularity of the CUDA-graph buckets (``None``: 1024).
    """

    def __init__(self, vocab_size: int, config: GeneMambaConfig | None = None, **settings: Any):
        super().__init__()
        cfg = (config or GeneMambaConfig()).replace(**settings)
        self.config = cfg
        d_model, n_layers, d_state, expand, headdim = cfg.d_model, cfg.n_layers, cfg.d_state, cfg.expand, cfg.headdim
        bidirectional, merge, shared_merge, block = cfg.bidirectional, cfg.merge, cfg.shared_merge, cfg.block
        backend, pooling, ngroups, norm_eps = cfg.backend, cfg.pooling, cfg.ngroups, cfg.norm_eps
        check_choice("backend", backend, BACKENDS)
        check_choice("merge", merge, MERGE_MODES)
        check_choice("block", block, BLOCKS)
        check_choice("pooling", pooling, POOLINGS)
        self.vocab_size = vocab_size = check_count("vocab_size", vocab_size)  # (0 or 40.0: torch's errors; nn probe)
        self.d_model = d_model
        self.n_layers = n_layers
        self._bidirectional = bidirectional
        self.merge_mode = merge
        self.block = block
        self.backend = backend
        self.pooling = pooling
        self.max_call_elements: int | None = None
        self.last_n_sub_batches = 0
        self.fused_add_norm: bool | None = None
        self.pack_multiple: int | None = None
        self.gradient_checkpointing = False
        self.cuda_graphs: bool | None = None
        self.graph_bucket_tokens: int | None = None
        self._capturable_embedding = False
        self._max_seqlen: int | None = None  # forward_packed's bound on a cell's length, for the batch's layers

        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.layers = nn.ModuleList([BiMambaBlock(config=cfg) for _ in range(n_layers)])
        use_shared = shared_merge and bidirectional and merge in ("gate", "concat")
        self.merge = nn.Linear(2 * d_model, d_model) if use_shared else None
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.d_in_proj = 2 * expand * d_model + 2 * ngroups * d_state + (expand * d_model) // headdim

    @property
    def bidirectional(self) -> bool:
        """True for Bi-Mamba (next-token prediction would leak), False for the causal ablation."""
        return self._bidirectional

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        """The SSD backend that runs for inputs on ``device`` (default: the module's device)."""
        if device is None:
            device = self.embedding.weight.device
        return resolve_backend(self.backend, device)

    def _sub_batch_size(self, batch: int, seq_len: int, device: torch.device) -> int:
        limit = self.max_call_elements
        if limit is None:
            if self.n_layers == 0 or self.resolved_backend(device) != "mamba_ssm":
                return batch
            limit = MAMBA_SSM_MAX_CALL_ELEMENTS
        per_seq = (2 if self._bidirectional else 1) * max(seq_len, 1) * self.d_in_proj
        size = max(1, int(limit) // per_seq)
        if size == 1 and per_seq > limit:
            logger.warning(
                "genemamba_scvi: one sequence of length %d needs %d elements per mixer call (> %d); "
                "running one cell at a time may still exceed the kernel limit",
                seq_len,
                per_seq,
                limit,
            )
        return min(batch, size)

    def forward(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        seq_idx: torch.Tensor | None = None,
        packed: bool = False,
    ) -> torch.Tensor:
        """Contextual token states.

        Parameters
        ----------
        tokens
            ``[batch, L]`` token ids, right-padded with 0.
        lengths
            ``[batch]`` real lengths (default: all ``L``). Positions ``>= length`` are padding: their
            outputs are meaningless and never affect real tokens.
        seq_idx
            Packed-sequence ids ``[batch, L]`` (several cells per row; state and conv reset at
            boundaries, reversal per cell). Hook for the packed path; when given, ``lengths`` is ignored
            for the reversal.
        packed
            Compute only the real tokens: pack them (:func:`pack_tokens`), run :meth:`forward_packed`
            and scatter back. Same function and output as the padded path (pads are zeros), less work.

        Returns
        -------
        torch.Tensor
            ``[batch, L, d_model]`` after ``norm_f``.

        Notes
        -----
        The values of ``tokens``, ``lengths`` and ``cu_seqlens`` are checked on CPU tensors in eager mode only: on a
        GPU, or under ``torch.compile``, a check would synchronise the device or break the graph.
        """
        _need_tensors(tokens=tokens, lengths=lengths)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, L] token ids, got shape {tuple(tokens.shape)}")
        batch, seq_len = tokens.shape
        if lengths is None:
            lengths = torch.full((batch,), seq_len, dtype=torch.long, device=tokens.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [batch] = [{batch}], got shape {tuple(lengths.shape)}")
        check_lengths(lengths, seq_len)
        if seq_len == 0:  # no positions: nothing to compute (the padded kernels cannot take L = 0)
            return tokens.new_zeros(batch, 0, self.d_model, dtype=self.embedding.weight.dtype)
        if packed:  # forward_packed checks the packed tokens
            if seq_idx is not None:
                raise ValueError("packed=True packs by lengths; do not pass seq_idx")
            tokens_packed, cu = pack_tokens(tokens, lengths)
            return unpack_hidden(self.forward_packed(tokens_packed, cu, max_seqlen=seq_len), lengths, seq_len)
        tokens = check_tokens(tokens, self.vocab_size)
        sub = self._sub_batch_size(batch, seq_len, tokens.device)
        if sub >= batch:
            self.last_n_sub_batches = 1
            return self._forward(tokens, lengths, seq_idx)
        outs = []
        for start in range(0, batch, sub):
            sl = slice(start, start + sub)
            outs.append(self._forward(tokens[sl], lengths[sl], seq_idx[sl] if seq_idx is not None else None))
        self.last_n_sub_batches = len(outs)
        return torch.cat(outs, dim=0)

    def _forward(self, tokens: torch.Tensor, lengths: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding(tokens)
        rev_index = None
        if self._bidirectional and self.n_layers > 0:
            if seq_idx is not None:
                rev_index = reversal_index_packed(seq_idx)
            else:
                rev_index = reversal_index(lengths.to(tokens.device), tokens.shape[1])
        for layer in self.layers:
            x = self._run(layer, x, rev_index=rev_index, seq_idx=seq_idx, merge_linear=self.merge)
        return self.norm_f(x)

    def _run(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)``, with activation checkpointing in training when it is on.

        Under :attr:`gradient_checkpointing` in training, the activations of ``fn`` are not kept for the
        backward pass but recomputed there (Chen et al. 2016, "Training deep nets with sublinear memory
        cost"; :func:`torch.utils.checkpoint.checkpoint`, non-reentrant).
        """
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # Packed (varlen) path
    # ------------------------------------------------------------------------------------------------
    def _call_limit(self, device: torch.device) -> int | None:
        if self.max_call_elements is not None:
            return int(self.max_call_elements)
        if self.n_layers == 0 or self.resolved_backend(device) != "mamba_ssm":
            return None
        return MAMBA_SSM_MAX_CALL_ELEMENTS

    def _packed_groups(self, cu: torch.Tensor, n_tokens: int) -> list[tuple[int, int]] | None:
        """Cell ranges ``[c0, c1)`` whose packed mixer call stays under the element limit (None: one call)."""
        limit = self._call_limit(cu.device)
        per_token = (2 if self._bidirectional else 1) * self.d_in_proj
        if limit is None:
            return None
        limit = max(limit - (self._pack_multiple(cu.device) - 1) * per_token, per_token)  # room for the dummy cell
        if n_tokens * per_token <= limit:
            return None
        lengths = (cu[1:] - cu[:-1]).tolist()
        groups, start, tokens = [], 0, 0
        for i, n in enumerate(lengths):
            if i > start and (tokens + n) * per_token > limit:
                groups.append((start, i))
                start, tokens = i, 0
            tokens += n
            if n * per_token > limit:
                logger.warning(
                    "genemamba_scvi: one cell of %d tokens needs %d elements per mixer call (> %d); "
                    "it runs alone and may still exceed the kernel limit",
                    n,
                    n * per_token,
                    limit,
                )
        groups.append((start, len(lengths)))
        return groups

    def _pack_multiple(self, device: torch.device) -> int:
        if self.pack_multiple is not None:
            return max(1, int(self.pack_multiple))
        return 16 if self.n_layers > 0 and self.resolved_backend(device) == "mamba_ssm" else 1

    def _use_fused_add_norm(self, device: torch.device) -> bool:
        if self.fused_add_norm is not None:
            return bool(self.fused_add_norm)
        if device.type != "cuda" or self.resolved_backend(device) != "mamba_ssm":
            return False
        return load_mamba_ssm_ops()["rms_norm_fn"] is not None

    def forward_packed(
        self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None = None
    ) -> torch.Tensor:
        """Contextual token states of packed cells: only real tokens are computed.

        The real tokens of all cells form one row; each cell and its per-cell reversal are two sequences
        of one varlen mixer call per layer (state and convolution reset at every boundary, see
        :func:`~genemamba_scvi.nn.bimamba.pack_cells`). A cell's output depends on that cell only, and
        equals the padded :meth:`forward`. Batches larger than the kernel limit (``max_call_elements``)
        run in groups of whole cells.

        Parameters
        ----------
        tokens
            ``[T]`` (or ``[1, T]``) token ids of all cells, concatenated (no pads).
        cu_seqlens
            ``[n_cells + 1]`` cumulative lengths starting at 0 (see :func:`pack_tokens`).
        max_seqlen
            The longest cell's length, or a bound on it (a host integer, as FlashAttention's varlen functions
            take). With it, a batch of few cells may walk its long cells' scans in segments on several programs
            (:func:`~genemamba_scvi.nn.fused_ssd.ssd_split_target`; fused CUDA path only); None: never. The result
            is the same function either way.

        Returns
        -------
        torch.Tensor
            ``[T, d_model]`` after ``norm_f`` (input checks: see :meth:`forward`'s notes).
        """
        tokens = tokens.reshape(-1)
        tokens = check_tokens(tokens, self.vocab_size, cu_seqlens)
        self._max_seqlen = check_max_seqlen(max_seqlen, cu_seqlens)
        cu = cu_seqlens.to(device=tokens.device, dtype=torch.long)
        n_tokens = tokens.shape[0]
        groups = self._packed_groups(cu, n_tokens)
        if groups is None:
            self.last_n_sub_batches = 1
            return self._forward_packed(tokens, cu, n_tokens)
        bounds = cu.tolist()
        outs = []
        for c0, c1 in groups:
            t0, t1 = bounds[c0], bounds[c1]
            outs.append(self._forward_packed(tokens[t0:t1], cu[c0 : c1 + 1] - bounds[c0], t1 - t0))
        self.last_n_sub_batches = len(outs)
        return torch.cat(outs, dim=0)

    def _graphs(self) -> PackedGraphs:
        bucket = _GRAPH_BUCKET_TOKENS if self.graph_bucket_tokens is None else int(self.graph_bucket_tokens)
        return graphs_of(self, bucket)

    def _graphs_for(self, tokens: torch.Tensor, n_tokens: int) -> PackedGraphs | None:
        """The CUDA graphs that run this packed training row, or None (eager)."""
        on = _CUDA_GRAPHS if self.cuda_graphs is None else bool(self.cuda_graphs)
        if not (on and tokens.is_cuda and self.training and torch.is_grad_enabled()):
            return None
        if self.gradient_checkpointing or n_tokens == 0 or self.n_layers == 0:
            return None
        if not any(p.requires_grad for p in self.parameters()):  # a frozen encoder has no backward to record
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        graphs = self._graphs()
        return None if graphs.disabled else graphs

    @contextlib.contextmanager
    def capturable(self) -> Iterator[None]:
        """Within the block, the embedding's backward is one ``index_add_`` (a CUDA graph can record it)."""
        saved, self._capturable_embedding = self._capturable_embedding, True
        try:
            yield
        finally:
            self._capturable_embedding = saved

    def _forward_packed(self, tokens: torch.Tensor, cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
        graphs = self._graphs_for(tokens, n_tokens)
        if graphs is not None:
            return graphs(tokens, cu, n_tokens)
        pad = (-n_tokens) % self._pack_multiple(tokens.device)
        if pad and n_tokens > 0:  # one dummy cell rounds the row up
            return self._forward_packed_row(*pad_packed_row(tokens, cu, n_tokens + pad), n_tokens + pad)[:n_tokens]
        return self._forward_packed_row(tokens, cu, n_tokens)

    def _forward_packed_row(self, tokens: torch.Tensor, cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
        x = embed_rows(self.embedding, tokens) if self._capturable_embedding else self.embedding(tokens)
        if self.n_layers == 0 or n_tokens == 0:
            return self.norm_f(x)
        pack = pack_cells(cu, n_tokens)
        if self._max_seqlen is not None:
            pack.cache["max_seqlen"] = self._max_seqlen
        if self.block != "prenorm":
            for layer in self.layers:
                x = self._run(layer.forward_packed, x, pack, self.merge)
            return self.norm_f(x)
        # pre-norm blocks as a residual stream: h_i = norm_i(r_i), r_{i+1} = r_i + mix_i(h_i)
        fused = load_mamba_ssm_ops()["rms_norm_fn"] if self._use_fused_add_norm(x.device) else None
        if fused is not None and _ADD_NORM == "triton":
            fused = add_rms_norm
        residual, delta, h = x, None, None
        if fused is not None:  # the fused mixers read every layer's -exp(A_log) from the batch's cache
            pack.cache["A"] = neg_exp_a(layer.mixer for layer in self.layers)
            dev = x.device.type
            if torch.is_autocast_enabled(dev):  # and, with the option on, their GEMM weights cast at once
                pack.cache["w_low"] = cast_weights_once(self._gemm_weights(), torch.get_autocast_dtype(dev))
        for i, layer in enumerate(self.layers):
            if h is None and fused is not None:  # (h is set when the previous block's merge pass normalised)
                # one Triton kernel: residual += delta (float32), h = RMSNorm(residual) * weight
                inp = residual if delta is None else delta
                res = None if delta is None else residual
                h, residual = fused(
                    inp, layer.norm.weight, None, residual=res, eps=layer.norm.eps, prenorm=True, residual_in_fp32=True
                )
            elif h is None:
                residual = residual if delta is None else residual + delta
                h = layer.norm(residual)
            if fused is not None and layer.merge_add_norm and layer.one_pass_merge_applies(x.device):
                # inference on a GPU: merge, residual add and the next block's norm in one pass
                nxt = self.layers[i + 1].norm if i + 1 < len(self.layers) else None
                residual, h = layer.mix_packed_add_norm(h, pack, residual, nxt, self.merge)
                delta = None
            else:
                delta, h = self._run(layer.mix_packed, h, pack, self.merge), None
        return self.norm_f(residual if delta is None else residual + delta)

    def _gemm_weights(self) -> Iterator[torch.Tensor | None]:
        """The parameters that the fused layers' GEMMs cast: ``in_proj``, ``out_proj`` and the merge's."""
        for layer in self.layers:
            yield from (layer.mixer.in_proj.weight, layer.mixer.in_proj.bias, layer.mixer.out_proj.weight)
            yield from layer._merge_weights(self.merge)

    def pool(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Cell embeddings ``[batch, d]`` by the encoder's pooling (see :func:`pool_hidden`)."""
        return pool_hidden(hidden, lengths, self.pooling)

    def embed_cells(
        self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, packed: bool = False
    ) -> torch.Tensor:
        """``pool(forward(tokens, lengths), lengths)``; ``packed=True`` computes real tokens only."""
        _need_tensors(tokens=tokens, lengths=lengths)
        if not packed:
            return self.pool(self(tokens, lengths), lengths)
        tokens_packed, cu = pack_tokens(tokens, lengths)
        return pool_packed(self.forward_packed(tokens_packed, cu, max_seqlen=tokens.shape[1]), cu, self.pooling)
