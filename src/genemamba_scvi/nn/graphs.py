"""CUDA graphs of the packed encoder's training pass: one graph pair (forward, backward) per token bucket.

Why: a GeneMamba training step launches ~4,300 device operations (24 layers, ~178 each). On an H200 the host
needs 138-151 ms to enqueue them whatever the batch size, so below ~48 cells of top-2048 genes the GPU waits
for the host (``benchmarks/NOTES_throughput.md`` section 15). A CUDA graph replays a recorded sequence of
kernels with one launch (``torch.cuda.graph``; NVIDIA's CUDA programming guide, "CUDA Graphs"), which takes
the host out of the step.

How, in the spirit of :func:`torch.cuda.make_graphed_callables` (written here because it knows neither the
token buckets, nor autocast's weight cache, nor a pad cell):

* A graph has fixed shapes, a batch does not. The packed row of ``n`` real tokens is padded up to a *bucket*
  of ``bucket_tokens * floor((n + bucket_tokens) / bucket_tokens)`` tokens with one dummy cell of pad tokens
  (its own sequence id keeps it apart, as the encoder's ``pack_multiple`` padding already does), so a bucket
  holds every batch of the same cell count whose token total falls in it.
* The first batch of a bucket runs eagerly (it compiles and autotunes the Triton kernels); the second is
  captured (forward, then the backward of the parameters from a static output gradient) and replayed from
  then on. All buckets share one memory pool, one output buffer and one gradient buffer per parameter: a
  step replays one bucket's forward, then the same bucket's backward, so no bucket's memory is live while
  another runs. A forward while another graphed forward still waits for its backward (two forwards, one
  backward) runs eagerly.
* Inside a capture the token embedding's backward is an ``index_add_`` (PyTorch's dense embedding backward
  reads a count back to the host, which a capture forbids); autocast runs with its weight-cast cache off,
  so the casts are recorded and see the optimizer's updates; Python's garbage collector is paused (a
  collection could free CUDA objects mid-capture), and the capture is thread-local (a pin-memory thread may
  go on).
* The replayed output is cloned (one copy), so a kept output is not overwritten by the next step; the
  parameter gradients are copied out of the shared buffers and go through autograd as usual (accumulation,
  hooks, DDP, ``torch.autograd.grad``). A graphed forward is "pending" while its autograd node lives and its
  backward has not run; meanwhile other forwards run eagerly. A backward that would read activations another
  replay has overwritten since (a retained graph backpropagated twice) raises; double backward is not
  supported (``once_differentiable``).
* Any change of the parameters' storage (``.to()``, a new parameter, ``requires_grad`` flipped) drops the
  graphs; they are rebuilt on the next batches. A capture that fails raises (CUDA's state may be unusable
  after it) with the advice to train without graphs.

Only :mod:`torch` is used here (``nn/`` stays free of scvi-tools).
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["PackedGraphs", "drop_graphs", "embed_rows", "graphs_of", "pad_packed_row"]

logger = logging.getLogger("genemamba_scvi")


def pad_packed_row(tokens: torch.Tensor, cu: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed row of ``tokens.shape[0]`` real tokens lengthened to ``length`` by one dummy cell of pad tokens (0).

    The dummy cell has its own sequence id, so it cannot touch the real cells; its outputs are dropped.
    """
    tokens = torch.cat([tokens, tokens.new_zeros(length - tokens.shape[0])])
    return tokens, torch.cat([cu, cu.new_full((1,), length)])


