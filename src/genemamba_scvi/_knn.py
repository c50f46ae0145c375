"""Exact nearest neighbours for scib-metrics' :class:`~scib_metrics.benchmark.Benchmarker` on small data.

scib-metrics finds neighbours with pynndescent, whose numba functions compile on their first call of a process,
once for the Benchmarker's neighbours and again (float64) for kBET's per-label diffusion neighbours: on a 2-core
machine the first scoring of 700 cells took 72 s with one batch (70 of them compiling; 2 s on a second call) and
over 2 minutes with batch metrics. An exact brute-force search over a few thousand cells takes well under a second
and gives the true neighbours (pynndescent's are approximate), so ``neighbors="auto"`` uses it, for both searches,
up to :data:`EXACT_MAX_CELLS` cells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import numpy as np

#: Largest number of cells ``neighbors="auto"`` searches exactly (n^2 distances; 20,000 cells: seconds on 2 cores).
EXACT_MAX_CELLS = 20_000

Neighbors = Literal["auto", "exact", "pynndescent"]


def exact_neighbors(X: np.ndarray, n_neighbors: int):
    """``n_neighbors`` nearest cells of every cell (itself first), Euclidean, as scib-metrics' ``NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X)
    k = min(int(n_neighbors), X.shape[0])
    distances, indices = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances)


def _exact_as_pynndescent(X: np.ndarray, n_neighbors: int, random_state: int = 0, n_jobs: int = 1):
    """:func:`exact_neighbors` with the signature of ``scib_metrics.nearest_neighbors.pynndescent``."""
    return exact_neighbors(X, n_neighbors)


def check_neighbors(neighbors: str) -> None:
    """Refuse a ``neighbors`` setting that is none of the three, by name."""
    if neighbors not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"neighbors must be 'auto', 'exact' or 'pynndescent', got {neighbors!r}")


@contextlib.contextmanager
def scib_neighbors(neighbors: Neighbors, n_cells: int) -> Iterator:
    """Yield the ``neighbor_computer`` for :meth:`Benchmarker.prepare` (``None``: scib-metrics' pynndescent).

    When the search is exact, scib-metrics' own pynndescent is replaced by it while the context is open, so kBET's
    per-label diffusion neighbours (``scib_metrics.utils.diffusion_nn``, which calls
    ``scib_metrics.nearest_neighbors.pynndescent``) are exact too and nothing is compiled.
    """
    check_neighbors(neighbors)
    if not (neighbors == "exact" or (neighbors == "auto" and n_cells <= EXACT_MAX_CELLS)):
        yield None
        return
    import scib_metrics.nearest_neighbors as scib_nn

    original = getattr(scib_nn, "pynndescent", None)
    scib_nn.pynndescent = _exact_as_pynndescent
    try:
        yield exact_neighbors
    finally:
        if original is not None:
            scib_nn.pynndescent = original
