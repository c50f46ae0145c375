"""Package data of genemamba-scvi (real, small, offline); see ``SOURCES.md``.

Load it through :mod:`genemamba_scvi.datasets`; :func:`resource_path` finds a file on disk.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

__all__ = ["resource_path"]

_PACKAGE = "genemamba_scvi._resources"

_EXIT_STACK = contextlib.ExitStack()
atexit.register(_EXIT_STACK.close)


def resource_path(relative: str) -> Path:
    """Path on disk of an embedded resource file.

    Parameters
    ----------
    relative
        Path relative to ``genemamba_scvi/_resources``, e.g. ``"genes/gencode_v44_gene_id2name.csv"``.

    Returns
    -------
    A :class:`pathlib.Path` to the file. When the package is imported from a zip archive the file is
    extracted to a temporary location that lives until the interpreter exits.
    """
    traversable = resources.files(_PACKAGE).joinpath(*relative.split("/"))
    if not traversable.is_file():
        raise FileNotFoundError(f"embedded resource {relative!r} not found in {_PACKAGE} (broken installation?)")
    if isinstance(traversable, Path):
        return traversable
    return Path(_EXIT_STACK.enter_context(resources.as_file(traversable)))