class _EmbedRows(torch.autograd.Function):
    """``weight[tokens]`` whose backward is one ``index_add_`` (capturable; row ``padding_idx`` gets no gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tokens: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        flat = tokens.reshape(-1)
        ctx.save_for_backward(flat)
        ctx.shape, ctx.dtype, ctx.padding_idx = weight.shape, weight.dtype, padding_idx
        return weight.index_select(0, flat).reshape(*tokens.shape, weight.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (flat,) = ctx.saved_tensors
        acc = torch.float32 if ctx.dtype in (torch.float16, torch.bfloat16) else ctx.dtype
        g = grad.reshape(-1, ctx.shape[1]).to(acc)
        gw = torch.zeros(ctx.shape, dtype=acc, device=grad.device).index_add_(0, flat, g)  # atomics: not bitwise
        if ctx.padding_idx is not None:  # reproducible from run to run, unlike PyTorch's sorted embedding backward
            gw[ctx.padding_idx].zero_()
        return gw.to(ctx.dtype), None, None


def embed_rows(embedding: torch.nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Same values and gradient as ``embedding(tokens)``, with a backward a CUDA graph can hold.

    Refuses the options it does not implement: ``max_norm``, ``scale_grad_by_freq`` and ``sparse``.
    """
    for name, off in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
        if getattr(embedding, name) != off:
            raise ValueError(f"embed_rows does not implement {name}={getattr(embedding, name)!r}")
    return _EmbedRows.apply(embedding.weight, tokens, embedding.padding_idx)


@dataclass
class _Entry:
    """One bucket: its static inputs and outputs, and its two graphs once captured."""

    n_tokens: int
    tokens: torch.Tensor
    cu: torch.Tensor
    seen: int = 0
    fwd: Any = None  # torch.cuda.CUDAGraph
    bwd: Any = None
    out: torch.Tensor | None = None
    grad_out: torch.Tensor | None = None
    grads: tuple[torch.Tensor | None, ...] = ()


class _Replay(torch.autograd.Function):
    """Forward: replay the bucket's forward graph. Backward: copy in the output gradient, replay, hand out grads."""

    @staticmethod
    def forward(ctx, owner: PackedGraphs, entry: _Entry, *params: torch.Tensor) -> torch.Tensor:
        entry.fwd.replay()
        owner.replays += 1
        ctx.owner, ctx.entry, ctx.replay = owner, entry, owner.replays
        return entry.out.clone()  # the shared buffer is overwritten by the next replay

    @staticmethod
    @once_differentiable  # the graph's gradients have no graph of their own (no double backward)
    def backward(ctx, grad: torch.Tensor):
        owner: PackedGraphs = ctx.owner
        if owner.replays != ctx.replay:  # the pool's activations this backward reads were overwritten since
            raise RuntimeError(
                "genemamba_scvi: the backward of a CUDA-graphed encoder forward ran after another graphed forward "
                "(a retained graph backpropagated twice, or forwards interleaved in a way the graphs cannot hold); "
                "train this model with cuda_graphs=False"
            )
        e: _Entry = ctx.entry
        e.grad_out.copy_(grad)
        e.bwd.replay()
        owner.replays += 1
        owner.pending = None
        # copies: the shared buffers are overwritten by the next replay, and autograd.grad or a hook may keep what
        # it is handed (with .grad None, autograd adopts the copy instead of copying again)
        return (None, None, *(g.clone() if g is not None else None for g in e.grads))


