"""GeneMambaModel: the scvi-tools face of GeneMamba."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi's view_anndata_setup uses rich.pretty without importing it)
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import ModelCheckpoint
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data._constants import _SCVI_UUID_KEY
from scvi.data._utils import _assign_adata_uuid
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass
from scvi.train import SaveCheckpoint, TrainRunner
from tqdm.auto import tqdm

from genemamba_scvi import __version__
from genemamba_scvi._config import ENCODER_FIELDS, MODEL_ARG_FIELDS, GeneMambaConfig
from genemamba_scvi._precision import inference_autocast, resolve_precision, training_on_gpu
from genemamba_scvi.data.normalize import compute_gene_medians, count_matrix, validate_counts
from genemamba_scvi.data.tokenize import TOKENIZATIONS
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.dataloader import TokenDataLoader, TokenDataSplitter, TokenizerSpec
from genemamba_scvi.module import GeneMambaModule, gene_set_tensors
from genemamba_scvi.train import GeneMambaTrainingPlan, StepProgressBar

logger = logging.getLogger("genemamba_scvi")

LATENT_KEY = "X_genemamba"
"""Default ``adata.obsm`` key for GeneMamba cell embeddings."""

_PROGRESS_MIN_CELLS = 5_000  # progress_bar=None shows a bar from this many cells on
_MAX_INFERENCE_CELLS = 1_024  # GPU inference batch: at most this many cells ...
_MAX_INFERENCE_TOKENS = 1 << 20  # ... and this many token slots (cells x max_genes)


def _save_kernel_cache() -> None:
    """Remember Triton winners found in this process (GPU only; see :mod:`genemamba_scvi.nn.kernel_configs`)."""
    if torch.cuda.is_available():
        from genemamba_scvi.nn.kernel_configs import save_kernel_cache

        save_kernel_cache()


#: Encoder settings that are model arguments (the official reader's settings are filtered by them).
_ENCODER_ARGS = tuple(k for k in ENCODER_FIELDS if k in MODEL_ARG_FIELDS)
#: Default of ``min_gene_overlap`` (also written by :meth:`GeneMambaModel.pretrain`).
_MIN_GENE_OVERLAP = 0.5


def _check_obs_key(adata: AnnData, key: str | None, what: str) -> None:
    if key is None:
        return
    if key not in adata.obs:
        raise ValueError(f"{what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]}).")
    n_missing = int(pd.isna(adata.obs[key]).sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{key!r}] ({what}) has {n_missing} missing (NaN) values; fill them "
            f"(e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str).fillna('Unknown')) or drop those cells."
        )


def _label_codes(labels: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """Integer codes and the sorted label values, which keep their type (integer labels stay integers)."""
    try:
        codes, uniques = pd.factorize(labels, sort=True)
    except TypeError:  # labels of mixed types cannot be sorted
        codes, uniques = pd.factorize(labels.astype(str), sort=True)
    return codes, np.asarray(uniques).tolist()


def _class_weights(
    class_weight: str | dict[str, float] | None, codes: np.ndarray, names: Sequence[str]
) -> torch.Tensor | None:
    """Cross-entropy weights per label code (see :meth:`GeneMambaModel.train_classifier`)."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', a dict or None, got {class_weight!r}")
        counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
        weights = codes.size / (len(names) * np.maximum(counts, 1.0))
    else:
        by_name = {str(k): v for k, v in class_weight.items()}
        unknown = sorted(set(by_name) - set(names))
        if unknown:
            raise ValueError(
                f"class_weight names labels that are not in the data: {unknown[:5]}; labels: {list(names)[:10]}"
            )
        weights = np.array([float(by_name.get(n, 1.0)) for n in names])
        if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError(f"class_weight values must be finite, non-negative and not all zero, got {class_weight}")
    return torch.as_tensor(weights, dtype=torch.float32)


def _history_to_json(history: Any) -> dict[str, dict[str, Any]] | None:
    """``model.history`` (a dict of one-column DataFrames indexed by epoch) as plain JSON-able lists."""
    if not isinstance(history, dict):
        return None
    out = {}
    for key, frame in history.items():
        frame = pd.DataFrame(frame)
        try:
            values = frame.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            continue  # not numeric: not a metric curve
        out[str(key)] = {
            "index_name": frame.index.name,
            "index": frame.index.tolist(),
            "columns": [str(c) for c in frame.columns],
            "data": values.tolist(),
        }
    return out


def _history_from_json(saved: dict[str, dict[str, Any]] | None) -> dict[str, pd.DataFrame] | None:
    """Inverse of :func:`_history_to_json`."""
    if not saved:
        return None
    return {
        key: pd.DataFrame(
            np.asarray(item["data"], dtype=np.float64).reshape(len(item["index"]), len(item["columns"])),
            index=pd.Index(item["index"], name=item.get("index_name")),
            columns=item["columns"],
        )
        for key, item in saved.items()
    }


