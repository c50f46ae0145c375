"""Dataset, data loader and Lightning data module over a token corpus."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scvi import REGISTRY_KEYS
from torch.utils.data import DataLoader, Dataset

from genemamba_scvi._constants import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi.data.corpus import TokenCorpus
from genemamba_scvi.pretrain._sampler import CorpusBatchSampler, CorpusSplit


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
        """The sampler's position, and which corpus it is a position in (its tokens' digest and folder)."""
        corpus = self.dataset.corpus
        return {**self.sampler.state_dict(), "corpus_sha256": _corpus_digest(corpus), "corpus_dir": str(corpus.root)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the sampler's position; refused on another corpus than the checkpoint's.

        The sampler's own check compares the number of cells only, so a resume on another corpus of the same size
        went on silently, in the other corpus's order (lab pre-training probe, session 34). A copy of the corpus, or
        a rebuild with the same arguments, has the same tokens and resumes. Checkpoints written before the digest
        are not checked.
        """
        state = dict(state_dict)
        saved, where = state.pop("corpus_sha256", None), state.pop("corpus_dir", None)
        corpus = self.dataset.corpus
        if saved is not None and saved != _corpus_digest(corpus):
            raise ValueError(
                f"cannot resume from this checkpoint on the corpus {str(corpus.root)!r}: it was written while training "
                f"on another corpus ({where!r}; its tokens differ from these). Resume on the checkpoint's corpus, or "
                "start a new run (no ckpt_path), e.g. pretrain(module=...) to go on from the saved weights"
            )
        self.sampler.load_state_dict(state)


def _corpus_digest(corpus: TokenCorpus) -> str:
    """SHA-256 over the corpus's shard digests in order (the manifest's, of each shard's tokens and lengths)."""
    return hashlib.sha256("".join(s.get("sha256", "") for s in corpus.manifest.shards).encode()).hexdigest()


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
    validation_size
        Cells held out of training for a validation loss: a share of the corpus (``0 < x < 1``) or a number of
        cells; a random subset fixed by ``seed`` (:class:`~genemamba_scvi.pretrain.CorpusSplit`). ``None``
        (default): every cell trains and there is no validation loader.

    Notes
    -----
    Rank and world size are taken from the attached trainer. The validation cells are read in a fixed order,
    split over the ranks as the training cells are.
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
        validation_size: float | int | None = None,
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
        self.validation_size = validation_size
        self.corpus: TokenCorpus | None = None
        self.split: CorpusSplit | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = TokenCorpus(self.corpus_dir)
        if self.split is None:
            self.split = CorpusSplit(self.corpus.n_cells, self.validation_size, self.seed)

    @property
    def n_train(self) -> int:
        """Training cells (scvi's ``TrainRunner`` reads it)."""
        self.setup()
        return self.split.n_train

    @property
    def n_val(self) -> int:
        """Validation cells."""
        self.setup()
        return self.split.n_validation

    def make_sampler(self, num_replicas: int = 1, rank: int = 0) -> CorpusBatchSampler:
        """The training batch sampler of one rank."""
        self.setup()
        split, corpus = self.split, self.corpus
        held_out = split.n_validation > 0
        return CorpusBatchSampler(
            split.n_train,
            self.batch_size,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            bucket_window=self.bucket_window,
            lengths_fn=(lambda cells: corpus.lengths_of(split.train_cells(cells))) if held_out else corpus.lengths_of,
            cell_map=split.train_cells if held_out else None,
            split=[split.n_validation, split.seed] if held_out else None,
        )

    def _loader(self, sampler: CorpusBatchSampler) -> CorpusDataLoader:
        return CorpusDataLoader(
            CorpusDataset(self.corpus),
            sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> CorpusDataLoader:
        self.setup()
        rank, world = self._ranks()
        sampler = self.make_sampler(world, rank)
        trainer = self.trainer
        if trainer is not None:
            sampler.progress_fn = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self._loader(sampler)

    def val_dataloader(self) -> CorpusDataLoader | list:
        """The held-out cells in a fixed order (``[]``, no validation, without ``validation_size``)."""
        self.setup()
        if self.split.n_validation == 0:
            return []
        rank, world = self._ranks()
        sampler = CorpusBatchSampler(
            self.split.n_validation,
            self.batch_size,
            num_replicas=world,
            rank=rank,
            shuffle=False,
            cell_map=self.split.validation_cells,
        )
        return self._loader(sampler)
