"""Keyed permutation and the stateful, DDP-aware batch sampler of corpus pre-training."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

_SAMPLER_STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------- permutation
def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A keyed pseudo-random bijection of ``[0, n)`` evaluated pointwise, in O(1) memory.

    A balanced Feistel network on ``2 * h`` bits (``4**h >= n``) with splitmix64 round functions is a
    bijection of ``[0, 4**h)``; cycle walking (re-applying it while the value is ``>= n``) restricts it to a
    bijection of ``[0, n)`` (Black & Rogaway 2002). Expected walks are below 4 steps since ``4**h < 4 n``.

    Parameters
    ----------
    n
        Size of the domain.
    key
        Integers keying the permutation (e.g. ``(seed, epoch)``).
    rounds
        Feistel rounds.
    """

    def __init__(self, n: int, key: Sequence[int], rounds: int = 6):
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        self.n = int(n)
        bits = max(int(n - 1).bit_length(), 1)
        self._half = np.uint64((bits + 1) // 2)
        self._mask = np.uint64((1 << int(self._half)) - 1)
        self._keys = np.random.SeedSequence([int(k) for k in key]).generate_state(rounds, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for k in self._keys:
            left, right = right, left ^ (_splitmix64(right ^ k) & self._mask)
        return (left << self._half) | right

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """Images of ``idx`` (int array with values in ``[0, n)``) as ``int64``."""
        x = self._encrypt(np.asarray(idx, dtype=np.uint64))
        bad = np.flatnonzero(x >= np.uint64(self.n))
        while bad.size:
            x[bad] = self._encrypt(x[bad])
            bad = bad[x[bad] >= np.uint64(self.n)]
        return x.astype(np.int64)


class CorpusSplit:
    """Cells of a corpus held out for validation: the first ``n_validation`` positions of a keyed permutation.

    Position ``p`` of the validation part is cell ``P(p)`` and position ``p`` of the training part is cell
    ``P(n_validation + p)``, with ``P`` a :class:`FeistelPermutation` of all cells keyed by ``seed``: a random
    subset, spread over every input file of the corpus, fixed by the seed, in O(1) memory. Without validation
    cells the training part is the corpus itself (``P`` is not applied), so a run without a split reads the
    cells it read before splits existed.

    Parameters
    ----------
    n_cells
        Cells in the corpus.
    validation_size
        Share of the cells (``0 < x < 1``, at least one cell) or number of cells (an integer) held out; ``None``
        or ``0``: none.
    seed
        Key of the permutation.
    """

    def __init__(self, n_cells: int, validation_size: float | int | None, seed: int = 0):
        self.n_cells = int(n_cells)
        self.seed = int(seed)
        self.n_validation = _n_held_out(self.n_cells, validation_size)
        self.n_train = self.n_cells - self.n_validation
        self._perm = FeistelPermutation(self.n_cells, (self.seed, 0x76616C)) if self.n_validation else None

    def train_cells(self, positions: np.ndarray) -> np.ndarray:
        """Corpus indices of training positions (``[0, n_train)``)."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self._perm is None else self._perm(positions + self.n_validation)

    def validation_cells(self, positions: np.ndarray) -> np.ndarray:
        """Corpus indices of validation positions (``[0, n_validation)``)."""
        assert self._perm is not None, "no validation cells"
        return self._perm(np.asarray(positions, dtype=np.int64))


def _n_held_out(n_cells: int, validation_size: float | int | None) -> int:
    if validation_size is None or (not isinstance(validation_size, bool) and validation_size == 0):
        return 0
    if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real):
        raise ValueError(f"validation_size must be a share in (0, 1) or a number of cells, got {validation_size!r}")
    if isinstance(validation_size, numbers.Integral):
        n = int(validation_size)
    elif 0 < validation_size < 1:
        n = max(1, round(float(validation_size) * n_cells))
    else:
        raise ValueError(
            f"validation_size={validation_size!r}: give a share in (0, 1) or a whole number of cells (e.g. 500)"
        )
    if not 0 < n < n_cells:
        raise ValueError(
            f"validation_size={validation_size!r} holds out {n} of the corpus' {n_cells} cells: at least one cell "
            "must stay on each side"
        )
    return n


# ---------------------------------------------------------------------------------------------- sampler
class CorpusBatchSampler(DistributedSampler):
    """Stateful, DDP-aware batch sampler over the cells of a corpus; yields arrays of cell indices.

    Epoch ``e`` orders the cells by a keyed permutation of ``(seed, e)`` (:class:`FeistelPermutation`,
    O(1) memory, or the identity with ``shuffle=False``). Step ``s`` takes the global batch of positions
    ``[s*B*W, (s+1)*B*W)`` of that order (``B`` = ``batch_size`` per rank, ``W`` = ``num_replicas``) and rank
    ``r`` gets the ``r``-th of ``W`` contiguous, near-equal parts. All ranks therefore run the same number of
    steps and each cell is seen **exactly once per epoch over all ranks**. The only exception: when the last
    global batch has fewer than ``W`` cells, it is padded to ``W`` with the first cells of the epoch (at most
    ``W - 1`` repeats); ``drop_last=True`` instead drops an incomplete last global batch (each rank then
    always gets ``B`` cells; at most ``B*W - 1`` cells, different in each epoch, are skipped). With
    ``drop_last=False`` the last step may give ranks one cell more or less than each other (DDP averages
    the gradients of the ranks, so those cells weigh marginally differently in that one step).

    The sampler derives from :class:`torch.utils.data.DistributedSampler` only so that Lightning recognises it
    as distributed and leaves it alone; it does not use the base class' logic.

    Parameters
    ----------
    n_cells
        Number of cells.
    batch_size
        Cells per batch on each rank.
    num_replicas, rank
        World size and this process' rank.
    shuffle
        Shuffle every epoch (otherwise corpus order).
    seed
        Seed of the shuffle (the same on every rank).
    drop_last
        Drop an incomplete last global batch.
    bucket_window
        Length bucketing (off with 0): within each window of ``bucket_window`` global batches, cells are
        sorted by length before being cut into batches, and the batches of the window are shuffled. The
        epoch still sees every cell once; batches hold cells of similar length (less padding).
    lengths_fn
        Lengths of cell indices (needed for bucketing; of the indices before ``cell_map``).
    cell_map
        Maps the sampler's indices ``[0, n_cells)`` to the cells it yields (a part of a :class:`CorpusSplit`);
        ``None``: the indices themselves.
    split
        ``[validation cells, seed]`` of the :class:`CorpusSplit` behind ``cell_map``, kept in :meth:`state_dict`
        so that a run is not resumed with another split.

    Attributes
    ----------
    progress_fn
        Optional callable giving the number of batches of the current epoch the *trainer* has processed;
        :meth:`state_dict` uses it (set by :class:`CorpusDataModule`) because data loaders fetch ahead.
    """

    def __init__(
        self,
        n_cells: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_window: int = 0,
        lengths_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        cell_map: Callable[[np.ndarray], np.ndarray] | None = None,
        split: Sequence[int] | None = None,
    ):
        # DistributedSampler.__init__ is not called on purpose: it needs a dataset and a process group.
        if n_cells <= 0:
            raise ValueError(f"the corpus has no cells (n_cells={n_cells})")
        if batch_size <= 0 or num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid batch_size={batch_size}, num_replicas={num_replicas}, rank={rank}")
        if bucket_window and lengths_fn is None:
            raise ValueError("bucket_window > 0 needs lengths_fn")
        self.n_cells = int(n_cells)
        self.batch_size = int(batch_size)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.bucket_window = int(bucket_window)
        self.lengths_fn = lengths_fn
        self.cell_map = cell_map
        self.split = None if split is None else [int(v) for v in split]
        self.epoch = 0
        self.progress_fn: Callable[[], int] | None = None
        self._start_step = 0
        self._yielded = 0
        self._perm: tuple[int, FeistelPermutation] | None = None
        self._window: tuple[int, int, np.ndarray] | None = None
        if len(self) == 0:
            raise ValueError(
                f"drop_last=True with {self.n_cells} cells and a global batch of {self.global_batch_size} "
                "(batch_size x world size) leaves no batch"
            )

    # ------------------------------------------------------------------ sizes
    @property
    def global_batch_size(self) -> int:
        """Cells per step over all ranks."""
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        g = self.global_batch_size
        return self.n_cells // g if self.drop_last else -(-self.n_cells // g)

    # ------------------------------------------------------------------ order
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle); a position restored for another epoch is discarded."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start_step = 0
        self.epoch = epoch

    def _order(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions.astype(np.int64)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, FeistelPermutation(self.n_cells, (self.seed, epoch, 0x6E6D)))
        return self._perm[1](positions)

    def _bucketed(self, epoch: int, step: int, positions: np.ndarray) -> np.ndarray:
        g = self.global_batch_size
        w = step // self.bucket_window
        if self._window is None or self._window[:2] != (epoch, w):
            a = w * self.bucket_window * g
            b = min(a + self.bucket_window * g, self.n_cells)
            cells = self._order(epoch, np.arange(a, b))
            cells = cells[np.argsort(np.asarray(self.lengths_fn(cells)), kind="stable")]
            n_full = cells.size // g
            groups = np.random.default_rng([self.seed, epoch, w, 0x6275]).permutation(n_full)
            parts = [cells[i * g : (i + 1) * g] for i in groups.tolist()]
            if cells.size > n_full * g:  # a partial global batch (end of the epoch) stays last
                parts.append(cells[n_full * g :])
            self._window = (epoch, w, np.concatenate(parts))
        start = w * self.bucket_window * g
        return self._window[2][positions - start]

    def rank_positions(self, step: int, rank: int | None = None) -> np.ndarray:
        """Positions in the epoch order that ``rank`` (default: this rank) gets at ``step``."""
        rank = self.rank if rank is None else rank
        g, w = self.global_batch_size, self.num_replicas
        a = step * g
        pos = np.arange(a, min(a + g, self.n_cells), dtype=np.int64)
        if pos.size < w:  # tail shorter than the number of ranks: repeat the epoch's first cells
            pos = np.concatenate([pos, np.arange(w - pos.size, dtype=np.int64) % self.n_cells])
        base, extra = divmod(pos.size, w)
        lo = rank * base + min(rank, extra)
        return pos[lo : lo + base + int(rank < extra)]

    def batch(self, epoch: int, step: int, rank: int | None = None) -> np.ndarray:
        """Cell indices of ``rank`` (default: this rank) at ``step`` of ``epoch``."""
        pos = self.rank_positions(step, rank)
        out = self._order(epoch, pos)
        if self.bucket_window and self.shuffle:
            in_range = pos >= step * self.global_batch_size  # padding positions wrap to the epoch start
            if in_range.any():
                out[in_range] = self._bucketed(epoch, step, pos[in_range])
        return out if self.cell_map is None else self.cell_map(out)

    def __iter__(self):
        epoch, start = self.epoch, self._start_step
        self._start_step = 0
        self._yielded = start
        for step in range(start, len(self)):
            self._yielded = step + 1
            yield self.batch(epoch, step)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Position in the data: epoch and cells consumed in it (over all ranks)."""
        consumed = int(self.progress_fn()) if self.progress_fn is not None else self._yielded
        return {
            "version": _SAMPLER_STATE_VERSION,
            "epoch": self.epoch,
            "cells_consumed": consumed * self.global_batch_size,
            "global_batch_size": self.global_batch_size,
            "n_cells": self.n_cells,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "bucket_window": self.bucket_window,
            **({"split": self.split} if self.split is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the next batch is the first one not yet consumed).

        Raises
        ------
        ValueError
            If the corpus size, seed or ordering options differ from the checkpoint's (the order would not
            continue the interrupted epoch).
        """
        diffs = [
            f"{k}: checkpoint {state.get(k)!r}, now {getattr(self, k)!r}"
            for k in ("n_cells", "seed", "shuffle", "drop_last", "bucket_window")
            if k in state and state[k] != getattr(self, k)
        ]
        if list(state.get("split") or [0, self.seed]) != list(self.split or [0, self.seed]):
            diffs.append(f"validation cells and seed: checkpoint {state.get('split')!r}, now {self.split!r}")
        if diffs:
            raise ValueError("cannot resume the corpus sampler from this checkpoint: " + "; ".join(diffs))
        consumed = int(state["cells_consumed"])
        step, rest = divmod(consumed, self.global_batch_size)
        self.epoch = int(state["epoch"])
        if consumed >= self.n_cells or step >= len(self):  # the epoch was finished: start the next one
            self.epoch += 1
            self._start_step = self._yielded = 0
            return
        if rest or state.get("global_batch_size") != self.global_batch_size:
            warnings.warn(
                f"resuming with a global batch of {self.global_batch_size} cells (checkpoint: "
                f"{state.get('global_batch_size')}); continuing at cell {step * self.global_batch_size} of the "
                f"epoch's order ({consumed} were consumed)",
                UserWarning,
                stacklevel=2,
            )
        self._start_step = step
        self._yielded = step
