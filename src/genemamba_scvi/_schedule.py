"""The training plan's learning-rate schedule (linear warm-up, cosine decay) and its check on resume."""

from __future__ import annotations

import math
import warnings
from typing import Any

from genemamba_scvi._warn import user_stacklevel

#: Key of the schedule's shape in a Lightning checkpoint of ``train`` or ``pretrain`` (``{"total", "warmup", "lr"}``).
SCHEDULE_KEY = "genemamba_lr_schedule"


def warmup_cosine(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warn_if_schedule_changes(saved: Any, total: int, warmup: int, lr: float | None = None) -> None:
    """Warn when a resumed run rebuilds the schedule of the run it resumes over another number of steps.

    The schedule is planned over the run's steps (``max_steps``, or epochs x minibatches), so a resume with a
    longer ``max_steps`` (to train on after a run ended) decays over the new length: the steps after the
    checkpoint follow another curve than those before it, and the learning rate jumps where they meet (lab
    pre-training probe, session 34: silent). Checkpoints written before the shape was recorded are not checked.
    Another peak ``lr`` is not used at all (the optimiser's state, restored from the checkpoint, holds the first
    run's), and is said too (cluster probe, session 35: silent, and recorded as if used).
    """
    if not isinstance(saved, dict):
        return
    if lr is not None and saved.get("lr") is not None and float(saved["lr"]) != float(lr):
        warnings.warn(
            f"lr={lr:g} is not used: a resumed run goes on with the optimiser state of its checkpoint, whose peak "
            f"learning rate is {float(saved['lr']):g}; to train on at another rate, start a new run from the weights "
            "(pretrain(module=...) or train() on a loaded model) instead of resuming",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if (saved.get("total"), saved.get("warmup")) == (total, warmup):
        return
    warnings.warn(
        f"this run resumes one whose learning-rate schedule (warm-up {saved.get('warmup')} steps, then cosine "
        f"decay) was planned over {saved.get('total')} optimiser steps; it is rebuilt over {total} (warm-up "
        f"{warmup}) for this run's length, so the steps from the checkpoint on follow another schedule than the "
        "steps before it, and the learning rate jumps where they meet. Resume with the first run's max_steps / "
        "max_epochs to finish it as planned",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
