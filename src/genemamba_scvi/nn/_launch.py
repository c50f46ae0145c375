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


#: Launch mamba-ssm's autotuned SSD-backward kernels through :func:`fast_autotuner_run` once their key is tuned
#: (False: Triton's ``Autotuner.run`` on every launch; an ablation).
FAST_AUTOTUNER = True


def fast_autotuner_run(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``triton.runtime.autotuner.Autotuner.run`` for a key already tuned, without its per-launch overhead.

    Triton 3.6's ``Autotuner.run`` filters every call's arguments with a membership test against the list of
    argument names (quadratic in the ~25 arguments of mamba-ssm's SSD kernels) before it builds the key; the
    SSD backward launches ten such kernels a layer and the host, not the GPU, then bounds a training step on
    some hosts (``benchmarks/NOTES_throughput.md``, section 14). This builds the same key (the ``key`` arguments,
    then the dtype of every named argument that has one, in call order) with a set, and for a key in the
    autotuner's cache runs exactly what ``Autotuner.run`` runs for it: the config's pre-hook, then the kernel with
    the config's keyword arguments. An untuned key, a single-config autotuner or :data:`FAST_AUTOTUNER` off goes
    to ``Autotuner.run`` itself (which tunes, or reads its disk cache, as usual).
    """
    from triton.runtime.autotuner import Autotuner

    if not FAST_AUTOTUNER or len(self.configs) <= 1:
        return Autotuner.run(self, *args, **kwargs)
    names = self.__dict__.get("_genemamba_names")
    if names is None:
        names = self._genemamba_names = frozenset(self.arg_names)
    nargs = dict(zip(self.arg_names, args))
    all_args = {**nargs, **kwargs}
    key = [all_args[k] for k in self.keys if k in names and k in all_args]
    key.extend(str(v.dtype) for k, v in all_args.items() if k in names and hasattr(v, "dtype"))
    config = self.cache.get(tuple(key))
    if config is None:
        return Autotuner.run(self, *args, **kwargs)
    self.best_config = config
    config_kwargs = config.all_kwargs()
    if config.pre_hook is not None:
        self.nargs = nargs
        config.pre_hook({**all_args, **config_kwargs})
        self.nargs = None
    return self.fn.run(*args, **kwargs, **config_kwargs)


def speed_up_autotuners(modules: Any) -> int:
    """Route every ``triton.autotune`` kernel defined in ``modules`` through :func:`fast_autotuner_run`.

    Only the instances are changed (their ``run``), not Triton's class, so other autotuned kernels in the process
    are untouched. Returns how many were routed (instances already routed are skipped).
    """
    from types import MethodType

    from triton.runtime.autotuner import Autotuner

    n = 0
    for mod in modules:
        for obj in vars(mod).values():
            if isinstance(obj, Autotuner) and "run" not in obj.__dict__:
                obj.run = MethodType(fast_autotuner_run, obj)
                n += 1
    return n
