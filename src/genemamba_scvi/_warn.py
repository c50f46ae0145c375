"""Warnings that point at the user's line, and the command line's log handler."""

from __future__ import annotations

import logging
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


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is at each message, not as it was when the first command ran.

    ``main`` called again in one process (tests, a notebook, whose kernel replaces ``sys.stderr``) printed "Logging
    error" tracebacks into a stream closed since.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # (set by StreamHandler.__init__; the current sys.stderr is used instead)
        pass
