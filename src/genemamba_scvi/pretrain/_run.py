"""Corpus pre-training: the step-seeded training plan and :func:`pretrain_from_corpus`."""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch

from genemamba_scvi._constants import LENGTHS_KEY
from genemamba_scvi._precision import require_cuda_if_asked, resolve_precision, training_on_gpu
from genemamba_scvi._train_runner import QuietTrainRunner, RngCheckpointState
from genemamba_scvi.data.corpus import TokenCorpus
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.io._files import check_checkpoint_dir
from genemamba_scvi.module import GeneMambaModule, gene_set_tensors
from genemamba_scvi.nn.config import GeneMambaConfig, check_count
from genemamba_scvi.pretrain._data import CorpusDataModule
from genemamba_scvi.train import (
    LAST_NEEDS_CHECKPOINT_DIR,
    GeneMambaTrainingPlan,
    LightningCheckpoint,
    StepProgressBar,
    check_early_stopping_monitor,
    check_gamma,
    check_lr,
    log_interval,
    logged_metrics,
    minibatch_loss,
    training_session,
    warn_if_patience_too_long,
)

# ---------------------------------------------------------------------------------------------- training
_VALIDATION_STREAM = 0x76616C  # seeds validation masks apart from any epoch's training masks


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class CorpusTrainingPlan(GeneMambaTrainingPlan):
    """:class:`~genemamba_scvi.train.GeneMambaTrainingPlan` whose per-step randomness is a function of the step.

    Each training step runs under a forked torch RNG seeded from ``(mask_seed, rank, epoch, batch index)``,
    so the masked positions (and any dropout) of a step are the same whether the run was interrupted and
    resumed or not, and differ between ranks, steps and epochs. The global RNG is left untouched.

    Parameters
    ----------
    module
        A :class:`~genemamba_scvi.module.GeneMambaModule`.
    mask_seed
        Seed of the per-step randomness.
    **kwargs
        Passed to :class:`~genemamba_scvi.train.GeneMambaTrainingPlan` (``lr``, ``weight_decay``, ...).
    """

    def __init__(self, module: GeneMambaModule, mask_seed: int = 0, **kwargs: Any):
        super().__init__(module, **kwargs)
        self.mask_seed = int(mask_seed)

    @contextlib.contextmanager
    def _seeded(self, *parts: int):
        """The global torch RNGs (CPU and this device) forked and seeded from ``parts``; restored afterwards."""
        device = self.device
        devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(_step_seed(self.mask_seed, self.global_rank, *parts))
            yield

    def training_step(self, batch, batch_idx):
        with self._seeded(self.current_epoch, batch_idx):
            return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        """Scvi's validation step with the same masks at every evaluation (seeded by rank and batch only)."""
        with self._seeded(_VALIDATION_STREAM, batch_idx):
            return super().validation_step(batch, batch_idx)


