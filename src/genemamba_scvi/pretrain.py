"""Pre-training from a tokenized corpus on disk: Lightning DataModule, DDP-correct sampler, exact resume.

The corpus is written by :func:`genemamba_scvi.data.corpus.build_corpus` (token shards + manifest) and
memory-mapped here, so host memory does not grow with the number of cells:

- :class:`CorpusBatchSampler` draws each epoch's order from a keyed pseudo-random permutation of the cells
  (a Feistel network with cycle walking: O(1) memory, a function of ``(seed, epoch)`` only), cuts it into
  global batches of ``batch_size x world_size`` cells and gives each rank its slice, so every cell is seen
  exactly once per epoch over all ranks (see the class for the one exception, a tail shorter than the
  number of ranks). It is stateful: Lightning stores its position in every checkpoint and a resumed run
  continues with the very next batch.
- :class:`CorpusTrainingPlan` seeds the masking of each step from ``(seed, rank, epoch, batch index)``, so
  a resumed run masks exactly as an uninterrupted one.
- :func:`pretrain_from_corpus` wires it together with :class:`lightning.pytorch.Trainer` (``strategy="ddp"``,
  bf16 mixed precision, gradient accumulation, checkpoints every N steps, ``ckpt_path`` to resume).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from scvi import REGISTRY_KEYS
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genemamba_scvi._constants import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi._precision import resolve_precision, training_on_gpu
from genemamba_scvi.data.corpus import TokenCorpus
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.module import GeneMambaModule, gene_set_tensors
from genemamba_scvi.nn.config import GeneMambaConfig
from genemamba_scvi.train import GeneMambaTrainingPlan

__all__ = [
    "CorpusBatchSampler",
    "CorpusDataLoader",
    "CorpusDataModule",
    "CorpusDataset",
    "CorpusTrainingPlan",
    "PretrainResult",
    "StepLossHistory",
    "pretrain_from_corpus",
]

logger = logging.getLogger("genemamba_scvi")

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
        Lengths of cell indices (needed for bucketing).

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
        if self.bucket_window and self.shuffle:
            in_range = pos >= step * self.global_batch_size  # padding positions wrap to the epoch start
            out = self._order(epoch, pos)
            if in_range.any():
                out[in_range] = self._bucketed(epoch, step, pos[in_range])
            return out
        return self._order(epoch, pos)

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


# ---------------------------------------------------------------------------------------------- data
class CorpusDataset(Dataset):
    """Map-style dataset over a :class:`~genemamba_scvi.data.corpus.TokenCorpus`; an item is a whole batch.

    ``dataset[cells]`` (an array of cell indices) returns ``{"tokens": LongTensor [B, L_max_in_batch],
    "lengths": LongTensor [B], "ind_x": LongTensor [B]}``: the keys of :mod:`genemamba_scvi.dataloader`
    (``ind_x`` = :attr:`scvi.REGISTRY_KEYS.INDICES_KEY`, the corpus cell indices, traceable to their input
    file and row with :meth:`TokenCorpus.cell_ids <genemamba_scvi.data.corpus.TokenCorpus.cell_ids>`).
    """

    def __init__(self, corpus: TokenCorpus | str | os.PathLike):
        self.corpus = corpus if isinstance(corpus, TokenCorpus) else TokenCorpus(corpus)

    def __len__(self) -> int:
        return self.corpus.n_cells

    def __getitem__(self, cells: Any) -> dict[str, torch.Tensor]:
        cells = np.atleast_1d(np.asarray(cells, dtype=np.int64))
        tokens, lengths = self.corpus.get(cells)
        return {
            TOKENS_KEY: torch.from_numpy(tokens.astype(np.int64)),
            LENGTHS_KEY: torch.from_numpy(lengths.astype(np.int64)),
            REGISTRY_KEYS.INDICES_KEY: torch.from_numpy(cells.copy()),
        }


class CorpusDataLoader(DataLoader):
    """DataLoader over a :class:`CorpusDataset` driven by a :class:`CorpusBatchSampler`, stateful for Lightning.

    Lightning saves :meth:`state_dict` in every checkpoint and calls :meth:`load_state_dict` on resume, so a
    run resumed mid-epoch continues with the next unseen batch.
    """

    def __init__(self, dataset: CorpusDataset, sampler: CorpusBatchSampler, **kwargs: Any):
        super().__init__(dataset, batch_size=None, sampler=sampler, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position."""
        return self.sampler.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the sampler's position."""
        self.sampler.load_state_dict(state_dict)


