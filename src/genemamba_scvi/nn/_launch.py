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
