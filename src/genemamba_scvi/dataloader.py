"""Token data loaders: rank-tokenize rows of the registered AnnData on the fly.

Design choice (issue 4): tokens are *not* cached in the AnnData. Each minibatch reads its rows of the
registered count layer (CSR), normalises them by the model's gene medians and ranks them with the
vectorised :func:`~genemamba_scvi.data.tokenize.rank_tokenize`. Ranking a 128-cell batch costs well
under a millisecond per cell, needs no memory proportional to the dataset (a cached ``[n_cells, 2048]``
int32 table would be 8 GB for a million cells) and means a cell's tokens depend only on that cell and
the model (its vocabulary and medians), never on which other cells are in the batch.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from genemamba_scvi._constants import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi._prefetch import check_background, prefetched
from genemamba_scvi.data.normalize import as_scipy_dtype
from genemamba_scvi.data.tokenize import published_tokenize, rank_tokenize

if TYPE_CHECKING:
    from scvi.data import AnnDataManager


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to turn count rows of one AnnData into model tokens.

    Attributes
    ----------
    gene_token_ids
        Token id of each column of the AnnData (``-1``: gene unknown to the vocabulary, ignored).
    gene_medians
        Non-zero median of count / cell total of each column (from the model, not from this AnnData).
    max_genes
        Sequence length (top-k genes per cell).
    add_cls
        Whether position 0 is ``<cls>``.
    method
        ``"ranked"`` (:func:`~genemamba_scvi.data.tokenize.rank_tokenize`) or ``"published"``
        (:func:`~genemamba_scvi.data.tokenize.published_tokenize`, which ignores ``gene_medians``).
    unk_id
        ``"published"`` only: token id of genes outside the vocabulary (``None``: dropped).
    tie_break
        Order of genes of equal count in a cell (see :func:`~genemamba_scvi.data.tokenize.rank_tokenize`).
    """

    gene_token_ids: np.ndarray
    gene_medians: np.ndarray
    max_genes: int
    add_cls: bool = False
    method: str = "ranked"
    unk_id: int | None = None
    tie_break: str = "median"

    def __call__(self, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths of the cells in ``rows`` (a CSR block of counts), by ``method``."""
        if self.method == "published":
            return published_tokenize(
                rows, self.gene_token_ids, max_genes=self.max_genes, add_cls=self.add_cls, unk_id=self.unk_id
            )
        return rank_tokenize(
            rows,
            self.gene_token_ids,
            self.gene_medians,
            max_genes=self.max_genes,
            add_cls=self.add_cls,
            tie_break=self.tie_break,
        )


class _IndexDataset(Dataset):
    """A dataset whose items are positions into ``indices``; batches are gathered in ``collate``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _rows_as_csr(matrix: Any, idx: np.ndarray) -> sp.csr_matrix:
    """Read rows ``idx`` of a (possibly backed / dense / CSC) matrix as CSR, in the order of ``idx``."""
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    rows = matrix[sorted_idx]  # h5py-backed datasets need increasing indices
    rows = sp.csr_matrix(as_scipy_dtype(np.asarray(rows))) if not sp.issparse(rows) else rows.tocsr()
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return rows[inverse]


class TokenDataLoader(DataLoader):
    """DataLoader that yields ``{"tokens", "lengths", "batch", "labels", "index"}`` minibatches.

    It has the call signature of :class:`scvi.dataloaders.AnnDataLoader`, so it plugs into
    scvi-tools' :class:`~scvi.dataloaders.DataSplitter` and ``_make_data_loader``.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData.
    tokenizer
        :class:`TokenizerSpec` of the model for this AnnData.
    indices
        Cells to iterate over (default: all).
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle cells every epoch (seeded by the global torch seed, i.e. ``scvi.settings.seed``).
    drop_last
        Drop the last incomplete batch.
    distributed_sampler
        Use :class:`torch.utils.data.DistributedSampler` (DDP: each cell once per epoch over ranks).
    labels
        Optional integer label codes for every cell of the AnnData (used by classifier fine-tuning);
        otherwise the registered labels are used when present.
    background
        Make the minibatches after the first in a background thread, two ahead, while the model computes
        (:func:`genemamba_scvi._prefetch.prefetched`; ``train(datasplitter_kwargs={"background": True})``).
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``num_workers``, ``pin_memory``, ...). The scvi
        arguments ``load_sparse_tensor`` and ``data_and_attributes`` are accepted and ignored.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        tokenizer: TokenizerSpec,
        indices: np.ndarray | None = None,
        batch_size: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        labels: np.ndarray | None = None,
        background: bool = False,
        **kwargs: Any,
    ):
        check_background(background, kwargs.get("num_workers"))  # (review)
        self.background = background
        self._live: weakref.ref | None = None  # the background generator of the latest iteration
        for ignored in ("load_sparse_tensor", "data_and_attributes", "iter_ndarray", "sampler"):
            kwargs.pop(ignored, None)
        adata = adata_manager.adata
        self.adata_manager = adata_manager
        self.tokenizer = tokenizer
        self.indices = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        if self.indices.dtype == bool:
            self.indices = np.where(self.indices)[0]
        self._matrix = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        # CSC: reading rows costs a pass over every stored value, so each minibatch cost O(nnz) and an epoch
        # O(cells x nnz) (3x slower at 11k cells, growing). This loader's rows are taken once, as CSR, instead.
        self._local_order = self._local_rows = None
        if sp.issparse(self._matrix) and self._matrix.format == "csc":
            self._local_order = np.unique(self.indices)  # sorted, each row once (indices may repeat cells)
            self._local_rows = sp.csr_matrix(self._matrix[self._local_order])
        registry = adata_manager.data_registry
        self._batch = (
            np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
            if REGISTRY_KEYS.BATCH_KEY in registry
            else None
        )
        if labels is None and REGISTRY_KEYS.LABELS_KEY in registry:
            labels = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
        self._labels = None if labels is None else np.asarray(labels).astype(np.int64)

        dataset = _IndexDataset(len(self.indices))
        if distributed_sampler:
            sampler = DistributedSampler(dataset, shuffle=shuffle, drop_last=drop_last)
        elif shuffle:
            sampler = RandomSampler(dataset)
        else:
            sampler = SequentialSampler(dataset)
            # a loader draws its workers' base seed when iterated, from the global generator unless it has its own:
            # embedding cells then moved the random stream of whatever the user seeded next (sweep probe, session 28)
            kwargs.setdefault("generator", torch.Generator())
        self._sampler = sampler
        batch_sampler = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=self._collate, **kwargs)

    def __iter__(self):
        """The minibatches; with ``background``, made ahead in a thread (the same minibatches, in the same order)."""
        if not self.background:
            return super().__iter__()
        earlier = self._live() if self._live is not None else None
        if earlier is not None:  # an iteration left early (limit_train_batches) and still held: its thread stops
            earlier.close()
        batches = prefetched(super().__iter__())
        self._live = weakref.ref(batches)  # (a strong reference would keep the thread after the last epoch)
        return batches

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to a distributed sampler (so every epoch shuffles differently)."""
        if isinstance(self._sampler, DistributedSampler):
            self._sampler.set_epoch(epoch)

    def _collate(self, positions: list[int]) -> dict[str, torch.Tensor]:
        idx = self.indices[np.asarray(positions, dtype=np.int64)]
        if self._local_rows is None:
            rows = _rows_as_csr(self._matrix, idx)
        else:  # the loader's rows, each once in sorted order: positions of idx among them
            rows = self._local_rows[np.searchsorted(self._local_order, idx)]
        tokens, lengths = self.tokenizer(rows)
        longest = max(int(lengths.max(initial=0)), 1)
        out = {
            TOKENS_KEY: torch.from_numpy(np.ascontiguousarray(tokens[:, :longest])).long(),
            LENGTHS_KEY: torch.from_numpy(lengths).long(),
            REGISTRY_KEYS.INDICES_KEY: torch.from_numpy(idx).long(),
        }
        if self._batch is not None:
            out[REGISTRY_KEYS.BATCH_KEY] = torch.from_numpy(self._batch[idx].astype(np.int64))
        if self._labels is not None:
            out[REGISTRY_KEYS.LABELS_KEY] = torch.from_numpy(self._labels[idx])
        return out


class TokenDataSplitter(DataSplitter):
    """scvi-tools :class:`~scvi.dataloaders.DataSplitter` that builds :class:`TokenDataLoader` s."""

    data_loader_cls = TokenDataLoader

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # scvi-tools warns of a last minibatch of 1-2 cells "to avoid errors during model training": its VAEs'
        # BatchNorm fails on one cell; GeneMamba has no batch statistics and trains on any minibatch size
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Last batch will have a small size", category=UserWarning)
            super().__init__(*args, **kwargs)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Return the batch as it is (the tokenized minibatch needs no change on the device)."""
        return batch

    def setup(self, stage: str | None = None) -> None:
        """Draw the split once: a split drawn before training (to check it) is the one trained on.

        scvi-tools draws it again at every ``setup``, from ``scvi.settings.seed``, which is ``None`` (a new split
        each time) unless the user sets it.
        """
        if getattr(self, "train_idx", None) is None:
            super().setup(stage)

    def val_dataloader(self):
        """The validation loader; no loaders (``[]``, validation skipped) when the split has no validation cells.

        scvi-tools returns ``None`` there, which Lightning rejects as soon as validation is scheduled
        (``train(train_size=1.0)`` with ``check_val_every_n_epoch`` set).
        """
        loader = super().val_dataloader()
        return [] if loader is None else loader
