"""Training of :class:`~genemamba_scvi.model.GeneMambaModel`: ``train``, ``train_classifier``, ``pretrain``."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi.model._utils import use_distributed_sampler
from scvi.train._trainrunner import _safe_load_logger_history

from genemamba_scvi import __version__
from genemamba_scvi._precision import require_cuda_if_asked, resolve_precision, training_on_gpu
from genemamba_scvi._train_runner import QuietTrainRunner, RngCheckpointState
from genemamba_scvi.model._classifier import (
    _class_weights,
    check_classifier_split,
    check_head_args,
    classifier_labels,
    head_state,
    head_train_positions,
    note_head,
    obs_digest,
    restore_head,
    reused_head_split,
    set_head,
    warn_if_embedding_stale,
    warn_if_stale_after_train,
)
from genemamba_scvi.model._genes import (
    _MIN_GENE_OVERLAP,
    _check_known_genes_expressed,
    config_in_order,
)
from genemamba_scvi.model._run_checks import (
    check_loss_plan_kwargs,
    check_run_args,
    check_train_size,
    warn_if_cpu_memory_short,
    warn_if_pathway_loss_dropped,
)
from genemamba_scvi.model._runs import finish_record, start_record
from genemamba_scvi.model._utils import (
    _check_model_counts,
    _save_kernel_cache,
)
from genemamba_scvi.module import gene_set_tensors
from genemamba_scvi.train import (
    LightningCheckpoint,
    StepProgressBar,
    check_early_stopping_monitor,
    check_gamma,
    ddp_strategy,
    log_interval,
    logged_metrics,
    training_session,
    warn_if_patience_too_long,
)


class _ResumableCheckpoint(LightningCheckpoint):
    """Lightning checkpoints of ``train(checkpoint_dir=...)``: every epoch, or every N steps (all kept)."""

    state_name = "_ResumableCheckpoint"  # the key its state always had in checkpoint files

    def __init__(self, dirpath: str, every_n_train_steps: int | None):
        super().__init__(
            dirpath,
            filename="{epoch}-{step}",
            monitor=None,
            save_top_k=-1 if every_n_train_steps else 1,
            every_n_train_steps=every_n_train_steps,
        )


class _GeneMambaTrainRunner(QuietTrainRunner):
    """scvi-tools' TrainRunner; a later run (``train`` again, ``train_classifier`` after it) continues the history.

    scvi keeps only the keys of the first run (the classification loss and accuracy would be dropped) and indexes a
    later run's values by how many values that key already has, which mislabels the epochs of a key not logged in
    every epoch (``validation_loss`` after a run without validation cells). Here every value of a later run is
    indexed by its epoch (or step, for a step-indexed key such as ``learning_rate_monitor``'s), counted on from those
    of the earlier runs, and new keys are added.
    """

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        # whether this run continues earlier ones, read now: scvi's SaveCheckpoint (enable_checkpointing=True)
        # marks the model untrained at every save, which read at the end took a later run for a first one
        self._continues = bool(model.is_trained_)
        super().__init__(model, *args, **kwargs)

    def _update_history(self) -> None:
        self._merge_history()
        if isinstance(self.model.history_, dict):  # scvi's logger stores objects; a loaded history is float64
            self.model.history_ = {key: _as_float(frame) for key, frame in self.model.history_.items()}

    def _merge_history(self) -> None:
        if not self._continues or not self.trainer.is_global_zero:
            super()._update_history()  # first run, or other ranks: scvi-tools' own
            return
        previous, new = self.model.history_, _safe_load_logger_history(self.trainer)
        if previous is None or (isinstance(previous, dict) and not previous):
            # trained but without a history (from_pretrained, files saved before history was kept): start it here
            self.model.history_ = new if new is not None else {}
            return
        if not isinstance(previous, dict) or not new:
            super()._update_history()  # another logger: scvi-tools' warning
            return
        # per index (epochs; steps of e.g. learning_rate_monitor=True): counted on from the earlier runs' last
        end: dict = {}
        for frame in (f for f in previous.values() if len(f)):
            end[frame.index.name] = max(end.get(frame.index.name, 0), int(frame.index.max()) + 1)
        start: dict = {}  # (a resumed run's first epoch is > 0)
        for frame in (f for f in new.values() if len(f)):
            start[frame.index.name] = min(start.get(frame.index.name, int(frame.index.min())), int(frame.index.min()))
        history = dict(previous)
        for key, frame in new.items():
            name = frame.index.name
            frame = frame.copy()
            frame.index = pd.Index(frame.index.astype(np.int64) + (end.get(name, 0) - start.get(name, 0)), name=name)
            history[key] = pd.concat([previous[key], frame]) if key in previous else frame
        self.model.history_ = history


def _as_float(frame: pd.DataFrame) -> pd.DataFrame:
    try:
        return frame.astype("float64")
    except (TypeError, ValueError):  # a logged value that is not a number: kept as it is
        return frame


def _only_checkpoints(save_dir: Path, checkpoint_dir: str | os.PathLike | None) -> bool:
    """Whether ``save_dir`` is missing or holds nothing but ``checkpoint_dir`` (Lightning's ``.ckpt`` files there)."""
    if checkpoint_dir is None:
        return False
    save, ckpt = save_dir.resolve(), Path(checkpoint_dir).resolve()
    if ckpt != save and save not in ckpt.parents:
        return False
    if not save.is_dir():
        return not save.exists()
    top = save / ckpt.relative_to(save).parts[0] if ckpt != save else None
    return all(entry == top or (ckpt == save and entry.suffix == ".ckpt") for entry in save.iterdir())


def _run_args(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``train`` / ``train_classifier`` (their ``locals()``) for ``_run_training``.

    Its own arguments, and the settings of scvi's ``TrainRunner`` / ``Trainer`` merged with ``trainer_kwargs``.
    """
    runner = {k: v for k, v in args.items() if k in _RUN_TRAINING_ARGS or k in _RUNNER_ARGS}
    return {**runner, **args["trainer_kwargs"]}


class GeneMambaTrainingMixin:
    """``train`` (pre-training on the registered AnnData), ``train_classifier`` and ``pretrain`` (on a corpus).

    Mixed into :class:`~genemamba_scvi.model.GeneMambaModel` (as scvi-tools' ``UnsupervisedTrainingMixin``).
    """

    #: obs_names of the cells the current head trained on (validation-leak check of a continued head)
    _head_cells: set[str] | None = None
    #: a split was saved with the model but could not be restored on the AnnData it was loaded with
    _split_lost: bool = False
    #: only a head was trained, on a frozen encoder that was never trained (its embeddings are random)
    _random_encoder: bool = False
    #: the current head's last split ({"indices": [train, validation, test], "sizes": requested_sizes(...)})
    _head_split: dict[str, Any] | None = None

    @property
    def train_runs(self) -> list[dict[str, Any]]:
        """One record per training run of this model (:meth:`train`, :meth:`train_classifier`, :meth:`pretrain`).

        Each holds an ``id``, ``method``, ``args`` (as passed; a gene-set mapping or an array by a short description),
        ``scvi_settings_seed``, ``status`` (``"completed"``, ``"interrupted"`` or ``"failed (<error>)"``, the last two
        only after a step), ``epochs_run`` and ``steps`` (the trainer's counts at the end: a run resumed with
        ``ckpt_path`` counts from the start of the run it resumed), ``n_cells`` (train / validation), ``precision``,
        ``device``, the start and end times (UTC) and the package and torch versions: what a methods section needs
        beside :attr:`history`. A stopped ``train_classifier`` whose earlier head was put back is not recorded. Saved
        and loaded with the model (empty for models saved before it was kept).
        """
        return copy.deepcopy(list(getattr(self, "train_runs_", [])))

    def _run_training(
        self,
        *,
        labels: np.ndarray | None,
        loss_kwargs: dict[str, Any],
        lr: float,
        batch_size: int,
        train_size: float | None,
        validation_size: float | None,
        gradient_checkpointing: bool,
        plan_kwargs: dict | None,
        cuda_graphs: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        datasplitter_kwargs: dict | None = None,
        run_record: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ):
        """One training run through scvi's ``TrainRunner``, for :meth:`train` and :meth:`train_classifier`.

        ``labels`` (classifier codes) go to the data splitter, ``loss_kwargs`` to the module's ``loss`` through
        the training plan; the other arguments are those of :meth:`train` (see :func:`_run_args`), and
        ``trainer_kwargs`` hold the runner's settings (``max_epochs``, ``accelerator``, ``devices``,
        ``precision``, ``early_stopping``, ``ckpt_path``, ...). ``run_record`` (:func:`._runs.start_record`) is
        finished and appended to ``train_runs_`` when the run ends or is interrupted after a step.
        """
        batch_size, datasplitter_kwargs = check_run_args(
            trainer_kwargs, lr, batch_size, checkpoint_dir, datasplitter_kwargs
        )
        check_loss_plan_kwargs(plan_kwargs, loss_kwargs["mode"])
        check_train_size(train_size)
        resumed = trainer_kwargs.get("ckpt_path")
        resumed = Path(resumed).expanduser() if resumed not in (None, "last") else None
        if checkpoint_dir is None and resumed is not None and resumed.is_file():
            checkpoint_dir = resumed.parent  # a resumed run goes on writing checkpoints where it came from
        require_cuda_if_asked(trainer_kwargs["accelerator"])
        on_gpu = training_on_gpu(trainer_kwargs["accelerator"], trainer_kwargs["devices"])
        trainer_kwargs["precision"] = resolve_precision(trainer_kwargs["precision"], on_gpu)
        if not on_gpu and any(p.requires_grad for p in self.module.encoder.parameters()):  # (frozen: no activations)
            longest = min(self.max_genes, self.adata.n_vars + 1)  # a cell holds at most its genes (and <cls>)
            warn_if_cpu_memory_short(self.module.encoder.config, batch_size, longest, gradient_checkpointing)
        _check_model_counts(self.adata, self._setup_arg("layer"))  # not normalised in place since set-up
        tokenizer = self._tokenizer_for(self.adata, warn_unknown=False)
        _check_known_genes_expressed(self.adata, self._setup_arg("layer"), tokenizer.gene_token_ids)
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            batch_size=batch_size,
            distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
            tokenizer=tokenizer,
            labels=labels,
            **datasplitter_kwargs,
        )
        logged = logged_metrics(loss_kwargs["mode"], self.module, loss_kwargs.get("gamma", 0.0))
        check_early_stopping_monitor(trainer_kwargs, logged, trainer_kwargs.get("callbacks") or ())
        if labels is not None:  # the split, drawn now; the runner trains on it (TokenDataSplitter draws it once)
            data_splitter.setup()
            check_classifier_split(
                labels,
                self.label_names_,
                data_splitter.train_idx,
                data_splitter.val_idx,
                self.adata.obs_names,
                self._head_cells,
                data_splitter.test_idx,
                head_train_positions(self),
            )
        # loss_kwargs reach module.loss through the plan (scvi's TrainingPlan(**loss_kwargs)); plan_kwargs win,
        # its lr too (scvi users set it there)
        plan = self._training_plan_cls(self.module, **{"lr": lr, **loss_kwargs, **(plan_kwargs or {})})
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if checkpoint_dir is not None:  # (a resumed run has one: its checkpoint's folder)
            callbacks.append(_ResumableCheckpoint(str(Path(checkpoint_dir).expanduser()), checkpoint_every_n_steps))
            callbacks.append(RngCheckpointState())
        # progress within the epoch (scvi's simple bar moves once per epoch); simple_progress_bar=True restores it
        trainer_kwargs.setdefault("simple_progress_bar", False)
        if trainer_kwargs.get("enable_progress_bar", True) and not trainer_kwargs["simple_progress_bar"]:
            callbacks.append(StepProgressBar())
        self.module.train()  # Lightning keeps each submodule's mode; a previous inference left them in eval
        n_train, n_val = getattr(data_splitter, "n_train", None), getattr(data_splitter, "n_val", None)  # scvi's split
        if n_train is not None:
            trainer_kwargs.setdefault("log_every_n_steps", log_interval(n_train, batch_size))
        if n_val == 0:  # no validation cells (e.g. train_size=1.0): no validation loop, no empty-loader warning
            if trainer_kwargs.get("early_stopping"):
                n = self.adata.n_obs
                fix = (
                    f"pass train_size={int(100 * (n - 1) / n) / 100} or less (one cell or more held out)"
                    if n >= 2
                    else "one cell cannot be split"
                )
                raise ValueError(
                    f"early_stopping=True monitors the validation loss, but the split of {n} cells "
                    f"(train_size={train_size}, validation_size={validation_size}) leaves no validation cells: "
                    f"{fix}, or early_stopping=False"
                )
            trainer_kwargs.setdefault("limit_val_batches", 0)
        warn_if_patience_too_long(trainer_kwargs)  # after the refusals: a refused run gets no advice
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        # under DDP the loaders carry their own DistributedSampler; Lightning would rebuild them to add one
        trainer_kwargs.setdefault("use_distributed_sampler", False)
        if "strategy" in trainer_kwargs:
            trainer_kwargs["strategy"] = ddp_strategy(trainer_kwargs["strategy"], self.module.classifier is not None)
        with training_session(self.module.encoder, gradient_checkpointing, cuda_graphs, on_gpu):
            runner = self._train_runner_cls(
                self, training_plan=plan, data_splitter=data_splitter, callbacks=callbacks, **trainer_kwargs
            )
            status = "completed"
            try:
                result = runner()  # (resuming: Lightning's word on the folder's checkpoints is left out there)
            except BaseException as err:  # Ctrl-C after some steps: the runner kept them, and the split they used
                status = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed ({type(err).__name__})"
                if runner.trainer.global_step > 0 and isinstance(err, KeyboardInterrupt):
                    self._split_digest = obs_digest(self.adata.obs_names)
                raise
            finally:
                _save_kernel_cache()
                if run_record is not None and (status == "completed" or runner.trainer.global_step > 0):
                    done = finish_record(run_record, runner.trainer, n_train, n_val, status)
                    self.train_runs_ = [*getattr(self, "train_runs_", []), done]
        self._split_digest = obs_digest(self.adata.obs_names)  # the cells the split's positions name
        return result

    def train(
        self,
        max_epochs: int = 10,
        *,
        objective: Literal["mlm", "next_token"] = "mlm",
        gene_sets: str | os.PathLike | dict[str, Sequence[str]] | None = None,
        gamma: float | None = None,
        lr: float = 1e-3,
        batch_size: int = 32,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int | None = None,
        ckpt_path: str | None = None,
        gradient_checkpointing: bool = False,
        cuda_graphs: bool | None = None,
        precision: str | int | None = "auto",
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs: Any,
    ):
        """Pre-train GeneMamba on the registered AnnData.

        Parameters
        ----------
        max_epochs
            Passes over the training cells.
        objective
            ``"mlm"`` (masked-gene prediction) or ``"next_token"`` (unidirectional models only).
        gene_sets
            Gene sets for the pathway InfoNCE term: ``"go_bp"`` / ``"kegg"`` (shipped GMTs), a GMT path, or a
            ``{name: [genes]}`` mapping. ``None`` trains with the LM loss alone (warned when the last run had sets).
        gamma
            Weight of the pathway InfoNCE term; ``None`` (default): 0.1 as in the paper. It needs ``gene_sets``
            (a ``gamma`` given without them warns: there is no pathway loss to weigh).
        lr
            Peak AdamW learning rate (linear warm-up, cosine decay).
        batch_size
            Cells per minibatch.
        accelerator, devices
            Lightning accelerator and devices; ``"auto"`` uses a GPU when there is one.
        train_size, validation_size
            Split of the cells (scvi-tools :class:`~scvi.dataloaders.DataSplitter` semantics).
        early_stopping
            Stop when ``validation_loss`` stops improving (``early_stopping_patience``, scvi's 45 unless given, etc.).
        checkpoint_dir
            Write Lightning checkpoints (weights, optimizer, scheduler, loop state, random streams) here; a run
            resumed from an epoch's end (the default checkpoints; ``ckpt_path=".../last.ckpt"``) draws what the
            uninterrupted one would, and writes into that folder.
        checkpoint_every_n_steps
            Save every N optimiser steps instead (default: at every epoch's end). A run resumed from such a
            checkpoint goes on from its weights and optimiser, but draws the rest of that epoch's cells afresh (the
            cell loader does not resume mid-epoch), so it does not repeat the uninterrupted run exactly
            (:meth:`pretrain` on a corpus does).
        ckpt_path
            Resume training from this Lightning checkpoint.
        gradient_checkpointing
            Recompute each Bi-Mamba layer in the backward pass instead of keeping its activations: much less
            memory (long cells, big batches) for one more forward pass per step; same gradients.
        cuda_graphs
            On a CUDA GPU with the mamba-ssm kernels: record the encoder's forward and backward pass as CUDA
            graphs (one pair per token bucket) and replay them, so the host no longer enqueues ~4,300 kernels a
            step. Pays off when the GPU outruns the host: small batches, fast GPUs (H200, top-2048 genes, the
            encoder's step: 1.34x at 24 cells, 1.22x at 32, none at 48; this whole ``train(batch_size=32)``,
            whose LM head keeps the GPU busier: 1.05x; ``benchmarks/results/*_s12_*``). Each bucket's first batch
            runs eagerly and its second is captured, so the gain comes after the first few dozen steps. Same
            outputs, gradients up to the order of floating-point sums; ignored (with a warning) on CPU, with
            ``gradient_checkpointing`` or a frozen encoder. ``None`` (default): the encoder's setting (off).
        precision
            ``"auto"`` (default): ``"bf16-mixed"`` when training runs on a CUDA GPU (float32 weights, bf16
            matrix products and kernels: about 3x the speed of float32 there), ``"32-true"`` on CPU.
            Or one of ``"bf16-mixed"``, ``"16-mixed"``, ``"32-true"`` (Lightning's names).
        plan_kwargs
            Passed to :class:`~genemamba_scvi.train.GeneMambaTrainingPlan` (``weight_decay``,
            ``warmup_fraction``, ``min_lr_ratio``, ``betas``, ...); an ``lr`` here wins over the ``lr`` argument,
            as in scvi-tools.
        datasplitter_kwargs
            Passed to the data splitter / loader (``num_workers``, ``shuffle_set_split``, ...). ``background=True``
            makes the minibatches ahead in a thread while the model computes (the same minibatches; off by default:
            no gain measured on an H100 at batch 48, ``benchmarks/results/prefetch_train_h100_s31.json``; it may
            help where reading cells is slow, e.g. a slow file system).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning (``accumulate_grad_batches``,
            ``strategy="ddp"``, ``max_steps``, ...). scvi-tools' ``shuffle_set_split`` (``False``: the first
            cells validate, the next train, the rest are test cells) goes to the data splitter, as there; its
            ``load_sparse_tensor`` is accepted and changes nothing (minibatches are always tokenized from the rows of
            a sparse matrix).
        """
        record = start_record("train", locals())
        warn_if_pathway_loss_dropped(self.train_runs_, gene_sets, gamma, plan_kwargs)
        gamma = check_gamma(gamma, gene_sets, plan_kwargs)
        record["args"]["gamma"] = gamma if gene_sets is not None else 0.0  # the weight used (no sets: no pathway loss)
        run_args = _run_args(locals())
        run_args["run_record"] = record
        self.module.set_objective(objective)
        # gamma=0 turns the pathway loss off: the sets are not read (check_gamma checked only that a path exists)
        self.module.set_gene_sets(gene_set_tensors(gene_sets, self.vocab_) if gamma > 0 else None)
        was_trained = self.is_trained_
        out = self._run_training(labels=None, loss_kwargs={"mode": "pretrain", "gamma": gamma}, **run_args)
        self._random_encoder = False
        warn_if_stale_after_train(self, was_trained)
        return out

    def train_classifier(
        self,
        labels_key: str | None = None,
        max_epochs: int = 10,
        *,
        lr: float = 5e-4,
        batch_size: int = 32,
        freeze_encoder: bool = False,
        hidden: int | None = None,
        dropout: float = 0.1,
        class_weight: Literal["balanced"] | dict[str, float] | None = None,
        gradient_checkpointing: bool = False,
        cuda_graphs: bool | None = None,
        precision: str | int | None = "auto",
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        **trainer_kwargs: Any,
    ):
        """Fine-tune a cell-type classifier head (and, unless frozen, the encoder).

        Parameters
        ----------
        labels_key
            ``adata.obs`` column with the labels; defaults to the ``labels_key`` given to
            :meth:`setup_anndata`. A head trained before (also one loaded with the model) on the same cell types
            with the same ``hidden`` is trained further; other cell types or another ``hidden`` get a new head.
        max_epochs
            Fine-tuning epochs.
        lr
            Peak learning rate.
        batch_size
            Cells per minibatch.
        freeze_encoder
            Train the head only (linear probing) instead of fine-tuning the whole model.
        hidden
            Hidden width of the classifier MLP (``None``: a linear head).
        dropout
            Dropout before the head.
        class_weight
            Weights of the cross-entropy per cell type, for unbalanced labels (the usual case: rare types
            are otherwise ignored). ``"balanced"``: ``n_cells / (n_types * n_cells_of_type)`` from the
            label counts in ``adata`` (scikit-learn's convention); a dict maps label -> weight (labels
            not in it get 1); ``None`` (default): unweighted.
        gradient_checkpointing, cuda_graphs, precision
            As in :meth:`train`.
        accelerator, devices, train_size, validation_size, early_stopping, plan_kwargs, **trainer_kwargs
            As in :meth:`train`.
        """
        record = start_record("train_classifier", locals())
        check_head_args(hidden, trainer_kwargs)
        run_args = _run_args(locals())
        run_args["run_record"] = record
        labels_key, codes, names = classifier_labels(self, labels_key or self._setup_arg("labels_key"))
        weights = _class_weights(class_weight, codes, [str(n) for n in names])  # validate before changing state
        before = head_state(self)
        same_head = set_head(self, labels_key, names, hidden, dropout)
        split = reused_head_split(self, same_head, train_size, validation_size)
        splitter_kwargs = dict(run_args.get("datasplitter_kwargs") or {})
        if split is not None and "external_indexing" not in splitter_kwargs:  # a continued head: the same cells
            run_args["datasplitter_kwargs"] = {**splitter_kwargs, "external_indexing": split}
        random_encoder = not self.is_trained_ or self._random_encoder
        self.module.encoder.requires_grad_(not freeze_encoder)
        start = [p.detach().clone() for p in self.module.classifier.parameters()]
        try:
            out = self._run_training(
                labels=codes.astype(np.int64), loss_kwargs={"mode": "classify", "class_weights": weights}, **run_args
            )
        except BaseException as err:
            untouched = all(torch.equal(a, b) for a, b in zip(start, self.module.classifier.parameters()))
            if untouched or (freeze_encoder and not same_head):  # only the new head changed: the earlier one back
                restore_head(self, before)  # ... and the run left nothing, so no record of it (review)
                self.train_runs_ = [r for r in self.train_runs_ if r.get("id") != record["id"]]
            elif isinstance(err, KeyboardInterrupt):  # Ctrl-C: the head keeps its steps, so they are recorded
                note_head(self, random_encoder and freeze_encoder, train_size, validation_size)
            raise
        finally:
            self.module.encoder.requires_grad_(True)
        note_head(self, random_encoder and freeze_encoder, train_size, validation_size)
        warn_if_embedding_stale(self, freeze_encoder)
        return out

    @classmethod
    def pretrain(
        cls,
        corpus_dir: str | os.PathLike,
        save_dir: str | os.PathLike,
        *,
        overwrite: bool = False,
        **kwargs: Any,
    ):
        """Pre-train on a token corpus built by :func:`genemamba_scvi.data.build_corpus` (out of core, DDP).

        Runs :func:`genemamba_scvi.pretrain.pretrain_from_corpus` (memory does not grow with the corpus;
        ``strategy="ddp"``, ``precision="bf16-mixed"``, ``accumulate_grad_batches``, checkpoints every N
        steps and exact resume with ``ckpt_path``) and writes the result to ``save_dir`` in the format of
        :meth:`save`, so that ``GeneMambaModel.load(save_dir, adata=adata)`` embeds any AnnData.

        Parameters
        ----------
        corpus_dir
            Corpus directory (manifest, shards, vocabulary and gene medians).
        save_dir
            Where to write the trained model (atomic; refuses an existing directory unless ``overwrite``).
        overwrite
            Replace an existing model directory.
        **kwargs
            Passed to :func:`~genemamba_scvi.pretrain.pretrain_from_corpus` (architecture, ``max_steps``,
            ``batch_size``, ``lr``, ``devices``, ``strategy``, ``checkpoint_dir``, ``gene_sets``, ``gamma``, ...).

        Returns
        -------
        :class:`~genemamba_scvi.pretrain.PretrainResult` (module, vocab, gene medians, Lightning trainer).
        """
        from genemamba_scvi.io._checkpoint import check_checkpoint_target
        from genemamba_scvi.io._files import check_checkpoint_dir
        from genemamba_scvi.pretrain import pretrain_from_corpus

        save_dir = Path(save_dir).expanduser()
        # a new run into an earlier run's checkpoints is named first: overwrite= cannot help it (review)
        check_checkpoint_dir(kwargs.get("checkpoint_dir"), resuming=kwargs.get("ckpt_path") is not None)
        # a save_dir that holds (or will hold) only this run's Lightning checkpoints is still ours to fill
        overwrite = overwrite or _only_checkpoints(save_dir, kwargs.get("checkpoint_dir"))
        check_checkpoint_target(save_dir, overwrite)  # fail before hours of training, not after
        record = start_record("pretrain", {"corpus_dir": corpus_dir, "kwargs": kwargs})
        result = pretrain_from_corpus(corpus_dir, **kwargs)
        if result.trainer.is_global_zero:
            _save_pretrained(save_dir, corpus_dir, result, record, overwrite)
        return result


_RUN_TRAINING_ARGS = frozenset(inspect.signature(GeneMambaTrainingMixin._run_training).parameters) - {
    "self",
    "labels",
    "loss_kwargs",
    "trainer_kwargs",
    "run_record",
}
#: The arguments of ``train`` / ``train_classifier`` that go to scvi's ``TrainRunner``.
_RUNNER_ARGS = frozenset({"max_epochs", "accelerator", "devices", "precision", "early_stopping", "ckpt_path"})


def _save_pretrained(save_dir: Path, corpus_dir: Any, result: Any, record: dict, overwrite: bool) -> None:
    """Write :meth:`GeneMambaTrainingMixin.pretrain`'s result in the format of ``save`` (rank 0)."""
    from genemamba_scvi.data.corpus import TokenCorpus
    from genemamba_scvi.data.tokenize import TokenizerSettings
    from genemamba_scvi.io import write_checkpoint
    from genemamba_scvi.model._save_load import _history_to_json

    config = config_in_order(
        {
            **result.module.config.to_dict(model_args_only=True),
            "min_gene_overlap": _MIN_GENE_OVERLAP,
            # how the corpus was tokenized (rank_tokenize's defaults), so the model tokenizes new cells alike
            **TokenizerSettings(max_genes=int(TokenCorpus(corpus_dir).max_genes)).to_config(),
        }
    )
    extra = {
        "genemamba_scvi_version": __version__,
        "objective": result.module.objective,
        "is_trained": True,
        "pretrained_on": os.path.abspath(os.path.expanduser(corpus_dir)),  # (a relative path meant nothing elsewhere)
        "history": _history_to_json(_safe_load_logger_history(result.trainer)),
        "train_runs": [finish_record(record, result.trainer, None, None, "completed")],
    }
    write_checkpoint(
        save_dir,
        result.module.state_dict(),
        config=config,
        vocab=result.vocab,
        gene_medians=result.gene_medians,
        extra=extra,
        overwrite=overwrite,
    )
