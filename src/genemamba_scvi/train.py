"""Training plan: scvi-tools' TrainingPlan with AdamW, linear warm-up + cosine decay and a NaN guard."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import ProgressBar
from scvi.train import TrainingPlan
from scvi.utils import track


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produces a NaN/inf loss (the weights are left unchanged)."""


class GeneMambaTrainingPlan(TrainingPlan):
    """Transformer-style optimisation for GeneMamba in the scvi-tools training-plan idiom.

    Parameters
    ----------
    module
        A :class:`~genemamba_scvi.module.GeneMambaModule`.
    lr
        Peak learning rate of AdamW.
    weight_decay
        AdamW weight decay (not applied to biases, norms and the embedding).
    warmup_fraction
        Fraction of the total optimiser steps spent in linear warm-up (then cosine decay to
        ``min_lr_ratio * lr``).
    min_lr_ratio
        Final learning rate as a fraction of ``lr``.
    betas
        AdamW betas.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        **kwargs,
    ):
        super().__init__(module, lr=lr, weight_decay=weight_decay, optimizer="AdamW", **kwargs)
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio
        self.betas = tuple(betas)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"GeneMamba training stopped: the loss is {loss.detach().float().item()} at global step "
                f"{self.global_step} (epoch {self.current_epoch}). The weights were not updated with it. "
                "Lower the learning rate, check the input counts, or resume from the last checkpoint."
            )

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self._check_finite(loss)
        return loss

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """Log the terms GeneMamba optimises as ``{name}_{mode}`` (``mode``: ``train`` / ``validation``).

        scvi-tools' plan would log ELBO, reconstruction and KL terms, which are always zero for a model that is
        not a VAE. Logged instead: the module's ``extra_metrics`` (pre-training: ``lm_loss``, the masked-gene
        or next-token cross-entropy, ``mlm_accuracy`` and ``pathway_loss``, the pathway InfoNCE; fine-tuning:
        ``accuracy``) and ``classification_loss``. ``train_loss`` / ``validation_loss`` are logged as before.
        """
        values = dict(loss_output.extra_metrics or {})
        if loss_output.classification_loss is not None:
            values["classification_loss"] = loss_output.classification_loss
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.ndim:
                    continue  # only scalars make a history column
                value = value.detach()
            self.log(
                f"{key}_{mode}",
                value,
                on_step=self.on_step,
                on_epoch=self.on_epoch,
                batch_size=loss_output.n_obs_minibatch,
                sync_dist=self.use_sync_dist,
            )

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or "embedding" in name or name.endswith(("A_log", "dt_bias", ".D")):
                no_decay.append(param)
            else:
                decay.append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(self.warmup_fraction * total), 1) if self.warmup_fraction > 0 else 0
        floor = self.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StepProgressBar(ProgressBar):
    """One progress bar over all minibatches of a training run, moved after every step.

    scvi-tools' default bar moves once per epoch, which leaves a CPU user a minute or more without
    feedback. This one shows ``Epoch e/N`` and the running ``train_loss`` while the epoch runs; it is what
    :meth:`~genemamba_scvi.model.GeneMambaModel.train` uses unless ``simple_progress_bar=True`` is passed.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar = None

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bar"] = None  # tqdm objects do not pickle
        return state

    def _total(self, trainer) -> int | None:
        per_epoch = trainer.num_training_batches
        if not math.isfinite(per_epoch):
            return None
        total = int(per_epoch) * max(int(trainer.max_epochs or 1), 1)
        if trainer.max_steps and trainer.max_steps > 0:
            total = min(total, trainer.max_steps * trainer.accumulate_grad_batches)
        return total

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if self.is_enabled:
            self._bar = track(None, total=self._total(trainer), description="Training", style="tqdm", unit="step")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._bar is not None:
            self._bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._bar is not None:
            self._bar.update(1)
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # this minibatch's loss
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self._bar.set_postfix(train_loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