class CorpusDataModule(pl.LightningDataModule):
    """Lightning DataModule over a token corpus directory (memory-mapped shards).

    Parameters
    ----------
    corpus_dir
        Directory written by :func:`~genemamba_scvi.data.corpus.build_corpus`.
    batch_size
        Cells per batch *per rank* (the global batch is ``batch_size x world size``, times
        ``accumulate_grad_batches`` per optimiser step).
    shuffle, seed, drop_last, bucket_window
        See :class:`CorpusBatchSampler`.
    num_workers, pin_memory, persistent_workers
        Passed to the :class:`~torch.utils.data.DataLoader` (workers read the memory maps; the sampler runs
        in the main process).

    Notes
    -----
    Rank and world size are taken from the attached trainer. No validation loader is defined.
    """

    def __init__(
        self,
        corpus_dir: str | os.PathLike,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_window: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        super().__init__()
        self.corpus_dir = Path(corpus_dir)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.bucket_window = int(bucket_window)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.corpus: TokenCorpus | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = TokenCorpus(self.corpus_dir)

    def make_sampler(self, num_replicas: int = 1, rank: int = 0) -> CorpusBatchSampler:
        """The batch sampler of one rank."""
        self.setup()
        assert self.corpus is not None
        return CorpusBatchSampler(
            self.corpus.n_cells,
            self.batch_size,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            bucket_window=self.bucket_window,
            lengths_fn=self.corpus.lengths_of,
        )

    def train_dataloader(self) -> CorpusDataLoader:
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = self.make_sampler(world, rank)
        if trainer is not None:
            sampler.progress_fn = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return CorpusDataLoader(
            CorpusDataset(self.corpus),
            sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )


# ---------------------------------------------------------------------------------------------- training
def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class CorpusTrainingPlan(GeneMambaTrainingPlan):
    """:class:`~genemamba_scvi.train.GeneMambaTrainingPlan` whose per-step randomness is a function of the step.

    Each training step runs under a forked torch RNG seeded from ``(mask_seed, rank, epoch, batch index)``,
    so the masked positions (and any dropout) of a step are the same whether the run was interrupted and
    resumed or not, and differ between ranks, steps and epochs. The global RNG is left untouched.

    Parameters
    ----------
    module
        A :class:`~genemamba_scvi.module.GeneMambaModule`.
    mask_seed
        Seed of the per-step randomness.
    **kwargs
        Passed to :class:`~genemamba_scvi.train.GeneMambaTrainingPlan` (``lr``, ``weight_decay``, ...).
    """

    def __init__(self, module: GeneMambaModule, mask_seed: int = 0, **kwargs: Any):
        super().__init__(module, **kwargs)
        self.mask_seed = int(mask_seed)

    def training_step(self, batch, batch_idx):
        seed = _step_seed(self.mask_seed, self.global_rank, self.current_epoch, batch_idx)
        device = self.device
        devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            return super().training_step(batch, batch_idx)


class StepLossHistory(pl.Callback):
    """Records ``(global_step, epoch, batch_idx, loss)`` of every training batch on this rank.

    Attributes
    ----------
    records
        List of dicts with keys ``step``, ``epoch``, ``batch_idx``, ``loss``, ``n_tokens`` (real tokens of the
        batch on this rank).
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @property
    def losses(self) -> list[float]:
        """Loss of each recorded batch."""
        return [r["loss"] for r in self.records]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.records.append(
            {
                "step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "batch_idx": int(batch_idx),
                "loss": float(loss.detach().float().cpu()),
                "n_tokens": int(batch[LENGTHS_KEY].sum()),
            }
        )


class PretrainResult(NamedTuple):
    """What :func:`pretrain_from_corpus` returns (unpacks as ``module, vocab, gene_medians, trainer``)."""

    module: GeneMambaModule
    vocab: GeneVocab
    gene_medians: np.ndarray
    trainer: pl.Trainer


def pretrain_from_corpus(
    corpus_dir: str | os.PathLike,
    *,
    module: GeneMambaModule | None = None,
    config: GeneMambaConfig | None = None,
    objective: Literal["mlm", "next_token"] = "mlm",
    gene_sets: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    gamma: float = 0.1,
    max_steps: int = -1,
    max_epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    accumulate_grad_batches: int = 1,
    gradient_checkpointing: bool = False,
    gradient_clip_val: float | None = 1.0,
    precision: str | int | None = "auto",
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_n_steps: int | None = None,
    keep_checkpoints: int = 3,
    ckpt_path: str | os.PathLike | None = None,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    bucket_window: int = 0,
    num_workers: int = 0,
    plan_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[pl.Callback] | None = None,
    logger: Any = False,
    enable_progress_bar: bool = True,
    **trainer_kwargs: Any,
) -> PretrainResult:
    """Pre-train a GeneMamba module on a token corpus (out of core; one or many GPUs).

    Parameters
    ----------
    corpus_dir
        Directory written by :func:`~genemamba_scvi.data.corpus.build_corpus`.
    module
        Continue from this :class:`~genemamba_scvi.module.GeneMambaModule` (its vocabulary size must match the
        corpus); ``None`` builds a new one from ``config``.
    config
        Encoder and objective settings of a new module (:class:`~genemamba_scvi.nn.config.GeneMambaConfig`:
        ``d_model``, ``n_layers``, ..., ``pooling``, ``tie_lm_head``, ``mask_prob``); each setting may also
        be given as a keyword argument (``d_model=64``), which overrides ``config``. ``pooling="cls"``
        needs a corpus built with ``add_cls=True``.
    objective
        ``"mlm"`` or ``"next_token"`` (see :class:`~genemamba_scvi.module.GeneMambaModule`).
    gene_sets, gamma
        Pathway InfoNCE: ``"go_bp"`` / ``"kegg"``, a GMT path or a mapping; ``None`` disables it.
    max_steps, max_epochs
        Training length (optimiser steps, or passes over the corpus). Without either, one epoch.
    batch_size
        Cells per batch per device.
    lr
        Peak AdamW learning rate (warm-up + cosine decay over the run).
    accumulate_grad_batches
        Batches per optimiser step.
    gradient_checkpointing
        Recompute each Bi-Mamba layer in the backward pass instead of keeping its activations (much less
        memory for one more forward pass; same gradients).
    gradient_clip_val
        Gradient-norm clipping (``None``: off).
    precision
        ``"auto"`` (default: ``"bf16-mixed"`` on a GPU, ``"32-true"`` on CPU), ``"bf16-mixed"``,
        ``"16-mixed"`` or ``"32-true"``.
    accelerator, devices, strategy, num_nodes
        Lightning device settings, e.g. ``accelerator="gpu", devices=8, strategy="ddp"`` (launch as a script:
        Lightning starts one process per device; use ``"ddp_notebook"`` in notebooks).
    checkpoint_dir
        Write Lightning checkpoints (weights, optimiser, scheduler, loop and sampler state) here.
    checkpoint_every_n_steps
        Save every N optimiser steps (default: at the end of every epoch). ``last.ckpt`` always follows the
        latest save.
    keep_checkpoints
        Keep the latest K step checkpoints (-1: all).
    ckpt_path
        Resume from this checkpoint (or ``"last"``): training continues with the next unseen batch, and the
        losses are the same as those of an uninterrupted run (exactly on CPU).
    seed
        Seeds the initialisation, the epoch shuffles and the masking.
    shuffle, drop_last, bucket_window, num_workers
        Data loading (see :class:`CorpusDataModule`).
    plan_kwargs
        Passed to :class:`CorpusTrainingPlan` (``weight_decay``, ``warmup_fraction``, ...).
    callbacks
        Extra Lightning callbacks.
    logger, enable_progress_bar, **trainer_kwargs
        Passed to :class:`lightning.pytorch.Trainer` (all but the settings of ``config``).

    Returns
    -------
    :class:`PretrainResult` ``(module, vocab, gene_medians, trainer)``: the trained module (on the training
    device), the corpus vocabulary and gene medians (to build a ``GeneMambaModel`` around it), and the trainer.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    corpus = TokenCorpus(corpus_dir)
    vocab, medians = corpus.vocab, corpus.gene_medians
    add_cls = bool(corpus.manifest.config.get("add_cls", False))
    pl.seed_everything(seed, workers=True, verbose=False)
    settings, trainer_kwargs = GeneMambaConfig.split_dict(trainer_kwargs)
    if module is None:
        config = (config or GeneMambaConfig()).replace(**settings)
        if (config.pooling == "cls") != add_cls:
            raise ValueError(
                f"pooling={config.pooling!r} needs a corpus built with add_cls={config.pooling == 'cls'}, but this "
                f"corpus has add_cls={add_cls}"
            )
        module = GeneMambaModule(
            len(vocab),
            objective=objective,
            gamma=gamma,
            mask_id=vocab.mask_id,
            n_special=vocab.n_special,
            config=config,
        )
    else:
        if module.vocab_size != len(vocab):
            raise ValueError(f"module has a vocabulary of {module.vocab_size} tokens, the corpus {len(vocab)}")
        module.set_objective(objective)
    module.mode = "pretrain"
    module.set_gene_sets(gene_set_tensors(gene_sets, vocab), gamma=gamma)

    plan = CorpusTrainingPlan(module, mask_seed=seed, lr=lr, **(plan_kwargs or {}))
    datamodule = CorpusDataModule(
        corpus_dir,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        bucket_window=bucket_window,
        num_workers=num_workers,
    )
    datamodule.corpus = corpus
    cbs = list(callbacks or [])
    if checkpoint_dir is not None:
        cbs.append(
            ModelCheckpoint(
                dirpath=str(checkpoint_dir),
                filename="step{step:09d}",
                auto_insert_metric_name=False,
                every_n_train_steps=checkpoint_every_n_steps,
                save_last=True,
                monitor="step",
                mode="max",
                save_top_k=keep_checkpoints,
            )
        )
    if max_steps == -1 and max_epochs is None:
        max_epochs = 1
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=resolve_precision(precision, training_on_gpu(accelerator, devices)),
        max_steps=max_steps,
        max_epochs=max_epochs if max_epochs is not None else -1,
        accumulate_grad_batches=accumulate_grad_batches,
        gradient_clip_val=gradient_clip_val,
        callbacks=cbs,
        logger=logger,
        enable_checkpointing=checkpoint_dir is not None,
        enable_progress_bar=enable_progress_bar,
        use_distributed_sampler=False,  # CorpusBatchSampler splits the data over ranks itself
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    module.encoder.gradient_checkpointing = bool(gradient_checkpointing)
    try:
        trainer.fit(plan, datamodule=datamodule, ckpt_path=os.fspath(ckpt_path) if ckpt_path is not None else None)
    finally:
        module.encoder.gradient_checkpointing = False
    module.eval()
    return PretrainResult(module, vocab, medians, trainer)
