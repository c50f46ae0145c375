"""scvi-tools' ``TrainRunner`` as GeneMamba runs it: errors raised as they are, Ctrl-C as a ``KeyboardInterrupt``."""

from __future__ import annotations

import gc
import random
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from scvi.train import TrainRunner


class QuietTrainRunner(TrainRunner):
    """scvi-tools' ``TrainRunner`` without its line on a failed run.

    scvi-tools 1.4 prints ``Exception raised during training. <class 'NameError'> ...`` before re-raising any error
    of a run (naming ``NameError`` whatever the error was); here the error is raised as it is, after the same
    clean-up (the history so far kept, the GPU cache emptied). The rest is scvi-tools' own.
    """

    #: What a Ctrl-C leaves, said in the ``KeyboardInterrupt`` (``pretrain`` says its own; a callable is asked when
    #: the run stops, so it can look at what was written).
    interrupt_note: str | Callable[[], str] = (
        "the model keeps the weights and history reached, and training again goes on from them (with a "
        "checkpoint_dir, into a new one: that folder holds this run's checkpoints, from which ckpt_path= resumes)"
    )

    def _note(self) -> str:
        return self.interrupt_note() if callable(self.interrupt_note) else self.interrupt_note

    def _run_training_core(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main else None
        try:
            with warnings.catch_warnings():  # resuming (train or pretrain): its checkpoints are expected in the folder
                if self.ckpt_path is not None:
                    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
                self.trainer.fit(self.training_plan, self.data_splitter, ckpt_path=self.ckpt_path)
        except BaseException as err:
            interrupted = isinstance(err, SystemExit) and self.trainer.interrupted
            stepped = self.trainer.global_step > 0
            if interrupted or stepped:
                _drop_unfinished_epoch(self.trainer.logger)
            self._update_history()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            # Ctrl-C: Lightning stops the run, ignores Ctrl-C from then on and calls sys.exit(1), which a notebook's
            # `except KeyboardInterrupt` never sees. Ctrl-C works again, the steps taken are kept (weights, history,
            # split) and the interrupt goes on as one. Any other error after some steps (a full disk at a
            # checkpoint, a callback's) keeps them too: a model that called itself untrained would warn that its
            # embeddings come from random weights, and save is_trained false.
            if interrupted and main and sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            if stepped and (interrupted or isinstance(err, Exception)):
                self._finish()
            if interrupted:
                raise KeyboardInterrupt(
                    f"training interrupted after {self.trainer.global_step} steps (epoch {self.trainer.current_epoch})"
                    f"; {self._note()}"
                ) from None
            if stepped and isinstance(err, Exception):
                err.add_note(
                    f"genemamba_scvi: training stopped after {self.trainer.global_step} steps (epoch "
                    f"{self.trainer.current_epoch}); {self._note()}"
                )
            raise
        self._update_history()
        self._finish()

    def _finish(self) -> None:
        # the data splitter has its indices only after fit
        self.model.train_indices = getattr(self.data_splitter, "train_idx", None)
        self.model.test_indices = getattr(self.data_splitter, "test_idx", None)
        self.model.validation_indices = getattr(self.data_splitter, "val_idx", None)
        self.model.module.eval()
        self.model.is_trained_ = True
        self.model.to_device(self.device)
        self.model.trainer = self.trainer


def _drop_unfinished_epoch(logger: object) -> None:
    """Rows of an interrupted epoch in scvi's in-memory history (validation logged, the epoch's train_loss not yet).

    Without this the columns of ``model.history`` disagree on the epochs, and a later run counts on from the
    unfinished one (``train_loss`` at 0 and 2, ``validation_loss`` at 0, 1 and 2).
    """
    history = getattr(logger, "history", None)
    if not isinstance(history, dict) or "train_loss" not in history or history["train_loss"].index.name != "epoch":
        return
    done = history["train_loss"].index.max() if len(history["train_loss"]) else -1
    for key, frame in history.items():
        if frame.index.name == "epoch":
            history[key] = frame[frame.index <= done]


class RngCheckpointState(Callback):
    """The random streams (torch's CPU and CUDA generators, numpy's, Python's) kept in Lightning checkpoints.

    A run resumed from a checkpoint (``ckpt_path``) gets them back as the checkpoint is restored, so it draws the
    cells' order and the masks that the uninterrupted run drew after that point (the same losses, on a CPU to the
    last digit); re-seeding a new process instead restarts the streams where epoch 0 began, and the resumed epochs
    replayed the first ones' batches and masks (user probe, session 24). Stored as tensors and numbers only
    (checkpoints load with ``weights_only``).
    """

    @property
    def state_key(self) -> str:
        return "genemamba_rng"

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global stream is the point)
        version, internal, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": (version, torch.tensor(internal, dtype=torch.int64), py_gauss),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        version, internal, py_gauss = state_dict["python"]
        random.setstate((version, tuple(int(v) for v in internal.tolist()), py_gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
