"""Training plan: scvi-tools' TrainingPlan with AdamW, linear warm-up + cosine decay and a NaN guard."""

from __future__ import annotations

import math

import torch
from scvi.train import TrainingPlan


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
