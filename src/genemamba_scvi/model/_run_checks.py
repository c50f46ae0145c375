"""Checks of a training run's arguments before anything trains (for ``train`` and ``train_classifier``).

Each refuses, naming the argument, what Lightning or scvi-tools would accept silently or fail on mid-run.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

from scvi.model._utils import use_distributed_sampler

from genemamba_scvi.nn.config import check_count
from genemamba_scvi.train import LAST_NEEDS_CHECKPOINT_DIR, check_splitter_kwargs


def check_epochs(max_epochs: Any, max_steps: Any) -> None:
    """Refuse a number of epochs that would train nothing or forever, or silently Lightning's 1000 (``None``)."""
    steps = max_steps if isinstance(max_steps, numbers.Integral) and max_steps > 0 else None
    if max_epochs is None and steps is None:
        raise ValueError(
            "max_epochs=None: scvi-tools picks a number of epochs from the number of cells, GeneMamba has no such "
            "rule (Lightning would train 1000 epochs); pass max_epochs (default 10) or max_steps"
        )
    if max_epochs is not None and steps is None and (not isinstance(max_epochs, numbers.Integral) or max_epochs < 1):
        raise ValueError(f"max_epochs must be a positive number of epochs (or give max_steps), got {max_epochs!r}")


def check_run_args(
    trainer_kwargs: dict[str, Any],
    lr: Any,
    batch_size: Any,
    checkpoint_dir: str | os.PathLike | None,
    datasplitter_kwargs: dict | None,
) -> tuple[int, dict[str, Any]]:
    """Check a run's arguments; ``trainer_kwargs`` normalised in place (Python ints, the splitter's keys moved out).

    Returns the batch size as an int and the data splitter's keyword arguments.
    """
    check_epochs(trainer_kwargs.get("max_epochs"), trainer_kwargs.get("max_steps"))
    batch_size = check_count("batch_size", batch_size)
    if trainer_kwargs.get("ckpt_path") == "last" and checkpoint_dir is None:
        raise ValueError(LAST_NEEDS_CHECKPOINT_DIR)
    devices = trainer_kwargs.get("devices")
    n_devices = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list | tuple) else 1
    if n_devices > 1 and not use_distributed_sampler(trainer_kwargs.get("strategy") or "auto"):
        raise ValueError(
            f"devices={devices!r} trains on several devices: pass strategy='ddp' too (as scvi-tools asks), so "
            "that each process reads its own share of the cells"
        )
    for key in ("max_epochs", "max_steps"):  # numpy integers: Lightning asserts a Python int
        if isinstance(trainer_kwargs.get(key), numbers.Integral):
            trainer_kwargs[key] = int(trainer_kwargs[key])
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive number (the peak learning rate), got {lr!r}")
    datasplitter_kwargs = dict(datasplitter_kwargs or {})
    for key in ("shuffle_set_split", "load_sparse_tensor"):  # scvi-tools' train() arguments of its splitter
        if key in trainer_kwargs:
            datasplitter_kwargs.setdefault(key, trainer_kwargs.pop(key))
    check_splitter_kwargs(datasplitter_kwargs)
    return batch_size, datasplitter_kwargs
