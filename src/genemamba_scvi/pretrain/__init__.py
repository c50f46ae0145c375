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

from genemamba_scvi.pretrain._data import CorpusDataLoader, CorpusDataModule, CorpusDataset
from genemamba_scvi.pretrain._run import (
    CorpusTrainingPlan,
    PretrainResult,
    StepLossHistory,
    _step_seed,  # noqa: F401
    pretrain_from_corpus,
)
from genemamba_scvi.pretrain._sampler import CorpusBatchSampler, CorpusSplit, FeistelPermutation

__all__ = [
    "CorpusBatchSampler",
    "CorpusDataLoader",
    "CorpusDataModule",
    "CorpusDataset",
    "CorpusSplit",
    "CorpusTrainingPlan",
    "FeistelPermutation",
    "PretrainResult",
    "StepLossHistory",
    "pretrain_from_corpus",
]
