"""Checks of a training run's arguments before anything trains (for ``train`` and ``train_classifier``).

Each refuses, naming the argument, what Lightning or scvi-tools would accept silently or fail on mid-run.
"""

from __future__ import annotations

import numbers
import os
import warnings
from typing import Any

from scvi.model._utils import use_distributed_sampler

from genemamba_scvi._warn import user_stacklevel
from genemamba_scvi.io._files import check_checkpoint_dir
from genemamba_scvi.nn.config import check_count
from genemamba_scvi.train import LAST_NEEDS_CHECKPOINT_DIR, check_lr, check_splitter_kwargs


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


def check_train_size(train_size: Any) -> None:
    """Refuse ``train_size`` 0 (or ``False``), which scvi-tools' splitter reads as its default 0.9 without a word."""
    if train_size is not None and (isinstance(train_size, bool) or train_size == 0):
        raise ValueError(
            f"train_size={train_size!r} would train on no cell (scvi-tools would silently use 0.9 instead): pass the "
            "fraction of the cells to train on, in (0, 1] (None: 0.9)"
        )


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
    check_checkpoint_dir(checkpoint_dir, resuming=trainer_kwargs.get("ckpt_path") is not None)
    from lightning.pytorch.callbacks import ModelCheckpoint

    own = [cb for cb in trainer_kwargs.get("callbacks") or () if isinstance(cb, ModelCheckpoint)]
    if own and not trainer_kwargs.get("enable_checkpointing"):  # Lightning's own error named only the setting
        raise ValueError(
            f"a {type(own[0]).__name__} in callbacks needs checkpointing on: pass checkpoint_dir='...' instead (this "
            "package's Lightning checkpoints of every epoch, resumable with ckpt_path), or enable_checkpointing=True "
            "(scvi-tools then also saves model directories under ./scvi_log)"
        )
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
    check_lr(lr)
    datasplitter_kwargs = dict(datasplitter_kwargs or {})
    for key in ("shuffle_set_split", "load_sparse_tensor"):  # scvi-tools' train() arguments of its splitter
        if key in trainer_kwargs:
            datasplitter_kwargs.setdefault(key, trainer_kwargs.pop(key))
    check_splitter_kwargs(datasplitter_kwargs)
    return batch_size, datasplitter_kwargs


#: Bytes a training step keeps per token, layer and model dimension on the CPU (activations for the backward in
#: fp32, both directions): ~190 measured at 24 x 512 and 2048 genes (2 cells: 11.0 GB peak); with gradient
#: checkpointing about a third.
_CPU_STEP_BYTES = 190
#: ... plus, per token and model dimension, what does not grow with the layers (the embedding, the LM head's
#: input and output, the loss), and a fixed cost of the first step (the trainer, the optimizer's state, the
#: loader): fitted in session 26 to one step's peak resident growth on the sample's cells of >= 2,048 genes
#: (2 x 32 and 2 x 128 with 8 cells: 0.97 and 2.31 GB; 2 x 512 and 4 x 256 with 2 cells: 2.01 and 2.59 GB; 24 x 512:
#: 5.5 GB a cell). The layer term alone was 2.5-5x low for small models (a user probe's step failed unwarned).
_CPU_TOKEN_BYTES = 450
_CPU_STEP_FIXED_BYTES = 2**29


#: (limit, use, stat) files of the memory cgroup, v2 then v1.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        "/sys/fs/cgroup/memory/memory.stat",
    ),
)


def _inactive_file(stat_path: str) -> int:
    """Reclaimable page cache of a cgroup (``inactive_file``; v1 ``total_inactive_file``).

    Counted in its use, but given back under pressure: the working set, as docker and the kubelet count it, leaves
    it out.
    """
    try:
        with open(stat_path) as f:
            fields = dict(line.split()[:2] for line in f if line.strip())
    except (OSError, ValueError):
        return 0
    value = fields.get("inactive_file", fields.get("total_inactive_file", "0"))
    return int(value) if value.isdigit() else 0


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # ("max": no limit)


def available_memory() -> tuple[int, str] | None:
    """Bytes this process may still allocate, and which limit sets it; None where it cannot be told (not Linux).

    The least of the system's ``MemAvailable``, the cgroup's limit less its use (SLURM ``--mem``, ``docker
    --memory``; cgroup v2 or v1) and the address-space limit (``ulimit -v``) less this process's size: the one
    that is hit first is the one that kills the run.
    """
    found = []
    try:
        with open("/proc/meminfo") as f:
            found.append((next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")),
                          "available on this machine"))  # fmt: skip
    except (OSError, StopIteration, ValueError):
        return None
    for limit, used, stat in _CGROUP_FILES:
        cap, use = _read_int(limit), _read_int(used)
        if cap is not None and use is not None and cap < 1 << 60:
            use = max(use - _inactive_file(stat), 0)
            found.append(
                (max(cap - use, 0), "left under this job's memory limit (cgroup: SLURM --mem, docker --memory)")
            )
            break
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            found.append((max(soft - size, 0), "left under the address-space limit (ulimit -v)"))
    except (ImportError, OSError, StopIteration, ValueError):
        pass
    return min(found)


