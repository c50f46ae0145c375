"""A memory checker for Triton kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors).

A compiled kernel that loads or stores outside its tensors does not fail: it reads or overwrites whatever the
allocator put next to them (on a GPU, usually another live tensor of the same caching-allocator segment). Under
the interpreter every ``tl.load``, ``tl.store`` and atomic is a numpy call on the raw addresses; inside
:func:`bounds_checked`, every address such a call touches (where its mask is true) must lie within the span of one
of the kernel's tensor arguments (``data_ptr`` to the last element its sizes and strides reach). Each access
outside is recorded with the kernel, the operation and how far it lies from the nearest argument.

Usage::

    with bounds_checked() as bad:
        run_the_kernels()
    assert not bad, bad[:3]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def _span(t: torch.Tensor) -> tuple[int, int] | None:
    """``[first byte, one past the last byte]`` that the view ``t`` can address, or None when it is empty."""
    if t.numel() == 0:
        return None
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _tensors(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            for name, t in _tensors(v):
                yield (f"{k}" if name == "" else f"{k}.{name}"), t
    elif isinstance(obj, tuple | list):
        for i, v in enumerate(obj):
            for name, t in _tensors(v):
                yield (f"{i}" if name == "" else f"{i}.{name}"), t
    elif isinstance(obj, torch.Tensor):
        yield "", obj


@contextlib.contextmanager
def bounds_checked() -> Iterator[list[dict[str, Any]]]:
    """Record every interpreted load, store or atomic outside the launching kernel's tensor arguments."""
    from triton.runtime import interpreter as ti

    bad: list[dict[str, Any]] = []
    launch: dict[str, Any] = {"kernel": None, "spans": []}
    grid_call, init_args = ti.GridExecutor.__call__, ti.GridExecutor._init_args_hst
    builder = ti.InterpreterBuilder
    originals = {n: getattr(builder, n) for n in ("create_masked_load", "create_masked_store", "create_atomic_rmw",
                                                  "create_atomic_cas")}  # fmt: skip

    def call(self, *args, **kwargs):
        outer = dict(launch)
        launch["kernel"] = getattr(self.fn, "__name__", str(self.fn))
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            launch.update(outer)

    def init(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        names = list(self.arg_names) if hasattr(self, "arg_names") else []
        named = [(names[i] if i < len(names) else str(i), a) for i, a in enumerate(args_hst)]
        spans = []
        for base, a in [*named, *kwargs_hst.items()]:
            for sub, t in _tensors(a):
                sp = _span(t)
                if sp is not None:
                    spans.append((base + (f".{sub}" if sub else ""), *sp))
        launch["spans"] = spans
        return args_hst, kwargs_hst

    def check(op: str, ptrs, mask) -> None:
        if launch["kernel"] is None:
            return
        p = np.asarray(ptrs.data).astype(np.uint64)
        m = np.ones(p.shape, dtype=bool)
        if mask is not None:
            m = np.broadcast_to(np.asarray(mask.data, dtype=bool), p.shape)
        active = p[m].astype(np.int64)
        if active.size == 0:
            return
        size = max(ptrs.get_element_ty().primitive_bitwidth // 8, 1)
        ok = np.zeros(active.shape, dtype=bool)
        for _, lo, hi in launch["spans"]:
            ok |= (active >= lo) & (active + size <= hi)
        if ok.all():
            return
        out = active[~ok]
        nearest = min(launch["spans"], key=lambda s: min(abs(int(out[0]) - s[1]), abs(int(out[0]) - s[2])),
                      default=("?", 0, 0))  # fmt: skip
        bad.append({"kernel": launch["kernel"], "op": op, "count": int(out.size), "of": int(active.size),
                    "nearest_arg": nearest[0], "bytes_past_end": int(out.max()) + size - nearest[2],
                    "bytes_before_start": nearest[1] - int(out.min())})  # fmt: skip

    def masked_load(self, ptrs, mask, other, *rest):
        check("load", ptrs, mask)
        return originals["create_masked_load"](self, ptrs, mask, other, *rest)

    def masked_store(self, ptrs, value, mask, *rest):
        check("store", ptrs, mask)
        return originals["create_masked_store"](self, ptrs, value, mask, *rest)

    def atomic_rmw(self, rmw_op, ptr, val, mask, *rest):
        check("atomic", ptr, mask)
        return originals["create_atomic_rmw"](self, rmw_op, ptr, val, mask, *rest)

    def atomic_cas(self, ptr, cmp, val, *rest):
        check("atomic_cas", ptr, None)
        return originals["create_atomic_cas"](self, ptr, cmp, val, *rest)

    ti.GridExecutor.__call__, ti.GridExecutor._init_args_hst = call, init
    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store
    builder.create_atomic_rmw, builder.create_atomic_cas = atomic_rmw, atomic_cas
    try:
        yield bad
    finally:
        ti.GridExecutor.__call__, ti.GridExecutor._init_args_hst = grid_call, init_args
        for n, f in originals.items():
            setattr(builder, n, f)