class _DropLightningTips(logging.Filter):
    """Drops Lightning's advertising tips and its note on estimating the number of steps from the log."""

    _NOISE = ("Tip: ", "to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self._NOISE)


@contextlib.contextmanager
def _quiet_lightning():
    """While training: no Lightning tips, no deprecation noise from its internals, each INFO line once.

    The ``lightning`` logger has a handler of its own *and* propagates to the root logger, so once the root
    logger has a handler (``logging.basicConfig``, many notebook set-ups) every Lightning INFO line is printed
    twice. Everything is restored afterwards.
    """
    loggers = [logging.getLogger(f"lightning.{pkg}.utilities.rank_zero") for pkg in ("pytorch", "fabric")]
    tips = _DropLightningTips()
    top = logging.getLogger("lightning")
    propagate = top.propagate
    for lg in loggers:
        lg.addFilter(tips)
    if top.handlers:
        top.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        top.propagate = propagate
        for lg in loggers:
            lg.removeFilter(tips)


class _GeneMambaTrainRunner(TrainRunner):
    """scvi-tools' TrainRunner; a later run (``train_classifier`` after ``train``) also adds its new history keys.

    scvi keeps only the keys of the first run, so the classification loss and accuracy would be dropped.
    New keys are indexed by the epochs of the run that logged them (continuing after the earlier runs).
    """

    def _update_history(self) -> None:
        previous = self.model.history_ if self.model.is_trained_ and isinstance(self.model.history_, dict) else None
        offset = len(previous["train_loss"]) if previous and "train_loss" in previous else 0
        super()._update_history()
        if not previous or not self.trainer.is_global_zero:
            return
        for key, frame in (getattr(self.trainer.logger, "history", None) or {}).items():
            if key not in self.model.history_:
                frame = frame.copy()
                frame.index = pd.RangeIndex(offset, offset + len(frame), name="epoch")
                self.model.history_[key] = frame


class _ResumableCheckpoint(SaveCheckpoint):
    """Plain Lightning checkpoints (weights, optimizer, scheduler, loop state) for ``train(ckpt_path=...)``.

    Subclasses scvi-tools' :class:`~scvi.train.SaveCheckpoint` only so that scvi's Trainer recognises a
    checkpoint callback and does not add its own; unlike it, this writes Lightning ``.ckpt`` files
    (``last.ckpt`` refreshed at every save) rather than full model directories.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None):
        super().__init__(
            dirpath=dirpath,
            filename="{epoch}-{step}",
            monitor=None,
            save_top_k=-1 if every_n_train_steps else 1,
            every_n_train_steps=every_n_train_steps,
        )
        self.save_last = True  # SaveCheckpoint drops save_last from its kwargs; we want last.ckpt

    # Lightning's own behaviour everywhere scvi's SaveCheckpoint would write model dirs instead.
    on_save_checkpoint = ModelCheckpoint.on_save_checkpoint
    on_train_batch_end = ModelCheckpoint.on_train_batch_end
    on_train_end = ModelCheckpoint.on_train_end
    on_exception = ModelCheckpoint.on_exception
    _update_best_and_save = ModelCheckpoint._update_best_and_save
    _remove_checkpoint = ModelCheckpoint._remove_checkpoint


def _validate_count_layer(adata: AnnData, layer: str | None) -> None:
    """Raise a clear ValueError for anything GeneMamba cannot tokenize."""
    where = "adata.X" if layer is None else f"layer {layer!r}"
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if adata.isbacked:
        raise ValueError(
            "backed AnnData is not supported by GeneMambaModel: load it with adata.to_memory(), or build a "
            "token corpus out of core with genemamba_scvi.data.build_corpus for pre-training."
        )
    X = count_matrix(adata, layer)
    validate_counts(X, where)
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise ValueError(
            f"{n_empty} of {adata.n_obs} cells have zero total counts in {where}; GeneMamba cannot rank genes of "
            "an empty cell. Remove them, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )


def _check_known_genes_expressed(
    adata: AnnData, layer: str | None, token_ids: np.ndarray, indices: Sequence[int] | None = None
) -> None:
    """Refuse cells whose counts all fall in genes outside the vocabulary (they have no tokens to embed)."""
    known = np.asarray(token_ids) >= 0
    if known.all():
        return  # cells without any count are refused by _validate_count_layer
    known_totals = np.asarray(count_matrix(adata, layer) @ known.astype(np.float32)).ravel()
    idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    bad = idx[known_totals[idx] == 0]
    if bad.size:
        where = "adata.X" if layer is None else f"layer {layer!r}"
        raise ValueError(
            f"{bad.size} of {idx.size} cells have counts in {where} only in genes that are not in the model's "
            f"vocabulary (e.g. {adata.obs_names[bad[:3]].tolist()}), so GeneMamba has no gene tokens to embed them. "
            "Check the gene ids (symbols or Ensembl ids in var_names, or gene_id_key=), or remove those cells."
        )


def _copy_of_registered(store: dict, adata: AnnData) -> bool:
    """Whether ``adata`` carries the scvi id of another AnnData registered in ``store`` (it is a copy of it)."""
    manager = store.get(adata.uns.get(_SCVI_UUID_KEY))
    return manager is not None and manager.adata is not adata


def _register_afresh(model_cls: type[BaseModelClass], adata: AnnData, setup_args: dict[str, Any]) -> None:
    """Run ``setup_anndata`` on ``adata``; a copy of a registered AnnData first gets its own scvi id.

    scvi-tools refuses copies ("Did you make a copy?") or transfers the registry, which demands the same genes in
    the same order. GeneMamba matches genes by id, so a copy (also with permuted or fewer genes) is simply set up
    again with the model's arguments. Query data need not carry the batch or label columns.
    """
    args = dict(setup_args)
    for key in ("batch_key", "labels_key"):
        if args.get(key) is not None and args[key] not in adata.obs:
            args[key] = None
    if _copy_of_registered(model_cls._setup_adata_manager_store, adata):
        _assign_adata_uuid(adata, overwrite=True)
    model_cls.setup_anndata(adata, **args)


class GeneMambaModel(BaseModelClass):
    """GeneMamba: a bidirectional Mamba-2 foundation model of ranked gene tokens.

    Each cell becomes the sequence of its top ``max_genes`` genes ranked by count / cell total / the
    gene's non-zero median over the training corpus (Geneformer-style). A stack of Bi-Mamba blocks reads
    it in both directions with shared weights, merged by a learned gate. Cell embeddings are the mean of
    the final hidden states over real tokens.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    vocab
        A :class:`~genemamba_scvi.data.vocab.GeneVocab`, a path to its JSON, or ``None`` to build one from
        the genes of ``adata``.
    gene_medians
        Non-zero medians per token id (length ``len(vocab)``), e.g. from a pre-trained model; ``None``
        computes them from ``adata`` (exact, streamed over chunks).
    max_genes
        Genes per cell (sequence length), 2048 by default; 4096 is supported.
    d_model
        Width: size of the token embeddings, of every layer's output and of the cell embedding (the published
        GeneMamba uses 512).
    n_layers
        Depth: number of Bi-Mamba blocks (the published GeneMamba uses 24).
    d_state, d_conv, expand, headdim, chunk_size
        Mamba-2 mixer hyper-parameters.
    bidirectional
        ``False`` gives the unidirectional ablation (GeneMamba_U).
    merge
        How the two directions are merged: ``"gate"`` (default), ``"mean"``, ``"sum"``, ``"concat"``.
    shared_merge
        One merge layer shared by all blocks (the published layout) instead of one per block.
    block
        ``"prenorm"`` (our default: residual + pre-RMSNorm), ``"official"`` (published layer, no norm) or
        ``"official_identity"`` (published layer that returns its input, see :meth:`from_pretrained`).
    backend
        ``"auto"``, ``"torch"`` or ``"mamba_ssm"``.
    pooling
        ``"mean"`` over real tokens, or ``"cls"`` (a ``<cls>`` token is prepended).
    tie_lm_head
        Tie the masked-gene head to the token embedding.
    mask_prob
        Masking rate of the masked-gene objective.
    min_gene_overlap
        Smallest fraction of ``adata``'s genes that must be found in the vocabulary; below it, set-up (and any
        later query AnnData) is refused with a report of the matched and unmatched genes.
    tokenization
        ``"ranked"`` (default: genes ranked by count / cell total / gene median, zero counts and unknown
        genes left out, :func:`~genemamba_scvi.data.tokenize.rank_tokenize`) or ``"published"`` (the
        preprocessing of the published GeneMamba code, for its weights: raw-value ranks, zero counts
        kept, unknown genes as ``unk_token``; :func:`~genemamba_scvi.data.tokenize.published_tokenize`).
        Saved with the model.
    unk_token
        ``"published"`` only: the vocabulary entry that genes outside the vocabulary become (the
        official ``[UNK]``, kept by :meth:`from_pretrained`); ``None`` drops them.
    """

    _module_cls = GeneMambaModule
    _training_plan_cls = GeneMambaTrainingPlan
    _data_splitter_cls = TokenDataSplitter
    _data_loader_cls = TokenDataLoader
    _train_runner_cls = _GeneMambaTrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | str | os.PathLike | None = None,
        gene_medians: np.ndarray | None = None,
        max_genes: int = 2048,
        d_model: int = 512,
        n_layers: int = 24,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        bidirectional: bool = True,
        merge: Literal["gate", "mean", "sum", "concat"] = "gate",
        shared_merge: bool = False,
        block: Literal["prenorm", "official", "official_identity"] = "prenorm",
        backend: Literal["auto", "torch", "mamba_ssm"] = "auto",
        pooling: Literal["mean", "cls"] = "mean",
        tie_lm_head: bool = True,
        mask_prob: float = 0.15,
        min_gene_overlap: float = _MIN_GENE_OVERLAP,
        tokenization: Literal["ranked", "published"] = "ranked",
        unk_token: str | None = None,
    ):
        if adata is None:
            raise ValueError("GeneMambaModel needs an AnnData registered with GeneMambaModel.setup_anndata.")
        if tokenization not in TOKENIZATIONS:
            raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")
        config = GeneMambaConfig.from_dict({k: v for k, v in locals().items() if k in MODEL_ARG_FIELDS})
        super().__init__(adata)
        if isinstance(vocab, str | os.PathLike):
            vocab = GeneVocab.from_json(vocab)
        if vocab is None:
            vocab = GeneVocab.from_var_names(self._gene_ids(adata))
        if unk_token is not None and unk_token not in vocab:
            raise ValueError(f"unk_token={unk_token!r} is not an entry of the vocabulary")
        self.vocab_ = vocab
        self._tokenization = tokenization
        self._unk_token = unk_token
        self.max_genes = int(max_genes)
        self.min_gene_overlap = float(min_gene_overlap)
        if gene_medians is None:
            gene_medians = self._medians_from(adata)
        else:
            self._match_genes(adata)  # refuses a poor overlap with the vocabulary, warns about unknown genes
        gene_medians = np.asarray(gene_medians, dtype=np.float64)
        if gene_medians.shape != (len(vocab),):
            raise ValueError(f"gene_medians has shape {gene_medians.shape}; expected ({len(vocab)},) (one per token).")
        self.gene_medians_ = gene_medians
        self.label_names_: list[str] | None = None
        self.classifier_hidden_: int | None = None
        # the keys and order of config.json, as every earlier version wrote it
        self._config = {
            "max_genes": self.max_genes,
            **config.to_dict(model_args_only=True),
            "min_gene_overlap": self.min_gene_overlap,
            "tokenization": tokenization,
            "unk_token": unk_token,
        }
        self.module = self._module_cls(len(vocab), mask_id=vocab.mask_id, n_special=vocab.n_special, config=config)
        n_params = sum(p.numel() for p in self.module.parameters())
        self._model_summary_string = (
            f"GeneMamba model: {n_layers} x d_model {d_model}, "
            f"{'bidirectional (' + merge + ')' if bidirectional else 'unidirectional'}, vocab {len(vocab)}, "
            f"top-{self.max_genes} genes, {n_params / 1e6:.2f}M parameters, backend {self.module.encoder.backend}"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ AnnData set-up
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_id_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Register an AnnData of raw counts with GeneMamba.

        Parameters
        ----------
        adata
            Cells x genes AnnData with raw integer counts (CSR recommended; CSC/dense are read per batch).
        layer
            Layer holding the raw counts (``None``: ``adata.X``).
        batch_key
            Optional ``adata.obs`` column with the batch of each cell (kept for evaluation).
        labels_key
            Optional ``adata.obs`` column with cell-type labels (used by :meth:`train_classifier`).
        gene_id_key
            Optional ``adata.var`` column with the gene ids (symbols or Ensembl ids) to use instead of
            ``adata.var_names``.

        Raises
        ------
        ValueError
            For non-count data (floats, negatives, NaN/inf) naming the layer, empty cells, an empty or backed
            AnnData, duplicated gene ids, missing keys or NaN in ``batch_key`` / ``labels_key``.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        _validate_count_layer(adata, layer)
        _check_obs_key(adata, batch_key, "batch_key")
        _check_obs_key(adata, labels_key, "labels_key")
        if gene_id_key is not None and gene_id_key not in adata.var:
            raise ValueError(f"gene_id_key={gene_id_key!r} is not a column of adata.var.")
        genes = pd.Index(adata.var[gene_id_key].astype(str) if gene_id_key else adata.var_names)
        if genes.has_duplicates:
            dup = genes[genes.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"{int(genes.duplicated().sum())} duplicated gene ids (e.g. {dup}); make them unique "
                "(adata.var_names_make_unique()) or aggregate them before set-up."
            )
        anndata_fields = [
            # counts were checked exactly above; scvi's sampled check would refuse scipy sparse *arrays*
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """Register a new AnnData by re-running :meth:`setup_anndata` with the model's arguments.

        scvi-tools would *transfer* the registry, which demands the same number and order of genes.
        GeneMamba matches genes by id through its vocabulary instead, so a query AnnData may hold its
        genes in any order, miss some, or carry genes the model never saw (ignored with a warning).
        """
        if adata is None or self._registered_here(adata):
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        if adata.is_view:
            if not copy_if_view:
                raise ValueError("adata is a view; pass a copy (adata.copy()).")
            adata._init_as_actual(adata.copy())
        # a query needs no labels to be embedded or predicted (and scvi would warn about rare ones)
        _register_afresh(type(self), adata, {**self.adata_manager.registry["setup_args"], "labels_key": None})
        self._register_manager_for_instance(self._get_most_recent_anndata_manager(adata, required=True))
        return adata

    def _registered_here(self, adata: AnnData) -> bool:
        """Whether this very AnnData object (not a copy of it) is registered with this model instance."""
        store = type(self)._per_instance_manager_store.get(self.id, {})
        manager = store.get(adata.uns.get(_SCVI_UUID_KEY))
        return manager is not None and manager.adata is adata

    def _setup_arg(self, name: str) -> Any:
        return self.adata_manager.registry["setup_args"].get(name)

    def _gene_ids(self, adata: AnnData) -> list[str]:
        key = self._setup_arg("gene_id_key")
        return list(adata.var[key].astype(str)) if key else list(map(str, adata.var_names))

    def _match_genes(self, adata: AnnData, warn_unknown: bool = True) -> np.ndarray:
        match = self.vocab_.match(self._gene_ids(adata), min_overlap=self.min_gene_overlap)
        n_unknown = int((match.token_ids < 0).sum())
        if warn_unknown and n_unknown:
            fate = "ignored"
            if self._tokenization == "published" and self._unk_token is not None:
                fate = f"tokenised as {self._unk_token} (published tokenization)"
            warnings.warn(
                f"{n_unknown} of {adata.n_vars} genes of this AnnData are not in the model's vocabulary and are "
                f"{fate}.\n{match.report()}",
                UserWarning,
                stacklevel=3,
            )
        return match.token_ids

    def _medians_from(self, adata: AnnData) -> np.ndarray:
        token_ids = self._match_genes(adata, warn_unknown=False)
        col_medians = compute_gene_medians(adata, layer=self._setup_arg("layer"), method="exact")
        medians = np.full(len(self.vocab_), np.nan)
        keep = token_ids >= 0
        medians[token_ids[keep]] = col_medians[keep]
        return medians

    def _tokenizer_for(self, adata: AnnData, warn_unknown: bool = True) -> TokenizerSpec:
        token_ids = self._match_genes(adata, warn_unknown=warn_unknown)
        medians = np.where(token_ids >= 0, self.gene_medians_[np.clip(token_ids, 0, None)], np.nan)
        return TokenizerSpec(
            gene_token_ids=token_ids,
            gene_medians=medians,
            max_genes=self.max_genes,
            add_cls=self._config["pooling"] == "cls",
            method=self._tokenization,
            unk_id=None if self._unk_token is None else self.vocab_[self._unk_token],
        )

    def _token_loader(
        self, adata: AnnData | None, indices: Sequence[int] | None, batch_size: int | None, **kwargs: Any
    ) -> TokenDataLoader:
        adata = self._validate_anndata(adata)
        layer = self._setup_arg("layer")
        _validate_count_layer(adata, layer)
        tokenizer = self._tokenizer_for(adata)
        _check_known_genes_expressed(adata, layer, tokenizer.gene_token_ids, indices)
        return self._make_data_loader(
            adata=adata,
            indices=indices,
            batch_size=batch_size or 64,
            tokenizer=tokenizer,
            **kwargs,
        )

    # ------------------------------------------------------------------ training
    def _run_training(
        self,
        *,
        max_epochs: int,
        lr: float,
        batch_size: int,
        accelerator: str,
        devices: Any,
        train_size: float | None,
        validation_size: float | None,
        early_stopping: bool,
        checkpoint_dir: str | os.PathLike | None,
        checkpoint_every_n_steps: int | None,
        ckpt_path: str | None,
        labels: np.ndarray | None,
        plan_kwargs: dict | None,
        datasplitter_kwargs: dict | None,
        trainer_kwargs: dict,
        gradient_checkpointing: bool = False,
        precision: str | int | None = "auto",
    ):
        precision = resolve_precision(precision, training_on_gpu(accelerator, devices))
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
            **(datasplitter_kwargs or {}),
        )
        plan = self._training_plan_cls(self.module, lr=lr, **(plan_kwargs or {}))
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if checkpoint_dir is not None:
            callbacks.append(_ResumableCheckpoint(str(checkpoint_dir), checkpoint_every_n_steps))
        # progress within the epoch (scvi's simple bar moves once per epoch); simple_progress_bar=True restores it
        trainer_kwargs.setdefault("simple_progress_bar", False)
        if trainer_kwargs.get("enable_progress_bar", True) and not trainer_kwargs["simple_progress_bar"]:
            callbacks.append(StepProgressBar())
        self.module.train()  # Lightning keeps each submodule's mode; a previous inference left them in eval
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        with _quiet_lightning():
            runner = self._train_runner_cls(
                self,
                training_plan=plan,
                data_splitter=data_splitter,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                callbacks=callbacks,
                ckpt_path=ckpt_path,
                precision=precision,
                **trainer_kwargs,
            )
            self.module.encoder.gradient_checkpointing = bool(gradient_checkpointing)
            try:
                return runner()
            finally:
                self.module.encoder.gradient_checkpointing = False
                _save_kernel_cache()

    def train(
        self,
        max_epochs: int = 10,
        *,
        objective: Literal["mlm", "next_token"] = "mlm",
        gene_sets: str | os.PathLike | dict[str, Sequence[str]] | None = None,
        gamma: float = 0.1,
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
            ``{name: [genes]}`` mapping. ``None`` trains with the LM loss alone.
        gamma
            Weight of the pathway InfoNCE term (0.1 as in the paper).
        lr
            Peak AdamW learning rate (linear warm-up, cosine decay).
        batch_size
            Cells per minibatch.
        accelerator, devices
            Lightning accelerator and devices; ``"auto"`` uses a GPU when there is one.
        train_size, validation_size
            Split of the cells (scvi-tools :class:`~scvi.dataloaders.DataSplitter` semantics).
        early_stopping
            Stop when ``validation_loss`` stops improving (``early_stopping_patience`` etc. in kwargs).
        checkpoint_dir
            Write Lightning checkpoints (weights, optimizer, scheduler, loop state) here; ``last.ckpt`` is
            refreshed at every save. Resume with ``ckpt_path=".../last.ckpt"``.
        checkpoint_every_n_steps
            Save every N optimiser steps (default: every epoch).
        ckpt_path
            Resume training from this Lightning checkpoint.
        gradient_checkpointing
            Recompute each Bi-Mamba layer in the backward pass instead of keeping its activations: much less
            memory (long cells, big batches) for one more forward pass per step; same gradients.
        precision
            ``"auto"`` (default): ``"bf16-mixed"`` when training runs on a CUDA GPU (float32 weights, bf16
            matrix products and kernels: about 3x the speed of float32 there), ``"32-true"`` on CPU.
            Or one of ``"bf16-mixed"``, ``"16-mixed"``, ``"32-true"`` (Lightning's names).
        plan_kwargs
            Passed to :class:`~genemamba_scvi.train.GeneMambaTrainingPlan` (``weight_decay``,
            ``warmup_fraction``, ...).
        datasplitter_kwargs
            Passed to the data splitter / loader (``num_workers``, ...).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning (``accumulate_grad_batches``,
            ``strategy="ddp"``, ``max_steps``, ...).
        """
        self.module.mode = "pretrain"
        self.module.set_objective(objective)
        self.module.set_gene_sets(gene_set_tensors(gene_sets, self.vocab_), gamma=gamma)
        return self._run_training(
            max_epochs=max_epochs,
            lr=lr,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_n_steps=checkpoint_every_n_steps,
            ckpt_path=ckpt_path,
            labels=None,
            plan_kwargs=plan_kwargs,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
            gradient_checkpointing=gradient_checkpointing,
            precision=precision,
        )

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
            :meth:`setup_anndata`.
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
        gradient_checkpointing, precision
            As in :meth:`train`.
        accelerator, devices, train_size, validation_size, early_stopping, plan_kwargs, **trainer_kwargs
            As in :meth:`train`.
        """
        labels_key = labels_key or self._setup_arg("labels_key")
        if labels_key is None:
            raise ValueError("train_classifier needs labels: pass labels_key= or set it in setup_anndata.")
        _check_obs_key(self.adata, labels_key, "labels_key")
        codes, names = _label_codes(self.adata.obs[labels_key])
        if len(names) < 2:
            raise ValueError(f"adata.obs[{labels_key!r}] has a single label ({names[0]!r}); nothing to classify.")
        weights = _class_weights(class_weight, codes, [str(n) for n in names])  # validate before changing state
        self.label_names_ = names
        self.labels_key_ = labels_key
        self.classifier_hidden_ = hidden
        self.module.add_classifier(len(names), hidden=hidden, dropout=dropout)
        self.module.class_weights = weights
        self.module.mode = "classify"
        self.module.encoder.requires_grad_(not freeze_encoder)
        try:
            return self._run_training(
                max_epochs=max_epochs,
                lr=lr,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                early_stopping=early_stopping,
                checkpoint_dir=None,
                checkpoint_every_n_steps=None,
                ckpt_path=None,
                labels=codes.astype(np.int64),
                plan_kwargs=plan_kwargs,
                datasplitter_kwargs=None,
                trainer_kwargs=trainer_kwargs,
                gradient_checkpointing=gradient_checkpointing,
                precision=precision,
            )
        finally:
            self.module.encoder.requires_grad_(True)
            self.module.mode = "pretrain"
            self.module.class_weights = None

    # ------------------------------------------------------------------ inference
    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _inference_batch_size(self, device: torch.device) -> int:
        """Cells per inference batch: 64 on CPU; on a GPU, as many as fit a token budget of its free memory."""
        if device.type != "cuda":
            return 64
        free, _ = torch.cuda.mem_get_info(device)
        enc = self.module.encoder
        # transient bytes per real token in one layer: both directions' in_proj output and about as much
        # again for conv / scan outputs (bf16), plus a few float32 d_model vectors (residual stream, padded
        # output); x2 for allocator slack
        per_token = 2 * (2 * 2 * 2 * enc.d_in_proj + 4 * 4 * enc.d_model)
        budget_tokens = min(int(0.25 * free) // per_token, _MAX_INFERENCE_TOKENS)
        return int(max(16, min(_MAX_INFERENCE_CELLS, budget_tokens // max(self.max_genes, 1))))

    @torch.inference_mode()
    def _embed(self, adata, indices, batch_size, precision, progress_bar) -> torch.Tensor:
        self.module.eval()
        device = self._device()
        resolved = resolve_precision(precision, device.type == "cuda")
        if batch_size is None:
            batch_size = self._inference_batch_size(device)
        elif int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive number of cells, got {batch_size!r}")
        loader = self._token_loader(adata, indices, int(batch_size))
        n_cells = len(loader.indices)
        show = n_cells >= _PROGRESS_MIN_CELLS if progress_bar is None else bool(progress_bar)
        out = []
        with tqdm(total=n_cells, desc="Embedding cells", unit="cells", disable=not show, leave=False) as bar:
            for tensors in loader:
                with inference_autocast(resolved, device):
                    inf = self.module.inference(**self.module._get_inference_input(tensors))
                out.append(inf["z"].float().cpu())
                bar.update(len(out[-1]))
        if device.type == "cuda":
            _save_kernel_cache()
        return torch.cat(out) if out else torch.empty(0, self.module.encoder.d_model)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | int | None = "auto",
        progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Cell embeddings (mean of the final hidden states over each cell's real gene tokens).

        Store them with ``adata.obsm["X_genemamba"] = model.get_latent_representation()``.

        Parameters
        ----------
        adata
            AnnData with the same kind of genes (any order; unknown genes are ignored with a warning);
            ``None`` uses the AnnData the model was set up with.
        indices
            Cells to embed (default: all).
        batch_size
            Cells per forward pass. ``None`` (default): 64 on CPU; on a GPU, as many cells as a token budget of
            a quarter of its free memory allows (at most 1,024). A cell's embedding does not depend on it, and
            batches larger than the mamba-ssm kernels' 2^31-element limit are split by the encoder.
        precision
            ``"auto"`` (default): bf16 autocast on a CUDA GPU (about 4.5x faster than float32 there; cosine
            similarity to the float32 embedding above 0.9999), float32 on CPU. ``"32-true"`` forces
            float32; ``"bf16-mixed"`` / ``"16-mixed"`` force autocast. The result is float32 either way.
        progress_bar
            Show a progress bar (tqdm). ``None`` (default): only for 5,000 cells or more.

        Returns
        -------
        ``float32`` array of shape ``(n_cells, d_model)``.
        """
        return self._embed(adata, indices, batch_size, precision, progress_bar).numpy()

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        *,
        precision: str | int | None = "auto",
        progress_bar: bool | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Predict cell types with the classifier head trained by :meth:`train_classifier`.

        Parameters
        ----------
        adata
            AnnData to predict (genes in any order; unknown genes are ignored with a warning); ``None`` uses
            the AnnData the model was set up with.
        indices
            Cells to predict (default: all).
        soft
            Return class probabilities instead of labels.
        batch_size, precision, progress_bar
            As in :meth:`get_latent_representation`.

        Returns
        -------
        With ``soft=False`` an array of labels of the same type as the training labels (integer labels give
        integers, so ``pred == adata.obs[key]`` compares as expected); with ``soft=True`` a DataFrame of class
        probabilities (cells x labels, rows sum to 1, indexed by ``obs_names``).
        """
        if self.module.classifier is None or self.label_names_ is None:
            raise RuntimeError("No classifier has been trained: call model.train_classifier(labels_key=...) first.")
        adata = self._validate_anndata(adata)
        z = self._embed(adata, indices, batch_size, precision, progress_bar)
        self.module.eval()
        device = self._device()
        probs = torch.softmax(self.module.classify(z.to(device)).float(), dim=-1).cpu().numpy()
        if soft:
            obs_names = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
            return pd.DataFrame(probs, index=obs_names, columns=self.label_names_)
        return pd.Index(self.label_names_)[probs.argmax(axis=1)].to_numpy()

    def get_gene_embeddings(self) -> pd.DataFrame:
        """Input gene embeddings (the token embedding table), genes x ``d_model``, indexed by vocabulary gene."""
        weight = self.module.encoder.embedding.weight.detach().float().cpu().numpy()
        return pd.DataFrame(weight[self.vocab_.n_special :], index=pd.Index(self.vocab_.genes, name="gene"))

    # ------------------------------------------------------------------ persistence
    def _checkpoint_extra(self) -> dict[str, Any]:
        return {
            "genemamba_scvi_version": __version__,
            "setup_args": dict(self.adata_manager.registry["setup_args"]),
            "label_names": self.label_names_,
            "labels_key": getattr(self, "labels_key_", None),
            "classifier_hidden": self.classifier_hidden_,
            "objective": self.module.objective,
            "is_trained": bool(self.is_trained_),
            "history": _history_to_json(self.history_),
        }

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save weights (safetensors), config, vocabulary, gene medians and training history, atomically.

        The model directory is written next to its destination and renamed into place, so a crash leaves
        any previous model intact. :meth:`load` restores the model and ``model.history``.

        Parameters
        ----------
        dir_path
            Directory to write (created).
        prefix
            Write into ``dir_path / f"{prefix}model"`` instead.
        overwrite
            Write into an existing directory, as scvi-tools does: the files this package writes there
            (``model.safetensors``, ``config.json``, ``vocab.json``, ``gene_medians.npy``, ``extra.json``,
            ``checksums.json``) are replaced; any other file or folder in it is kept unchanged. A directory
            that is not a saved model but holds a file of one of those names is refused. Without
            ``overwrite`` an existing ``dir_path`` raises :class:`FileExistsError` and is not touched.
        save_anndata
            Not supported: write the AnnData with ``adata.write_h5ad``.
        **kwargs
            Ignored (scvi-tools compatibility).
        """
        from genemamba_scvi.io import write_checkpoint

        if save_anndata:
            raise NotImplementedError("save_anndata=True is not supported: write the AnnData with adata.write_h5ad.")
        if prefix:
            dir_path = Path(dir_path) / f"{prefix}model"
        write_checkpoint(
            dir_path,
            self.module.state_dict(),
            config=dict(self._config),
            vocab=self.vocab_,
            gene_medians=self.gene_medians_,
            extra=self._checkpoint_extra(),
            overwrite=overwrite,
        )

    @classmethod
    def _from_parts(
        cls,
        adata: AnnData,
        config: dict[str, Any],
        vocab: GeneVocab,
        gene_medians: np.ndarray | None,
        setup_args: dict[str, Any] | None,
    ) -> GeneMambaModel:
        manager = cls._setup_adata_manager_store.get(adata.uns.get(_SCVI_UUID_KEY))
        if manager is None or manager.adata is not adata:  # not set up yet, or a copy of a registered AnnData
            _register_afresh(cls, adata, setup_args or {})
        return cls(adata, vocab=vocab, gene_medians=gene_medians, **config)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        **kwargs: Any,
    ) -> GeneMambaModel:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach (required; its genes are matched to the saved vocabulary in any order, and a
            poor overlap raises ``ValueError``). If not set up yet, :meth:`setup_anndata` is run with the
            saved arguments.
        accelerator, device
            Where to put the model.

        Raises
        ------
        FileNotFoundError
            Missing directory or file.
        ValueError
            Tampered or truncated files (checksums), or genes that do not match the vocabulary.
        """
        from scvi.model._utils import parse_device_args

        from genemamba_scvi.io import read_checkpoint

        if prefix:
            dir_path = Path(dir_path) / f"{prefix}model"
        ckpt = read_checkpoint(dir_path)
        if adata is None:
            raise ValueError("GeneMambaModel.load needs the AnnData to attach: load(dir_path, adata=adata).")
        extra = ckpt.extra or {}
        model = cls._from_parts(adata, ckpt.config, ckpt.vocab, ckpt.gene_medians, extra.get("setup_args"))
        if extra.get("label_names"):
            model.label_names_ = list(extra["label_names"])
            model.labels_key_ = extra.get("labels_key")
            model.classifier_hidden_ = extra.get("classifier_hidden")
            model.module.add_classifier(len(model.label_names_), hidden=model.classifier_hidden_)
        model.module.set_objective(extra.get("objective", "mlm"))
        missing, unexpected = model.module.load_state_dict(ckpt.state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {dir_path} does not fit this model: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        _, _, dev = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
        model.to_device(dev)
        model.module.eval()
        model.is_trained_ = bool(extra.get("is_trained", True))
        model.history_ = _history_from_json(extra.get("history"))  # None for models saved before it was kept
        return model

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
        from genemamba_scvi.data.corpus import TokenCorpus
        from genemamba_scvi.io import write_checkpoint
        from genemamba_scvi.pretrain import pretrain_from_corpus

        if Path(save_dir).exists() and not overwrite:  # fail before hours of training, not after
            raise FileExistsError(f"{save_dir} already exists; pass overwrite=True to replace it")
        result = pretrain_from_corpus(corpus_dir, **kwargs)
        if result.trainer.is_global_zero:
            config = {
                **result.module.config.to_dict(model_args_only=True),
                "min_gene_overlap": _MIN_GENE_OVERLAP,
                "max_genes": int(TokenCorpus(corpus_dir).max_genes),
            }
            extra = {
                "genemamba_scvi_version": __version__,
                "objective": result.module.objective,
                "is_trained": True,
                "pretrained_on": str(corpus_dir),
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
        return result

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        adata: AnnData,
        gene_medians: np.ndarray | None = None,
        max_genes: int = 2048,
        backend: Literal["auto", "torch", "mamba_ssm"] = "auto",
        subfolder: str | None = None,
        merge: str | None = None,
        pooling: Literal["mean", "cls"] | None = None,
        tokenization: Literal["published", "ranked"] = "published",
        identity_layers: bool = False,
        **setup_kwargs: Any,
    ) -> GeneMambaModel:
        """Load an official GeneMamba checkpoint directory (Hugging Face or GitHub layout) offline.

        The directory must hold ``config.json``, ``model.safetensors`` and the tokenizer file of the
        published model (``tokenizer.json`` from Hugging Face, e.g. downloaded elsewhere with
        ``huggingface-cli download mineself2016/GeneMamba --local-dir DIR``, or ``gene_tokenizer.json``
        from the GitHub code). Our encoder is built with the published layer (``block="official"``:
        Mamba-2 + residual, no norm) and the official merge, and the weights are mapped key by key
        (strict). See the "Pre-trained checkpoints" docs page.

        Parameters
        ----------
        path
            Local checkpoint directory (or one of its size-variant subfolders).
        adata
            AnnData of raw counts; set up with :meth:`setup_anndata` (done here with ``setup_kwargs`` if not).
        gene_medians
            ``tokenization="ranked"`` only: medians per token id; otherwise computed from ``adata``.
        max_genes
            Genes per cell (the published ``seq_len``, 2048).
        backend
            Mixer backend.
        subfolder
            Size-variant subfolder of ``path`` (e.g. ``"12l-256d"``), if any.
        merge
            Merge mode, only needed when ``config.json`` does not state it; without it a checkpoint
            with no ``aggr`` weights gets the published default ``"mean"`` (with a warning).
        pooling
            ``"mean"`` over the real tokens or ``"cls"`` (a ``<cls>`` token in front, its final state).
            Default: ``config.json``'s ``embedding_pooling``, else ``"mean"`` (with a warning), as in the
            published embedding example.
        tokenization
            ``"published"`` (default): the input the published weights saw (genes ranked by raw value,
            zero counts kept, genes outside the vocabulary as the official ``[UNK]``);
            ``"ranked"``: this package's median-normalised ranks (see :class:`GeneMambaModel`).
        identity_layers
            Every layer returns its input (``block="official_identity"``), as in the ``EncoderLayer``
            of the MineSelf2016/mamba_dev copy of the published code. Only for weights trained with
            that code; see the docs for how to tell.

        Notes
        -----
        The published checkpoints ship no gene medians; with ``tokenization="ranked"`` and no
        ``gene_medians`` they are computed from ``adata``, which may rank genes differently from the
        corpus the model was pre-trained on.
        """
        from genemamba_scvi.io import read_official_checkpoint

        if tokenization not in TOKENIZATIONS:
            raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")
        published = tokenization == "published"
        enc_kwargs, enc_state, lm_state, vocab, info = read_official_checkpoint(
            path,
            subfolder=subfolder,
            merge=merge,
            pooling=pooling,
            keep_unk=published,
            identity_layers=identity_layers,
        )
        if published and info.get("unk_token") is None:
            warnings.warn(
                "the official tokenizer has no unknown-gene token: genes outside its vocabulary are dropped "
                "instead of being tokenised as [UNK] as the published code does",
                UserWarning,
                stacklevel=2,
            )
        if gene_medians is None and info.get("gene_medians") is not None:
            gene_medians = np.asarray(info["gene_medians"], dtype=np.float64)
        if gene_medians is None and published:
            gene_medians = np.full(len(vocab), np.nan)  # not used by the published tokenization
        config = {k: v for k, v in enc_kwargs.items() if k in _ENCODER_ARGS}
        config.update(
            max_genes=max_genes,
            backend=backend,
            tie_lm_head=False,
            tokenization=tokenization,
            unk_token=info.get("unk_token"),
        )
        model = cls._from_parts(adata, config, vocab, gene_medians, setup_kwargs)
        model.module.encoder.load_state_dict(enc_state, strict=True)
        if lm_state is not None:
            model.module.lm_head.load_state_dict(lm_state, strict=True)
        model.module.eval()
        model.is_trained_ = True
        return model