def warn_if_cpu_memory_short(config: Any, batch_size: int, max_genes: int, gradient_checkpointing: bool) -> None:
    """Warn before a CPU training step that would need more memory than :func:`available_memory`.

    The published size (24 x 512, 2048 genes) at the default 32 cells needs ~160 GB a step on a CPU: the process
    was killed by the system without a word. The estimate is rough (within ~1.5x of the sizes measured, see
    ``_CPU_TOKEN_BYTES``); nothing is refused.
    """
    if (free := available_memory()) is None:
        return  # not Linux: no estimate
    available, where = free
    layers = config.n_layers * _CPU_STEP_BYTES / (3 if gradient_checkpointing else 1)
    per_cell = max_genes * config.d_model * (layers + _CPU_TOKEN_BYTES)
    need = batch_size * per_cell + _CPU_STEP_FIXED_BYTES
    if need > 0.8 * available:
        fits = int(max(0.8 * available - _CPU_STEP_FIXED_BYTES, 0) // per_cell)
        warnings.warn(
            f"a CPU training step of {batch_size} cells of {max_genes} genes through {config.n_layers} layers of "
            f"width {config.d_model} needs about {need / 2**30:.0f} GB, and {available / 2**30:.0f} GB are "
            f"{where}: the system may kill the process. Train on a GPU, or with batch_size={max(fits, 1)} or "
            "less, gradient_checkpointing=True (about a third), or a smaller model (n_layers, d_model, max_genes)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


#: The loss settings that ``train`` / ``train_classifier`` set themselves, and where a user gives each instead.
_LOSS_SETTINGS = {
    "mode": "train() pre-trains and train_classifier() fine-tunes; the mode follows the method",
    "gamma": "pass gamma= to train() (the pathway InfoNCE weight of pre-training)",
    "class_weights": "pass class_weight= to train_classifier() (the cross-entropy weights of fine-tuning)",
}


def check_loss_plan_kwargs(plan_kwargs: dict[str, Any] | None, mode: str) -> None:
    """Refuse ``plan_kwargs`` that set the loss's own settings where they would be ignored or switch the objective.

    ``mode`` always, ``class_weights`` in pre-training, ``gamma`` in fine-tuning (``gamma`` in pre-training stays
    allowed: scvi users set loss weights there, and it wins over ``gamma=``, as in scvi-tools).
    """
    allowed = {"pretrain": {"gamma"}, "classify": set()}[mode]
    bad = sorted(set(plan_kwargs or {}) & set(_LOSS_SETTINGS) - allowed)
    if bad:
        why = "; ".join(f"{k}: {_LOSS_SETTINGS[k]}" for k in bad)
        raise TypeError(f"plan_kwargs {bad} would not reach this run's loss as meant ({why})")


def warn_if_pathway_loss_dropped(runs: list[dict[str, Any]], gene_sets: Any, gamma: Any, plan_kwargs: Any) -> None:
    """Warn when ``train`` continues a model whose last training had the pathway loss, without gene sets.

    ``gene_sets`` is an argument of each run, not a setting of the model, so a second ``train`` (or ``train`` after
    ``pretrain``) left the pathway loss out without a word (lab pre-training probe, session 34). Only when neither
    ``gene_sets`` nor a ``gamma`` is given (a ``gamma`` without sets has :func:`check_gamma`'s warning; 0 is a choice).
    """
    if plan_kwargs and "gamma" in plan_kwargs:
        gamma = plan_kwargs["gamma"]
    if gene_sets is not None or gamma is not None:
        return
    last = next((r for r in reversed(runs) if r.get("method") in ("train", "pretrain")), None)
    args = (last or {}).get("args", {})
    used = 0.1 if args.get("gamma") is None else args["gamma"]  # (pretrain records gamma only when given)
    if args.get("gene_sets") is None or not used:
        return
    warnings.warn(
        f"this model's last training run ({last['method']}, {last.get('started_utc', '?')}) had the pathway loss "
        f"(gene_sets={args['gene_sets']!r}, gamma={used}); this run has no gene_sets and trains on the "
        "masked-gene loss alone: pass gene_sets (and gamma) again to keep the pathway loss, or gamma=0 to silence this",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
