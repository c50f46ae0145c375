"""The Lightning checkpoint callback of both training paths (``train(checkpoint_dir=)`` and corpus ``pretrain``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from scvi.train import SaveCheckpoint

__all__ = ["LightningCheckpoint"]


class LightningCheckpoint(SaveCheckpoint):
    """Lightning's ``ModelCheckpoint``, typed as scvi's :class:`~scvi.train.SaveCheckpoint`.

    scvi's Trainer adds a checkpoint callback of its own (writing model directories) unless it finds a
    ``SaveCheckpoint`` among the callbacks. This is one by type, with Lightning's behaviour wherever scvi's
    differs: plain ``.ckpt`` files (weights, optimiser, scheduler, loop and sampler state), ``last.ckpt``
    refreshed at every save. Its state inside a checkpoint file is kept under the key Lightning's
    ``ModelCheckpoint`` uses (``state_name``), so checkpoints written with one resume with the other.

    A step checkpoint (``every_n_train_steps``) is written only at the end of a batch that made an optimiser
    step, so exactly once per checkpoint step and never in the middle of a gradient-accumulation window.
    Lightning's ``ModelCheckpoint`` tests ``global_step % every_n_train_steps`` at the end of every batch, and
    with ``accumulate_grad_batches > 1`` the batches after a step keep its ``global_step``; it relies on the
    step it last saved to skip them, which it does not restore on resume: the first batch after a resume,
    which only accumulates gradients, would write the resumed step again (``stepNNN-v1.ckpt``, one batch
    later, without the accumulated gradients, so a resume from it would not reproduce the run, and
    ``save_top_k`` could delete the right file in its favour).

    Parameters
    ----------
    dirpath
        Directory of the checkpoint files.
    **kwargs
        Passed to :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (``filename``, ``monitor``,
        ``every_n_train_steps``, ``save_top_k``, ...).
    """

    state_name = "ModelCheckpoint"

    def __init__(self, dirpath: str, **kwargs: Any):
        super().__init__(dirpath=dirpath, **kwargs)
        self.save_last = True  # SaveCheckpoint drops save_last from its kwargs; we want last.ckpt
        self._step_at_batch_start: int | None = None

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint file (see the class docstring)."""
        key = ModelCheckpoint.state_key.fget(self)
        return self.state_name + key[len(type(self).__qualname__) :]

    # Lightning's own behaviour everywhere scvi's SaveCheckpoint would write model dirs instead.
    on_save_checkpoint = ModelCheckpoint.on_save_checkpoint

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's, but a checkpoint folder that was moved (or copied) is still this run's folder.

        Lightning compares the folder recorded in the checkpoint with this one; when they differ it forgets which
        ``last.ckpt`` it wrote and writes ``last-v1.ckpt`` beside the stale one, so ``ckpt_path=".../last.ckpt"``
        would later resume from the older state. When the recorded ``last.ckpt`` is found in this folder under its
        name, the recorded paths are taken as this folder's. A checkpoint written before its folder had a
        ``last.ckpt`` (the first save) and resumed in that folder takes the ``last.ckpt`` found there as its own.
        """
        old = state_dict.get("dirpath")
        last = state_dict.get("last_model_path") or ""
        here = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}" if self.dirpath else None
        if old == self.dirpath and not last and here is not None and here.is_file():
            # a checkpoint saved before this folder had a last.ckpt (a run's first save), resumed here: the
            # last.ckpt written after it is this folder's and follows the resumed run (Lightning wrote last-v1.ckpt
            # beside it, so ckpt_path=".../last.ckpt" took the abandoned run; upgrade probe, session 32)
            state_dict = {**state_dict, "last_model_path": str(here)}
        if self.dirpath and old and old != self.dirpath and last and (Path(self.dirpath) / Path(last).name).exists():

            def moved(p: Any) -> Any:
                return str(Path(self.dirpath) / Path(p).name) if isinstance(p, str) and p else p

            state_dict = {**state_dict, "dirpath": self.dirpath}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = moved(state_dict.get(key))
            state_dict["best_k_models"] = {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
        ModelCheckpoint.load_state_dict(self, state_dict)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Take the state a checkpoint callback of other settings wrote (a resume with another cadence).

        The state's key holds the callback's settings (``every_n_train_steps``, ...): a run resumed with another
        ``checkpoint_every_n_steps`` found none under its key, forgot the ``last.ckpt`` it had written and wrote
        ``last-v1.ckpt`` beside it, so a later ``ckpt_path=".../last.ckpt"`` went back to the older state (docs
        probe, session 32). The state of this callback's name under another key, of no callback of this run, written
        for this folder (or the only such state, for a moved folder) is taken instead; Lightning then finds none under
        this key and leaves it (its warning to "add the following callbacks" still names the other key).
        """
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        present = {getattr(cb, "state_key", None) for cb in trainer.callbacks}  # (a user's own ModelCheckpoint: review)
        others = [k for k in states if isinstance(k, str) and k.startswith(self.state_name + "{") and k not in present]
        here = [k for k in others if isinstance(states[k], dict) and states[k].get("dirpath") == self.dirpath]
        if len(here) == 1 or len(others) == 1:
            self.load_state_dict(states[(here or others)[0]])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Note the optimiser steps taken before this batch."""
        self._step_at_batch_start = int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Lightning's step (and time) checkpoints, but only after a batch that made an optimiser step.

        A batch that only accumulated gradients is skipped (see the class docstring); a save it would have
        made is made at the end of the next batch that steps (a time-triggered one included).
        """
        stepped = self._step_at_batch_start is None or trainer.global_step != self._step_at_batch_start
        if pl_module.automatic_optimization and not stepped:
            return
        ModelCheckpoint.on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx)

    on_train_end = ModelCheckpoint.on_train_end
    on_exception = ModelCheckpoint.on_exception
    _update_best_and_save = ModelCheckpoint._update_best_and_save
    _remove_checkpoint = ModelCheckpoint._remove_checkpoint
