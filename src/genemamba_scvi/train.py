"""Training plan: scvi-tools' TrainingPlan with AdamW, linear warm-up + cosine decay and a NaN guard.

Also the pieces that AnnData training (:mod:`genemamba_scvi.model`) and corpus pre-training
(:mod:`genemamba_scvi.pretrain`) share around scvi's ``TrainRunner``: Lightning checkpoints, a per-step
progress bar, a quiet training session.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ProgressBar
from scvi.train import TrainingPlan
from scvi.utils import track

from genemamba_scvi._checkpoint_callback import LightningCheckpoint  # noqa: F401  (its home before; imported from here)
from genemamba_scvi._prefetch import check_background
from genemamba_scvi._schedule import SCHEDULE_KEY, warmup_cosine, warn_if_schedule_changes
from genemamba_scvi._warn import user_stacklevel
from genemamba_scvi.data.gene_sets import check_gene_sets_source
from genemamba_scvi.nn.graphs import drop_graphs

#: ``ckpt_path="last"`` without ``checkpoint_dir``: Lightning finds no checkpoint, warns and trains from scratch
LAST_NEEDS_CHECKPOINT_DIR = (
    "ckpt_path='last' resumes from the last checkpoint in checkpoint_dir: pass the checkpoint_dir of the interrupted "
    "run (without one there is no checkpoint to resume, and Lightning would train from scratch)"
)

# the plan's AdamW fused on a GPU (one kernel for the whole update); off only for benchmarks/api_speed.py's A/B
_FUSED_ADAMW = True


def _finite_number(value: Any) -> bool:
    """A real, finite number (not a bool, not a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_lr(lr: Any) -> None:
    """Refuse a learning rate given as ``lr=`` that is no positive finite number, naming ``lr`` (for the runs)."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive number (the peak learning rate), got {lr!r}")


def check_gamma(gamma: Any, gene_sets: Any, plan_kwargs: Mapping[str, Any] | None = None) -> float:
    """The pathway loss's weight: 0.1 for ``None``; refused unless a number >= 0; a warning without gene sets.

    A ``gamma`` in ``plan_kwargs`` wins over ``gamma=`` (as a loss weight there does in scvi-tools): it is the one
    checked and returned (it was passed on unchecked; review, session 30).
    """
    if plan_kwargs and "gamma" in plan_kwargs:
        return check_gamma(plan_kwargs["gamma"], gene_sets)
    if gamma is None:
        return 0.1
    if not (_finite_number(gamma) and gamma >= 0):
        raise ValueError(
            f"gamma (the pathway loss's weight) must be a finite number >= 0, got {gamma!r}; 0 turns it off"
        )
    check_gene_sets_source(gene_sets)  # (with gamma=0 the sets are not read: a mistyped path would be silent)
    if gamma > 0 and gene_sets is None:
        warnings.warn(
            f"gamma={gamma} weighs the pathway loss, which needs gene_sets (e.g. gene_sets='kegg'); without them this "
            "run trains on the masked-gene loss alone",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return float(gamma)


def log_interval(n_train: int, batch_size: int) -> int:
    """Lightning's ``log_every_n_steps``: its default 50, or the epoch's number of minibatches if fewer.

    Lightning warns on every small run that the epoch is shorter than the interval; logging once per epoch there
    keeps the per-step sync of a logged loss as rare as with 50. (``train`` and ``pretrain_from_corpus``.)
    """
    return max(1, min(50, -(-n_train // max(batch_size, 1))))


def logged_metrics(mode: str, module: Any, gamma: float) -> list[str]:
    """Names of the metrics a training run of ``module`` logs (``history`` keys; what early stopping may monitor).

    The pathway loss only with gene sets set on the module and ``gamma > 0``; the masked-gene accuracy only for the
    ``"mlm"`` objective.
    """
    if mode == "classify":
        terms = ["accuracy", "classification_loss"]
    else:
        pathway = module.pathway_loss is not None and gamma > 0
        terms = ["lm_loss", *(["mlm_accuracy"] if module.objective == "mlm" else []), *(["pathway_loss"] * pathway)]
    return ["validation_loss", "train_loss"] + [f"{t}_{m}" for m in ("validation", "train") for t in terms]


def check_early_stopping_monitor(
    trainer_kwargs: dict[str, Any], logged: Sequence[str], callbacks: Sequence[Any] = (), n_val: int | None = None
) -> None:
    """Refuse, before training, an early-stopping monitor the run never logs (Lightning fails after an epoch).

    Both ``early_stopping_monitor`` (with ``early_stopping=True``) and the ``monitor`` of a user's own strict
    :class:`~lightning.pytorch.callbacks.EarlyStopping` in ``callbacks`` are checked; with ``n_val=0`` (a run
    without held-out cells) so is any early stopping on a validation metric.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    stoppers = [cb for cb in callbacks if isinstance(cb, EarlyStopping)]
    monitors = [cb.monitor for cb in stoppers]
    strict = [cb.monitor for cb in stoppers if cb.strict]
    if trainer_kwargs.get("early_stopping"):
        monitors.append(trainer_kwargs.get("early_stopping_monitor", "validation_loss"))
        strict.append(monitors[-1])
    on_validation = [monitor for monitor in monitors if "validation" in monitor]
    if n_val == 0 and on_validation:
        raise ValueError(
            f"early stopping on {on_validation[0]!r} needs held-out cells, and none are: pass validation_size= (e.g. "
            "0.01, or a number of cells)"
        )
    for monitor in strict:
        if monitor not in logged:
            accuracy = next((m for m in logged if m.endswith("accuracy_validation")), None)
            example = f"{accuracy!r}, early_stopping_mode='max'" if accuracy else "'validation_loss'"
            raise ValueError(
                f"early stopping monitor {monitor!r} is not logged by this run; it logs {list(logged)} "
                f"(e.g. early_stopping_monitor={example})"
            )
    if trainer_kwargs.get("early_stopping"):  # scvi's own stopper: its direction and patience
        monitor, mode = monitors[-1], trainer_kwargs.get("early_stopping_mode", "min")
        if ("accuracy" in monitor) != (mode == "max"):  # (an accuracy rises, a loss falls)
            raise ValueError(
                f"early_stopping_monitor={monitor!r} improves {'upward' if 'accuracy' in monitor else 'downward'}: "
                f"pass early_stopping_mode={'max' if 'accuracy' in monitor else 'min'!r} (got {mode!r}, which would "
                "stop the run as it improves)"
            )


def warn_if_patience_too_long(trainer_kwargs: dict[str, Any]) -> None:
    """Warn that scvi's early stopping cannot end a run whose ``max_epochs`` its patience reaches.

    Called once every refusal of the run's settings has passed (a refused run gets no advice about its epochs).
    """
    if trainer_kwargs.get("early_stopping"):
        patience, epochs = trainer_kwargs.get("early_stopping_patience", 45), trainer_kwargs.get("max_epochs")
        if isinstance(epochs, int) and 0 < epochs <= patience:
            warnings.warn(
                f"early_stopping_patience={patience} (scvi-tools' default 45 unless given) is not below "
                f"max_epochs={epochs}: early stopping cannot end this run; pass early_stopping_patience= (e.g. "
                f"{max(1, epochs // 4)})",
                UserWarning,
                stacklevel=user_stacklevel(),
            )


def ddp_strategy(strategy: Any, has_head: bool) -> Any:
    """``strategy``, told to look for unused parameters when a step leaves some without gradient.

    With a head, pre-training leaves the head unused and fine-tuning a frozen encoder; plain DDP then fails on every
    rank ("parameters that were not used in producing the loss").
    """
    if has_head and strategy in ("ddp", "ddp_spawn", "ddp_notebook"):
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def check_splitter_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse unknown ``datasplitter_kwargs`` by name now (torch's DataLoader refused them once training began)."""
    from scvi.dataloaders import DataSplitter
    from torch.utils.data import DataLoader

    known = set(inspect.signature(DataSplitter.__init__).parameters) | set(inspect.signature(DataLoader).parameters)
    ours = {
        "batch_size",
        "tokenizer",
        "labels",
        "distributed_sampler",
        "adata_manager",
        "train_size",
        "validation_size",
    }
    known |= {"background"}  # TokenDataLoader's own
    if not isinstance(kwargs.get("background", False), bool | np.bool_):
        raise ValueError(f"datasplitter_kwargs['background'] must be True or False, got {kwargs['background']!r}")
    check_background(kwargs.get("background"), kwargs.get("num_workers"))  # before training, not at its first batch
    unknown = sorted(set(kwargs) - (known - ours - {"self", "kwargs", "dataset", "sampler", "batch_sampler"}))
    if unknown:
        raise ValueError(
            f"datasplitter_kwargs {unknown} are not arguments of scvi-tools' DataSplitter or torch's DataLoader "
            "(e.g. shuffle_set_split, external_indexing, num_workers, persistent_workers, pin_memory); train_size, "
            "validation_size and batch_size are arguments of train itself"
        )


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produces a NaN/inf loss (the weights are left unchanged)."""


#: scvi-tools ``TrainingPlan`` settings this plan would accept and silently ignore (no KL term, own schedule).
_SCVI_SCHEDULE_KWARGS = frozenset(
    {
        "reduce_lr_on_plateau",
        "lr_factor",
        "lr_patience",
        "lr_threshold",
        "lr_scheduler_metric",
        "lr_min",
        "n_steps_kl_warmup",
        "n_epochs_kl_warmup",
        "max_kl_weight",
        "min_kl_weight",
        "update_only_decoder",
    }
)


def _check_plan_kwargs(module, kwargs: dict[str, Any]) -> None:
    """Refuse now, naming it, a keyword that neither scvi's plan nor ``module.loss`` takes.

    scvi's ``TrainingPlan`` passes unknown keywords on to ``module.loss``, where a typo would fail only at the
    first training step, inside Lightning.
    """
    ignored = sorted(set(kwargs) & _SCVI_SCHEDULE_KWARGS)
    if ignored:
        raise TypeError(
            f"plan_kwargs {ignored} are scvi-tools' settings of a VAE's KL warm-up, its ReduceLROnPlateau schedule "
            "or decoder-only training; GeneMamba is not a VAE and trains with AdamW and a warm-up + cosine "
            "schedule: set lr, weight_decay, eps, betas, warmup_fraction or min_lr_ratio instead"
        )
    loss_params = inspect.signature(module.loss).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in loss_params):
        return  # a loss that takes any keyword (a wrapped or patched one)
    params = [*inspect.signature(TrainingPlan.__init__).parameters.values(), *loss_params]
    taken = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(kwargs) - taken)
    if unknown:
        raise TypeError(
            f"unknown training-plan setting(s) {unknown}: plan_kwargs take lr, weight_decay, eps, betas, "
            "warmup_fraction, min_lr_ratio and scvi-tools' TrainingPlan arguments"
        )


def _check_optimiser_settings(lr: Any, weight_decay: Any, warmup_fraction: Any, min_lr_ratio: Any, betas: Any,
                              eps: Any) -> None:  # fmt: skip
    """Refuse optimiser settings that would train silently wrong or fail inside Lightning.

    (A negative learning rate past the cosine's middle, a warm-up that never reaches the peak, betas not a pair.)
    """
    checks = (
        ("lr", lr, _finite_number(lr) and lr > 0, "a positive number (the peak learning rate)"),
        ("weight_decay", weight_decay, _finite_number(weight_decay) and weight_decay >= 0, "a number >= 0"),
        ("warmup_fraction", warmup_fraction, _finite_number(warmup_fraction) and 0 <= warmup_fraction <= 1,
         "a fraction in [0, 1] of the optimiser steps"),
        ("min_lr_ratio", min_lr_ratio, _finite_number(min_lr_ratio) and 0 <= min_lr_ratio <= 1,
         "a fraction in [0, 1] of lr (where the cosine ends)"),
        ("eps", eps, _finite_number(eps) and eps > 0, "a positive number"),
    )  # fmt: skip
    for name, value, ok, what in checks:
        if not ok:
            raise ValueError(f"plan_kwargs {name} must be {what}, got {value!r}")
    try:  # a tuple, a list, an array or a tensor of two numbers
        pair = [float(b) for b in betas] if not isinstance(betas, str | bytes) and np.ndim(betas) == 1 else []
    except (TypeError, ValueError):
        pair = []
    if len(pair) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in pair):
        raise ValueError(f"plan_kwargs betas must be two numbers in [0, 1) (AdamW's), got {betas!r}")


def minibatch_loss(trainer, pl_module, outputs) -> Any:
    """The loss of the minibatch a callback's ``on_train_batch_end`` sees, undivided.

    Lightning hands on the loss divided by ``accumulate_grad_batches`` under automatic optimisation.
    """
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and pl_module.automatic_optimization:
        loss = loss * trainer.accumulate_grad_batches
    return loss


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
    eps
        AdamW's epsilon, 1e-8 (torch's and Hugging Face's default). scvi-tools' plan defaults to 0.01, which is
        far larger than the root mean square of this model's gradients and so damps every step; GeneMamba
        trained with 0.01 until this default was set (see "The optimiser's epsilon" in ``docs/biology.md``).
    optimizer
        Only ``"AdamW"`` (scvi-tools' argument; another value raises :class:`ValueError`).
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
        eps: float = 1e-8,
        optimizer: str = "AdamW",
        **kwargs,
    ):
        if optimizer != "AdamW" or kwargs.get("optimizer_creator") is not None:
            raise ValueError(
                f"GeneMamba trains with AdamW and its own warm-up + cosine schedule (optimizer={optimizer!r} "
                "was asked for): set lr, weight_decay, eps, betas, warmup_fraction or min_lr_ratio in plan_kwargs"
            )
        _check_plan_kwargs(module, kwargs)
        _check_optimiser_settings(lr, weight_decay, warmup_fraction, min_lr_ratio, betas, eps)
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, optimizer="AdamW", **kwargs)
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
        """The training step of scvi's plan; raises :class:`NonFiniteLossError` on a NaN/inf loss before any update."""
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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, done here for a fused AdamW, which Lightning's mixed-precision plugin refuses.

        The plugin's refusal guards fp16's gradient scaler; under bf16 (and in float32) nothing is scaled, so the
        gradients are clipped as they are.
        """
        inner = getattr(optimizer, "optimizer", optimizer)
        if gradient_clip_val and inner.defaults.get("fused"):
            params = [p for group in inner.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the schedule's shape, so that a resume over another length is told (``_schedule``)."""
        checkpoint[SCHEDULE_KEY] = dict(getattr(self, "_schedule_shape", {}))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the resumed run's schedule shape for :meth:`configure_optimizers` (Lightning calls this first)."""
        self._resumed_schedule = checkpoint.get(SCHEDULE_KEY)

    def configure_optimizers(self):
        """AdamW (no weight decay on biases, norms, the embedding, the SSM's A, dt bias and D), per-step schedule."""
        decay, no_decay = [], []
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim < 2 or "embedding" in name or name.endswith(("A_log", "dt_bias", ".D")):
                no_decay.append(param)
            else:
                decay.append(param)
        # on a GPU one fused kernel for the whole update (torch's default there runs several per parameter list):
        # the same steps by hand ran 1.04-1.13x faster with it on an H100, the API from 0.90x to 0.99x of the
        # unfused steps by hand (benchmarks/results/pretrain_speed_h100_s34_call{1,2_fused}.json)
        # (not under "16-mixed": its gradient scaler would leave the fused kernel's gradients scaled when clipped)
        on_gpu = all(p.is_cuda for p in decay + no_decay) and not str(self.trainer.precision).startswith("16")
        on_gpu = on_gpu and _FUSED_ADAMW
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
            fused=True if on_gpu else None,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(self.warmup_fraction * total), 1) if self.warmup_fraction > 0 else 0
        schedule = functools.partial(warmup_cosine, warmup=warmup, total=total, floor=self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)  # a partial pickles (a model.trainer)
        self._schedule_shape = {"total": total, "warmup": warmup, "lr": float(self.lr)}
        warn_if_schedule_changes(getattr(self, "_resumed_schedule", None), total, warmup, self.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _batches_done(trainer) -> int:
    """Minibatches a (resumed) run has already trained, as restored from its checkpoint (0 for a new run)."""
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)  # (completed lags one at a save)
    except AttributeError:  # (another Lightning): the optimiser steps
        return int(trainer.global_step) * int(trainer.accumulate_grad_batches)


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
        """Whether the bar is shown."""
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        """Whether the bar is hidden."""
        return not self._enabled

    def disable(self) -> None:
        """Hide the bar (Lightning does on non-zero ranks)."""
        self._enabled = False

    def enable(self) -> None:
        """Show the bar."""
        self._enabled = True

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_bar"] = None  # tqdm objects do not pickle
        return state

    def _total(self, trainer) -> int | None:
        per_epoch = trainer.num_training_batches
        by_steps = trainer.max_steps * trainer.accumulate_grad_batches if (trainer.max_steps or 0) > 0 else None
        if not math.isfinite(per_epoch) or trainer.max_epochs is None or trainer.max_epochs < 0:
            return by_steps  # no epoch limit: the step limit, if any
        total = int(per_epoch) * max(int(trainer.max_epochs), 1)
        return total if by_steps is None else min(total, by_steps)

    def on_train_start(self, trainer, pl_module) -> None:
        """Open the bar over all steps of the run."""
        super().on_train_start(trainer, pl_module)
        if self.is_enabled:
            # a resumed run starts where its checkpoint stopped (it showed 0/6 and ended at 4/6: a probe)
            done = _batches_done(trainer)
            self._bar = track(
                None, total=self._total(trainer), description="Training", style="tqdm", unit="step", initial=done
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Show the epoch."""
        super().on_train_epoch_start(trainer, pl_module)
        if self._bar is not None:
            limit = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
            self._bar.set_description(f"Epoch {trainer.current_epoch + 1}{limit}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Advance the bar by one step and show this minibatch's loss."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._bar is not None:
            self._bar.update(1)
            loss = minibatch_loss(trainer, pl_module, outputs)
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self._bar.set_postfix(train_loss=f"{float(loss):.3f}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        """Close the bar."""
        super().on_train_end(trainer, pl_module)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _DropLightningTips(logging.Filter):
    """Drops Lightning's advertising tips and its note on estimating the number of steps from the log."""

    _NOISE = ("Tip: ", "to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self._NOISE)


def warn_if_graphs_idle(
    cuda_graphs: bool | None, on_gpu: bool, gradient_checkpointing: bool, encoder: torch.nn.Module
) -> None:
    """Warn (at the user's line) when ``cuda_graphs=True`` cannot apply to this run, and say why."""
    if not cuda_graphs:
        return
    why = None
    if not on_gpu:
        why = "this run trains on the CPU"
    elif not any(p.requires_grad for p in encoder.parameters()):
        why = "the encoder is frozen (freeze_encoder=True), so it has no backward pass to record"
    elif gradient_checkpointing:
        why = "gradient_checkpointing=True recomputes each layer in the backward pass, which a graph cannot hold"
    elif encoder.resolved_backend(torch.device("cuda")) != "mamba_ssm":
        why = "the mamba-ssm kernels are not available, so the packed path they record does not run"
    if why:
        warnings.warn(
            f"cuda_graphs=True is ignored: {why}. Training runs eagerly.", UserWarning, stacklevel=user_stacklevel()
        )


@contextlib.contextmanager
def training_session(
    encoder: torch.nn.Module,
    gradient_checkpointing: bool = False,
    cuda_graphs: bool | None = None,
    on_gpu: bool = False,
) -> Iterator[None]:
    """While training: the encoder's gradient checkpointing and CUDA graphs as asked, Lightning quiet.

    ``cuda_graphs=True`` that cannot act on this run (``on_gpu``: whether it trains on a CUDA GPU) warns why
    (:func:`warn_if_graphs_idle`); the graphs are freed when the run ends.

    No Lightning tips, no deprecation noise from its internals, each INFO line once: the ``lightning`` logger
    has a handler of its own *and* propagates to the root logger, so once the root logger has a handler
    (``logging.basicConfig``, many notebook set-ups) every Lightning INFO line would be printed twice.
    Everything is restored afterwards.
    """
    loggers = [logging.getLogger(f"lightning.{pkg}.utilities.rank_zero") for pkg in ("pytorch", "fabric")]
    tips = _DropLightningTips()
    top = logging.getLogger("lightning")
    propagate = top.propagate
    for lg in loggers:
        lg.addFilter(tips)
    if top.handlers:
        top.propagate = False
    warn_if_graphs_idle(cuda_graphs, on_gpu, gradient_checkpointing, encoder)
    encoder.gradient_checkpointing = bool(gradient_checkpointing)
    graphs_before = encoder.cuda_graphs
    if cuda_graphs is not None:
        encoder.cuda_graphs = bool(cuda_graphs)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            warnings.filterwarnings("ignore", message="early_stopping was automatically disabled due to the use of DDP")
            yield
    finally:
        encoder.gradient_checkpointing = False
        encoder.cuda_graphs = graphs_before
        if cuda_graphs:  # free the graphs' pool and buffers (the next run rebuilds them)
            drop_graphs(encoder)
        top.propagate = propagate
        for lg in loggers:
            lg.removeFilter(tips)
