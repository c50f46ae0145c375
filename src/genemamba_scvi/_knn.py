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
import functools
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


def _eigen_from_a_fixed_start(transitions_sym, n_comps: int = 15, sort: str = "decrease", *, scibs=None):
    """The diffusion map's leading eigenpairs, ARPACK started from a vector fixed by seed 0.

    scanpy's diffusion map fixes its start vector the same way. scib-metrics' ``_compute_eigen`` lets ARPACK draw it
    from a state that moves with every call of the process, so kBET of the same embedding and labels came out 0.862
    or 0.852 by how many kBETs ran before it (session 34, four calls in a row on the 700 pbmc68k cells). ``scibs``:
    scib-metrics' own function, for the dense case it solves without ARPACK.
    """
    from scipy.sparse.linalg import eigsh

    n = transitions_sym.shape[0]
    k = min(n - 1, n_comps)
    if n_comps == 0 or k < 1:
        return scibs(transitions_sym, n_comps=n_comps, sort=sort)
    start = np.random.default_rng(0).uniform(-1.0, 1.0, n)
    which = "LM" if sort == "decrease" else "SM"
    values, vectors = eigsh(transitions_sym.astype(np.float64), k=k, which=which, v0=start)
    values, vectors = values.astype(np.float32), vectors.astype(np.float32)
    if sort == "decrease":  # eigsh returns them in increasing order
        values, vectors = values[::-1], vectors[:, ::-1]
    return values, vectors


def check_neighbors(neighbors: str) -> None:
    """Refuse a ``neighbors`` setting that is none of the three, by name."""
    if neighbors not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"neighbors must be 'auto', 'exact' or 'pynndescent', got {neighbors!r}")


@contextlib.contextmanager
def scib_neighbors(neighbors: Neighbors, n_cells: int) -> Iterator:
    """Yield the ``neighbor_computer`` for :meth:`Benchmarker.prepare` (``None``: scib-metrics' pynndescent).

    When the search is exact, scib-metrics' own pynndescent is replaced by it while the context is open, so kBET's
    per-label diffusion neighbours (``scib_metrics.utils.diffusion_nn``, which calls
    ``scib_metrics.nearest_neighbors.pynndescent``) are exact too and nothing is compiled. With any search, kBET's
    diffusion map starts ARPACK from a fixed vector (:func:`_eigen_from_a_fixed_start`): the same input, the same kBET.
    """
    import scib_metrics.nearest_neighbors as scib_nn
    import scib_metrics.utils._diffusion_nn as scib_diffusion

    check_neighbors(neighbors)
    exact = neighbors == "exact" or (neighbors == "auto" and n_cells <= EXACT_MAX_CELLS)
    swaps = []
    if hasattr(scib_diffusion, "_compute_eigen"):
        scibs = scib_diffusion._compute_eigen
        swaps.append((scib_diffusion, "_compute_eigen", functools.partial(_eigen_from_a_fixed_start, scibs=scibs)))
    if exact and hasattr(scib_nn, "pynndescent"):
        swaps.append((scib_nn, "pynndescent", _exact_as_pynndescent))
    swaps = [(module, name, getattr(module, name), new) for module, name, new in swaps]
    for module, name, _, new in swaps:
        setattr(module, name, new)
    try:
        yield exact_neighbors if exact else None
    finally:
        for module, name, old, _ in swaps:
            setattr(module, name, old)
