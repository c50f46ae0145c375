"""GeneMamba for scverse: a bidirectional Mamba-2 foundation model for single-cell RNA-seq.

Public names are imported lazily so that ``genemamba_scvi.nn`` (pure PyTorch) can be used on
machines without scvi-tools / anndata installed (e.g. kernel benchmarks on a GPU box).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0.dev0"  # docs/changelog.md says what changed (a development version until 0.3.0)

if TYPE_CHECKING:  # type checkers and IDEs see the lazy names' real signatures (never run)
    from genemamba_scvi import data as data
    from genemamba_scvi import datasets as datasets
    from genemamba_scvi import nn as nn
    from genemamba_scvi.data.vocab import GeneVocab as GeneVocab
    from genemamba_scvi.metrics import benchmark_integration as benchmark_integration
    from genemamba_scvi.model import GeneMambaModel as GeneMambaModel
    from genemamba_scvi.module import GeneMambaModule as GeneMambaModule
    from genemamba_scvi.nn.config import GeneMambaConfig as GeneMambaConfig

_LAZY = {
    "GeneMambaModel": "genemamba_scvi.model",
    "GeneMambaConfig": "genemamba_scvi.nn.config",
    "GeneMambaModule": "genemamba_scvi.module",
    "GeneVocab": "genemamba_scvi.data.vocab",
    "benchmark_integration": "genemamba_scvi.metrics",
    "datasets": "genemamba_scvi.datasets",
    "data": "genemamba_scvi.data",
    "nn": "genemamba_scvi.nn",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name].endswith("." + name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genemamba_scvi' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy public names too (tab completion offers ``GeneMambaModel`` before its first use)."""
    return sorted({*globals(), *_LAZY})
