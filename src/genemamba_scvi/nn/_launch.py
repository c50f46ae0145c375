"""Small helpers shared by the modules that launch this package's Triton kernels (imports nothing but the stdlib)."""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any


@functools.cache
def _kernel_module(name: str) -> Any:
    """A Triton kernel module of this package (``nn/<name>.py``), imported on first use (Triton may be absent)."""
    return importlib.import_module(f"genemamba_scvi.nn.{name}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: Launch this package's Triton kernels through :func:`launch`'s cache of compiled kernels (False: every launch goes
#: through ``kernel[grid](...)``, Triton's own per-launch Python path; an ablation).
FAST_LAUNCH = True
_LAUNCHERS: dict[tuple, Any] = {}
_I32 = (-(2**31), 2**31)


def _spec(a: Any) -> Any:
    """What Triton specialises a kernel on, for one argument (at least as fine as Triton's own key).

    Tensors: dtype and 16-byte alignment; ints: 32/64-bit range, equal to 1, divisible by 16; bools, floats and
    None: their kind. Anything else (a dtype, a string) by value.
    """
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return ("i", _I32[0] <= a < _I32[1], a >= 2**63, a == 1, a % 16 == 0)
    if isinstance(a, float):
        return "f"
    if hasattr(a, "data_ptr"):
        return (a.dtype, a.data_ptr() % 16 == 0)
    return a


def _current_stream(device: int) -> int:
    import torch

    return torch.cuda.current_stream(device).cuda_stream


def _current_device() -> int:
    import torch

    return torch.cuda.current_device()


def _hooked(hook: Any) -> bool:
    """Whether a Triton launch hook is set: None or an empty ``HookChain`` (Triton 3.6's default) is not."""
    return hook is not None and bool(getattr(hook, "calls", True))


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` with Triton's per-launch Python work done once per specialisation.

    Triton's launch path binds and specialises every argument, builds a cache key string and checks globals on
    every call; at ~20 kernels a layer that host time starves the GPU between short kernels of the backward
    (``benchmarks/NOTES_throughput.md``, section 14). Here the compiled kernel returned by the first launch is
    kept under a key of the kernel, the device, each argument's specialisation (:func:`_spec`, at least as fine
    as Triton's) and the keyword arguments (constexprs and launch options), and later launches call its
    launcher directly with the arguments in the kernel's parameter order (keyword constexprs and defaults
    appended, as Triton's binder passes them). Falls back to ``kernel[grid]`` under the interpreter, with
    a Triton launch hook set (a profiler such as Proton), or when :data:`FAST_LAUNCH` is off.
    """
    if not FAST_LAUNCH or _interpreting():
        kernel[grid](*args, **kwargs)
        return
    from triton import knobs

    if _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
        kernel[grid](*args, **kwargs)
        return
    device = _current_device()
    key = (kernel, device, tuple(map(_spec, args)), tuple(kwargs.items()))
    try:
        hit = _LAUNCHERS.get(key)
    except TypeError:  # an unhashable keyword value
        kernel[grid](*args, **kwargs)
        return
    if hit is None:
        compiled = kernel[grid](*args, **kwargs)
        _LAUNCHERS[key] = _cached_launch(kernel, compiled, len(args), kwargs)
        return
    if hit is False:  # not cacheable (see _cached_launch)
        kernel[grid](*args, **kwargs)
        return
    compiled, tail = hit
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], g1, g2, _current_stream(device), compiled.function, compiled.packed_metadata, None, None,
                 None, *args, *tail)  # fmt: skip


def _cached_launch(kernel: Any, compiled: Any, n_args: int, kwargs: dict[str, Any]) -> tuple[Any, tuple] | bool:
    """``(compiled, tail)`` for :func:`launch`'s cache, or False where the key would not pin the compiled kernel.

    Not cached: a constexpr passed by position (its value is not in the key), or a runtime argument passed by
    keyword.
    """
    params = getattr(kernel, "params", None)
    if params is None or compiled is None or any(p.is_constexpr for p in params[:n_args]):
        return False
    tail = []
    for p in params[n_args:]:  # keyword constexprs, then defaults, in the kernel's parameter order
        if p.name in kwargs and p.is_constexpr:
            tail.append(kwargs[p.name])
        elif p.name not in kwargs and p.has_default:
            tail.append(p.default)
        else:
            return False
    return compiled, tuple(tail)