class StepLossHistory(pl.Callback):
    """Records ``(global_step, epoch, batch_idx, loss)`` of every training batch on this rank.

    Attributes
    ----------
    records
        List of dicts with keys ``step``, ``epoch``, ``batch_idx``, ``loss``, ``n_tokens`` (real tokens of the
        batch on this rank).
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @property
    def losses(self) -> list[float]:
        """Loss of each recorded batch."""
        return [r["loss"] for r in self.records]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = minibatch_loss(trainer, pl_module, outputs)
        self.records.append(
            {
                "step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "batch_idx": int(batch_idx),
                "loss": float(loss.detach().float().cpu()),
                "n_tokens": int(batch[LENGTHS_KEY].sum()),
            }
        )


class _CorpusRun:
    """What scvi's :class:`~scvi.train.TrainRunner` reads and writes of a model, for a module trained on a corpus.

    There is no AnnData (and so no :class:`~genemamba_scvi.model.GeneMambaModel`) while pre-training on a
    corpus; the runner records the training state and ``history_`` here.
    """

    def __init__(self, module: GeneMambaModule):
        self.module = module
        self.is_trained_ = False
        self.history_: dict | None = None
        self.run_name: str | None = None

    def to_device(self, device: Any) -> None:
        """Leave the module where Lightning left it (on the CPU, as before: the runner would pick one GPU)."""


def _lightning_devices(accelerator: str, devices: int | str | list[int]) -> int | str | list[int]:
    """``devices`` as Lightning resolves them: ``"auto"`` on GPUs means all of them to Lightning, one to scvi."""
    if devices != "auto":
        return devices
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    return _AcceleratorConnector(accelerator=accelerator, devices="auto")._devices_flag


class PretrainResult(NamedTuple):
    """What :func:`pretrain_from_corpus` returns (unpacks as ``module, vocab, gene_medians, trainer``)."""

    module: GeneMambaModule
    vocab: GeneVocab
    gene_medians: np.ndarray
    trainer: pl.Trainer


#: The arguments of :func:`pretrain_from_corpus` that go to the Trainer as they are.
_LIGHTNING_ARGS = frozenset(
    {
        "accelerator",
        "strategy",
        "num_nodes",
        "max_steps",
        "accumulate_grad_batches",
        "gradient_clip_val",
        "logger",
        "enable_progress_bar",
    }
)


def _check_early_stopping(
    trainer_kwargs: dict[str, Any], callbacks: Sequence[pl.Callback], n_val: int, module: GeneMambaModule, gamma: float
) -> None:
    """Early stopping checked before the first step, not after an epoch (scvi's Trainer monitors elbo_validation)."""
    if trainer_kwargs.get("early_stopping"):
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
    check_early_stopping_monitor(trainer_kwargs, logged_metrics("pretrain", module, gamma), callbacks, n_val)
    warn_if_patience_too_long(trainer_kwargs)


def _check_validation_comes(
    trainer_kwargs: dict[str, Any],
    datamodule: CorpusDataModule,
    max_steps: int,
    accumulate: int,
    on_gpu: bool,
    num_nodes: int,
) -> None:
    """Refuse early stopping, and warn about held-out cells, when ``max_steps`` ends the run before any validation.

    Validation runs at the end of an epoch unless ``val_check_interval`` asks for it every N batches. A run of
    ``max_steps`` inside its first epoch (every run of a large corpus) then never validates: early stopping failed
    after the last step, with nothing saved, and ``validation_size`` held cells out for no loss (a probe, session 34).
    """
    n_val = datamodule.n_val
    if not n_val or max_steps == -1:
        return
    devices = trainer_kwargs.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        world = len(devices)
    elif isinstance(devices, int) and devices > 0:
        world = devices
    else:  # "auto" / -1: every GPU of the machine, one CPU process
        world = max(torch.cuda.device_count(), 1) if on_gpu else 1
    world *= max(int(num_nodes), 1)
    per_epoch = len(datamodule.make_sampler(world, 0))  # the training sampler's own epoch (drop_last, world size)
    batches = max_steps * accumulate
    interval = trainer_kwargs.get("val_check_interval")
    if interval is None:
        first = per_epoch
    elif isinstance(interval, float):
        first = max(int(interval * per_epoch), 1)
    else:
        first = int(interval)
    if batches >= first:
        return
    what = (
        f"the run ends after max_steps={max_steps} ({batches} batches), inside its first epoch of {per_epoch} "
        f"batches, before any validation"
    )
    advice = f"give val_check_interval=N (validate every N training batches, N <= {batches})"
    if trainer_kwargs.get("early_stopping"):
        raise ValueError(f"early_stopping monitors the validation loss, but {what}: {advice}, or train longer")
    warnings.warn(
        f"validation_size holds out {n_val} cells, but {what}: no validation loss will be logged; {advice}",
        UserWarning,
        stacklevel=3,
    )


def _check_module_settings(module: GeneMambaModule, config: GeneMambaConfig | None, settings: dict[str, Any]) -> None:
    """Refuse encoder / objective settings that differ from those of a module given to continue (they were ignored)."""
    given = {**(config.to_dict() if config is not None else {}), **settings}
    ours = module.config.to_dict()
    differ = {k: v for k, v in given.items() if k in ours and ours[k] != v}
    if differ:
        listed = ", ".join(f"{k}={v!r} (the module's: {ours[k]!r})" for k, v in differ.items())
        raise ValueError(
            f"module= continues a module with its own settings, so {listed} cannot apply; leave them out to continue "
            "it, or leave out module= to pre-train a new module with them"
        )


def _warn_if_corpus_medians_replace_the_models(corpus: TokenCorpus) -> None:
    """A continued module trains and is saved with the corpus's gene medians: say so when the corpus computed them."""
    source = corpus.manifest.config.get("medians_source", "")
    if source == "given":
        return
    missing = int(np.isnan(corpus.gene_medians).sum())
    warnings.warn(
        "this corpus ranked its cells by gene medians computed from its own cells, not given: unless it is the "
        "corpus the module was pre-trained on, the module continues on other medians than its own, and"
        f" a model saved from this run tokenizes with the corpus's ({missing} genes of the vocabulary "
        "without one). To keep the module's tokenization, build the corpus with build_corpus(..., "
        "vocab='<model dir>/vocab.json', gene_medians=model.gene_medians_).",
        UserWarning,
        stacklevel=3,
    )


def _stopped_pretraining_note(checkpoint_dir: str | os.PathLike | None) -> str:
    """What a stopped ``pretrain`` leaves (it returns nothing): the checkpoint to resume from, if one was written."""
    if checkpoint_dir is None:
        return "nothing was saved (pass checkpoint_dir= to keep checkpoints to resume from)"
    last = Path(checkpoint_dir).expanduser() / "last.ckpt"
    if last.is_file():
        return f"nothing was saved but the checkpoints: resume with ckpt_path='{last}'"
    return f"nothing was saved, and no checkpoint was written yet into {Path(checkpoint_dir).expanduser()}"


def _check_checkpoint_fits(path: Path, module: GeneMambaModule) -> None:
    """Refuse, naming a setting's tensor, a Lightning checkpoint written by a model of other settings.

    Lightning would list every mismatched tensor of ``load_state_dict``; this names the first and what to do.
    """
    try:  # tensors and numbers only, as Lightning reads it next: a pickled object in a file never runs code here
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict", {})
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"checkpoint {path} holds objects other than tensors and numbers, so it is not loaded (the checkpoints "
            f"of train and pretrain never do; is it from another program?): {str(err).splitlines()[0]}"
        ) from None
    ours = {f"module.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in saved.items() if k.startswith("module.")}
    differ = [k for k in ours if k in theirs and ours[k] != theirs[k]]
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    vocab_key = "module.encoder.embedding.weight"
    if vocab_key in differ and set(differ) <= {vocab_key, "module.lm_head.bias", "module.lm_head.weight"}:
        raise ValueError(  # (only the vocabulary's size differs: blamed on d_model, n_layers before; cluster probe)
            f"checkpoint {path} was written while training on a corpus of {theirs[vocab_key][0]} vocabulary entries, "
            f"and this corpus has {ours[vocab_key][0]}: resume on the checkpoint's corpus (another corpus's tokens "
            "mean other genes), or start a new run without ckpt_path"
        )
    if differ or missing or extra:
        what = (
            f"{differ[0]} is {list(theirs[differ[0]])} there and {list(ours[differ[0]])} here"
            if differ
            else f"tensors {(missing or extra)[:3]} are only {'here' if missing else 'there'}"
        )
        raise ValueError(
            f"checkpoint {path} was written by a model of other settings ({what}); resume with the settings of the "
            "run that wrote it (d_model, n_layers, d_state, ...), or start a new run without ckpt_path"
        )


def _check_length(max_steps: Any, max_epochs: Any) -> None:
    """Refuse a run length that trains nothing (Lightning runs 0 steps and the weights stay random) or is no count.

    Bad-input probe (session 33): ``max_steps=0`` or ``max_epochs=0`` saved a random model marked as trained.
    """
    whole = isinstance(max_steps, numbers.Integral) and not isinstance(max_steps, bool)
    if not whole or (max_steps != -1 and max_steps < 1):
        raise ValueError(f"max_steps must be a positive number of optimiser steps (or -1: no limit), got {max_steps!r}")
    if max_epochs is not None and (
        not isinstance(max_epochs, numbers.Integral) or isinstance(max_epochs, bool) or max_epochs < 1
    ):
        raise ValueError(f"max_epochs must be a positive number of passes over the corpus or None, got {max_epochs!r}")


def pretrain_from_corpus(
    corpus_dir: str | os.PathLike,
    *,
    module: GeneMambaModule | None = None,
    config: GeneMambaConfig | None = None,
    objective: Literal["mlm", "next_token"] = "mlm",
    gene_sets: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    gamma: float | None = None,
    max_steps: int = -1,
    max_epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    accumulate_grad_batches: int = 1,
    gradient_checkpointing: bool = False,
    cuda_graphs: bool | None = None,
    gradient_clip_val: float | None = 1.0,
    precision: str | int | None = "auto",
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_n_steps: int | None = None,
    keep_checkpoints: int = 3,
    ckpt_path: str | os.PathLike | None = None,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    bucket_window: int = 0,
    num_workers: int = 0,
    validation_size: float | int | None = None,
    plan_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[pl.Callback] | None = None,
    logger: Any = None,
    enable_progress_bar: bool = True,
    **trainer_kwargs: Any,
) -> PretrainResult:
    """Pre-train a GeneMamba module on a token corpus (out of core; one or many GPUs).

    Parameters
    ----------
    corpus_dir
        Directory written by :func:`~genemamba_scvi.data.corpus.build_corpus`.
    module
        Continue from this :class:`~genemamba_scvi.module.GeneMambaModule` (its vocabulary size must match the
        corpus); ``None`` builds a new one from ``config``.
    config
        Encoder and objective settings of a new module (:class:`~genemamba_scvi.nn.config.GeneMambaConfig`:
        ``d_model``, ``n_layers``, ..., ``pooling``, ``tie_lm_head``, ``mask_prob``); each setting may also
        be given as a keyword argument (``d_model=64``), which overrides ``config``. ``pooling="cls"``
        needs a corpus built with ``add_cls=True``.
    objective
        ``"mlm"`` or ``"next_token"`` (see :class:`~genemamba_scvi.module.GeneMambaModule`).
    gene_sets, gamma
        Pathway InfoNCE: ``"go_bp"`` / ``"kegg"``, a GMT path or a mapping; ``None`` disables it. ``gamma``
        weighs it: ``None`` (default) is 0.1, 0 turns it off (the sets are then not read).
    max_steps, max_epochs
        Training length (optimiser steps, or passes over the corpus). Without either, one epoch.
    batch_size
        Cells per batch per device.
    lr
        Peak AdamW learning rate (warm-up + cosine decay over the run).
    accumulate_grad_batches
        Batches per optimiser step.
    gradient_checkpointing
        Recompute each Bi-Mamba layer in the backward pass instead of keeping its activations (much less
        memory for one more forward pass; same gradients).
    cuda_graphs
        Replay the encoder's training pass as CUDA graphs (as :meth:`GeneMambaModel.train
        <genemamba_scvi.model.GeneMambaModel.train>`; ``None``: the encoder's setting, off by default).
    gradient_clip_val
        Gradient-norm clipping (``None``: off).
    precision
        ``"auto"`` (default: ``"bf16-mixed"`` on a GPU, ``"32-true"`` on CPU), ``"bf16-mixed"``,
        ``"16-mixed"`` or ``"32-true"``.
    accelerator, devices, strategy, num_nodes
        Lightning device settings, e.g. ``accelerator="gpu", devices=8, strategy="ddp"`` (launch as a script:
        Lightning starts one process per device; use ``"ddp_notebook"`` in notebooks).
    checkpoint_dir
        Write Lightning checkpoints (weights, optimiser, scheduler, loop and sampler state) here. A run resumed from
        a checkpoint file (``ckpt_path``) without it writes into that file's folder, as ``train`` does.
    checkpoint_every_n_steps
        Save every N optimiser steps (default: at the end of every epoch). ``last.ckpt`` always follows the
        latest save.
    keep_checkpoints
        Keep the latest K step checkpoints (-1: all).
    ckpt_path
        Resume from this checkpoint (or ``"last"``): training continues with the next unseen batch, and the
        losses are the same as those of an uninterrupted run (exactly on CPU).
    seed
        Seeds the initialisation, the epoch shuffles and the masking.
    shuffle, drop_last, bucket_window, num_workers
        Data loading (see :class:`CorpusDataModule`).
    validation_size
        Hold out cells for a validation loss: a share of the corpus (``0 < x < 1``) or a number of cells, drawn
        at random (fixed by ``seed``) from every input file. ``validation_loss``, ``lm_loss_validation`` and
        ``mlm_accuracy_validation`` (masked-gene objective) are then logged at the end of every epoch, or every
        ``val_check_interval`` training batches of an epoch (a Trainer argument; give it when ``max_steps`` ends
        the run inside the first epoch), with the same masks at every evaluation; read them in
        ``result.trainer.callback_metrics`` or a ``logger``. ``None`` (default): every cell trains.
    plan_kwargs
        Passed to :class:`CorpusTrainingPlan` (``weight_decay``, ``warmup_fraction``, ...).
    callbacks
        Extra Lightning callbacks.
    logger
        ``None`` (default): scvi-tools' in-memory logger, nothing written to disk (scvi's Trainer would write one
        under DDP); its curves by epoch (``train_loss``, ``lm_loss_train``, the validation losses) become
        ``model.history`` of the model :meth:`~genemamba_scvi.model.GeneMambaModel.pretrain` saves. ``False``:
        none; or any Lightning logger.
    enable_progress_bar, **trainer_kwargs
        Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer` (all but the settings of
        ``config``). Training runs through scvi's :class:`~scvi.train.TrainRunner`, with the corpus as its
        data module, as :meth:`~genemamba_scvi.model.GeneMambaModel.train` runs on an AnnData.

    Returns
    -------
    :class:`PretrainResult` ``(module, vocab, gene_medians, trainer)``: the trained module (on the CPU, where
    Lightning leaves it), the corpus vocabulary and gene medians (to build a ``GeneMambaModel`` around it), and
    the trainer.
    """
    if ckpt_path == "last" and checkpoint_dir is None:
        raise ValueError(LAST_NEEDS_CHECKPOINT_DIR)
    _check_length(max_steps, max_epochs)
    check_lr(lr)  # (named as lr=: the plan's own check would call it "plan_kwargs lr")
    check_checkpoint_dir(checkpoint_dir, resuming=ckpt_path is not None)
    gamma = check_gamma(gamma, gene_sets, plan_kwargs)
    batch_size = check_count("batch_size", batch_size)
    accumulate_grad_batches = check_count("accumulate_grad_batches", accumulate_grad_batches)
    bucket_window = check_count("bucket_window", bucket_window, least=0)
    keep_checkpoints = check_count("keep_checkpoints", keep_checkpoints, least=-1)  # -1: all
    if checkpoint_dir is None and ckpt_path not in (None, "last"):  # checkpoints go on in the resumed run's folder,
        checkpoint_dir = Path(ckpt_path).expanduser().parent  # as train()'s (none were written: cluster probe)
    if checkpoint_every_n_steps is not None:
        checkpoint_every_n_steps = check_count("checkpoint_every_n_steps", checkpoint_every_n_steps)
        if checkpoint_dir is None:  # (silently no checkpoint at all: cluster probe, session 35)
            raise ValueError(f"checkpoint_every_n_steps={checkpoint_every_n_steps} needs checkpoint_dir, the folder "
                             "to write the checkpoints into")  # fmt: skip
    lightning_args = {k: v for k, v in locals().items() if k in _LIGHTNING_ARGS}
    if logger is None:  # scvi's in-memory logger, never on disk (scvi's Trainer would write one under DDP)
        from scvi.train._logger import SimpleLogger

        lightning_args["logger"] = SimpleLogger(save_log_on_disk=False)
    corpus = TokenCorpus(corpus_dir)
    vocab, medians = corpus.vocab, corpus.gene_medians
    add_cls = bool(corpus.manifest.config.get("add_cls", False))
    pl.seed_everything(seed, workers=True, verbose=False)
    settings, trainer_kwargs = GeneMambaConfig.split_dict(trainer_kwargs)
    if module is None:
        config = (config or GeneMambaConfig()).replace(**settings)
        if (config.pooling == "cls") != add_cls:
            raise ValueError(
                f"pooling={config.pooling!r} needs a corpus built with add_cls={config.pooling == 'cls'}, but this "
                f"corpus has add_cls={add_cls}"
            )
        module = GeneMambaModule(
            len(vocab),
            objective=objective,
            gamma=gamma,
            mask_id=vocab.mask_id,
            n_special=vocab.n_special,
            config=config,
        )
    else:
        _check_module_settings(module, config, settings)
        if module.vocab_size != len(vocab):
            raise ValueError(
                f"module has a vocabulary of {module.vocab_size} tokens, the corpus {len(vocab)}: a corpus to "
                "pre-train a model further is built with the model's vocabulary and medians: build_corpus(files, "
                "out_dir, vocab='<model dir>/vocab.json', gene_medians=model.gene_medians_)"
            )
        _warn_if_corpus_medians_replace_the_models(corpus)
        module.set_objective(objective)
        # a loaded model's module is in eval mode, and Lightning keeps modes as it finds them: its steps would skip
        # the masking, encode twice and drop gradient checkpointing (a user probe)
        module.train()
    module.set_gene_sets(gene_set_tensors(gene_sets, vocab) if gamma > 0 else None)  # (gamma=0: the sets unread)
    resume_from = Path(checkpoint_dir) / "last.ckpt" if ckpt_path == "last" else ckpt_path
    if resume_from is not None and (resume_from := Path(resume_from).expanduser()).is_file():  # ("last" too: probe)
        _check_checkpoint_fits(resume_from, module)
    elif ckpt_path == "last":  # a job's first submission, or a mistyped folder: said, not Lightning's save_last hint
        warnings.warn(f"no last.ckpt in {checkpoint_dir} yet: this run starts from step 0", UserWarning, stacklevel=2)
        ckpt_path = None

    # gamma reaches module.loss through the plan (scvi's loss_kwargs)
    plan = CorpusTrainingPlan(module, mask_seed=seed, **{"lr": lr, "gamma": gamma, **(plan_kwargs or {})})
    datamodule = CorpusDataModule(
        corpus_dir,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        bucket_window=bucket_window,
        num_workers=num_workers,
        validation_size=validation_size,
    )
    datamodule.corpus = corpus
    datamodule.setup()  # refuses a validation_size the corpus cannot give before anything runs
    cbs = list(callbacks or [])
    if checkpoint_dir is not None:
        cbs.append(
            LightningCheckpoint(
                str(Path(checkpoint_dir).expanduser()),
                filename="step{step:09d}",
                auto_insert_metric_name=False,
                every_n_train_steps=checkpoint_every_n_steps,
                monitor="step",
                mode="max",
                save_top_k=keep_checkpoints,
            )
        )
        cbs.append(RngCheckpointState())  # a resumed run goes on with the streams the checkpoint saw
    if enable_progress_bar:
        cbs.append(StepProgressBar())  # by step, over max_steps (Lightning's bar showed "Epoch 0/-2", "16/4")
    if max_steps == -1 and max_epochs is None:
        max_epochs = 1
    require_cuda_if_asked(accelerator)
    on_gpu = training_on_gpu(accelerator, devices)
    trainer_kwargs = {
        # Lightning's defaults where scvi's Trainer has others that would change the run (cudnn autotuning, bar)
        "benchmark": None,
        "simple_progress_bar": False,
        **lightning_args,
        "devices": _lightning_devices(accelerator, devices),
        "precision": resolve_precision(precision, on_gpu),
        "max_epochs": max_epochs if max_epochs is not None else -1,
        "use_distributed_sampler": False,  # CorpusBatchSampler splits the data over ranks itself
        "ckpt_path": None if ckpt_path is None else "last" if ckpt_path == "last" else os.path.expanduser(ckpt_path),
        **trainer_kwargs,
    }
    trainer_kwargs.setdefault("log_every_n_steps", log_interval(datamodule.n_train, batch_size))  # (as train()'s)
    if datamodule.n_val:  # scvi's Trainer never validates unless told (its None means never)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
    else:  # no validation loop (Lightning would warn about the empty validation loader)
        trainer_kwargs.setdefault("limit_val_batches", 0)
    _check_early_stopping(trainer_kwargs, cbs, datamodule.n_val, module, gamma)
    _check_validation_comes(trainer_kwargs, datamodule, max_steps, accumulate_grad_batches, on_gpu, num_nodes)
    with training_session(module.encoder, gradient_checkpointing, cuda_graphs, on_gpu):
        runner = QuietTrainRunner(
            _CorpusRun(module), training_plan=plan, data_splitter=datamodule, callbacks=cbs, **trainer_kwargs
        )
        runner.interrupt_note = functools.partial(_stopped_pretraining_note, checkpoint_dir)
        runner()
    return PretrainResult(module, vocab, medians, runner.trainer)
