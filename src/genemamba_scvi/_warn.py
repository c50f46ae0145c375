"""Warnings that point at the user's line."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["user_stacklevel"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_DECORATOR_FILES = ("contextlib.py",)  # torch.no_grad and contextmanager wrappers between the user and the package


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller: the first frame outside this package (the user's)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_code.co_filename.endswith(_DECORATOR_FILES)
    ):
        level += 1
        frame = frame.f_back
    return level