class PackedGraphs:
    """Per-bucket CUDA graphs of an encoder's packed row (``_forward_packed_row``) in training.

    Held per encoder in a weak table (:func:`graphs_of`), so the encoder itself stays picklable and
    deep-copyable (a ``CUDAGraph`` is neither).

    Memory: the buckets share one pool (its size is that of the largest bucket's step), one output buffer and
    one output-gradient buffer (grown when a longer bucket comes), and one gradient buffer per parameter; a
    bucket adds only its token and bound buffers.

    Parameters
    ----------
    encoder
        A :class:`~genemamba_scvi.nn.GeneMambaEncoder` (referenced weakly).
    bucket_tokens
        Token granularity of the buckets (a multiple of 16; the encoder's ``graph_bucket_tokens``).
    max_buckets
        Graph pairs kept (least recently used dropped first).
    """

    def __init__(self, encoder: torch.nn.Module, bucket_tokens: int, max_buckets: int = 64):
        if bucket_tokens < 16 or bucket_tokens % 16:
            raise ValueError(f"bucket_tokens must be a positive multiple of 16, got {bucket_tokens}")
        self._encoder = weakref.ref(encoder)
        self.bucket_tokens, self.max_buckets = int(bucket_tokens), int(max_buckets)
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.signature: tuple | None = None
        self.pool = None
        self.stream: torch.cuda.Stream | None = None
        self._bufs: dict[str, torch.Tensor] = {}
        self._grad_bufs: list[torch.Tensor] = []
        self.disabled = False
        self.replays = 0  # replays and captures so far: a backward checks that none came after its forward
        self.pending: Any = None  # weakref to the autograd node of a graphed forward awaiting its backward
        self._pending_fallbacks = 0
        self.stats = {"eager": 0, "captured": 0, "replayed": 0}
        self.last_error: str | None = None

    # -- bookkeeping ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every graph, the shared memory pool and the shared buffers."""
        self.entries.clear()
        self.pool = None
        self._bufs.clear()
        self._grad_bufs = []

    def _trainable(self, encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
        # every parameter and buffer counts (frozen ones too: the graphs read them where they were at capture)
        sig = tuple(
            (t.data_ptr(), tuple(t.shape), t.dtype, t.requires_grad)
            for t in (*encoder.parameters(), *encoder.buffers())
        )
        if sig != self.signature:
            self.reset()
            self.signature = sig
        return [p for p in encoder.parameters() if p.requires_grad]

    def bucket(self, n_tokens: int) -> int:
        """Padded row length of a batch of ``n_tokens`` real tokens (at least one pad token: the dummy cell)."""
        b = self.bucket_tokens
        return b * ((n_tokens + b) // b)

    def _pending(self) -> bool:
        waiting = self.pending is not None and self.pending() is not None
        self._pending_fallbacks = self._pending_fallbacks + 1 if waiting else 0
        if self._pending_fallbacks == 8:
            logger.warning(
                "genemamba_scvi: 8 forwards in a row ran without CUDA graphs because an earlier graphed forward "
                "still awaits its backward (an output kept with its autograd graph, e.g. an undetached loss stored "
                "for logging, or several forwards before one backward)"
            )
        return waiting

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A ``like``-shaped view of the shared buffer ``name``, grown by a quarter when too small.

        Graphs captured with an older buffer keep their view of it (it lives as long as they do).
        """
        buf = self._bufs.get(name)
        n = like.shape[0]
        if buf is None or buf.shape[0] < n or buf.shape[1:] != like.shape[1:] or buf.dtype != like.dtype:
            buf = self._bufs[name] = like.new_empty((n + n // 4, *like.shape[1:]))
        return buf[:n]

    # -- the call -------------------------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, cu: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """The encoder's packed row on the real cells (``[n_tokens, d]``), through the bucket's graphs."""
        enc = self._encoder()
        if enc is None:
            raise RuntimeError("the encoder of these CUDA graphs no longer exists")
        params = self._trainable(enc)
        dev = tokens.device
        enabled = torch.is_autocast_enabled(dev.type)
        amp = (enabled, torch.get_autocast_dtype(dev.type) if enabled else None)
        T = self.bucket(n_tokens)
        key = (T, cu.numel(), amp)
        e = self.entries.get(key)
        if e is None:
            e = _Entry(T, tokens.new_zeros(T), cu.new_empty(cu.numel() + 1))
            self.entries[key] = e
            while len(self.entries) > self.max_buckets:
                self.entries.popitem(last=False)
        self.entries.move_to_end(key)
        e.seen += 1
        if (e.fwd is None and e.seen < 2) or self._pending():
            # first batch of a bucket (compiles, autotunes), or a forward while another awaits its backward (whose
            # graph still reads the static inputs): eagerly, on the same padded row, static buffers untouched
            self.stats["eager"] += 1
            return enc._forward_packed_row(*pad_packed_row(tokens, cu, T), T)[:n_tokens]
        # static inputs: the real tokens, pad tokens (0), the cells' bounds, then the dummy cell's end
        e.tokens[:n_tokens].copy_(tokens)
        e.tokens[n_tokens:].zero_()
        e.cu[:-1].copy_(cu)
        e.cu[-1:].fill_(T)
        if e.fwd is None:
            try:
                self._capture(enc, e, params, amp, dev)
            except Exception as err:
                self.disabled = True
                self.reset()
                self.last_error = f"{type(err).__name__}: {err}"[:800]
                raise RuntimeError(
                    "genemamba_scvi: recording the encoder's training pass as a CUDA graph failed "
                    f"({self.last_error}). A failed capture can leave this process's CUDA state unusable: restart "
                    "it and train with cuda_graphs=False (GeneMambaEncoder.cuda_graphs = False)."
                ) from err
            self.stats["captured"] += 1
            self.replays += 1
        self.stats["replayed"] += 1
        out = _Replay.apply(self, e, *params)
        self.pending = weakref.ref(out.grad_fn)  # the node lives exactly as long as its backward may still run
        return out[:n_tokens]

    def _capture(self, enc, e: _Entry, params: list[torch.nn.Parameter], amp, dev: torch.device) -> None:
        enabled, dtype = amp[0], amp[1] or torch.get_autocast_dtype(dev.type)

        def run() -> torch.Tensor:
            # autocast without its weight-cast cache: the casts are recorded, so replays see updated weights
            with torch.autocast(dev.type, dtype=dtype, enabled=enabled, cache_enabled=False):
                return enc._forward_packed_row(e.tokens, e.cu, e.n_tokens)

        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        if not self._grad_bufs:
            self._grad_bufs = [torch.zeros_like(p) for p in params]
        gc_on = gc.isenabled()
        gc.disable()  # a collection inside a capture may free CUDA objects (events, graphs): that breaks it
        try:
            with enc.capturable():
                if self.stream is None:  # once: library handles (cuBLAS, ...) of the capture stream made outside
                    self.stream = torch.cuda.Stream(dev)
                    self.stream.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(self.stream):
                        out = run()
                        torch.autograd.grad(out, params, torch.zeros_like(out), allow_unused=True)
                        del out
                    torch.cuda.current_stream(dev).wait_stream(self.stream)
                torch.cuda.synchronize(dev)
                fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
                mode = "thread_local"  # other threads (a pin-memory thread, ...) may go on using CUDA meanwhile
                with torch.cuda.graph(fwd, pool=self.pool, stream=self.stream, capture_error_mode=mode):
                    out = run()
                    e.out = self._buffer("out", out)
                    e.out.copy_(out)
                e.grad_out = self._buffer("grad_out", out)
                with torch.cuda.graph(bwd, pool=self.pool, stream=self.stream, capture_error_mode=mode):
                    grads = torch.autograd.grad(out, params, e.grad_out, allow_unused=True)
                    for buf, g in zip(self._grad_bufs, grads, strict=True):
                        if g is not None:
                            buf.copy_(g)
                e.grads = tuple(b if g is not None else None for b, g in zip(self._grad_bufs, grads, strict=True))
                e.fwd, e.bwd = fwd, bwd
        finally:
            if gc_on:
                gc.enable()


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> {bucket_tokens: PackedGraphs}


def drop_graphs(encoder: torch.nn.Module) -> None:
    """Free the encoder's graphs, their memory pools and buffers (they are rebuilt if graphs are used again)."""
    for g in _GRAPHS.pop(encoder, {}).values():
        g.reset()


def graphs_of(encoder: torch.nn.Module, bucket_tokens: int) -> PackedGraphs:
    """The encoder's :class:`PackedGraphs` for ``bucket_tokens`` (made on first use)."""
    per_bucket = _GRAPHS.setdefault(encoder, {})
    g = per_bucket.get(bucket_tokens)
    if g is None:
        g = per_bucket[bucket_tokens] = PackedGraphs(encoder, bucket_tokens)
    return g
