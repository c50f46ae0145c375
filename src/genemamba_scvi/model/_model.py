"""GeneMambaModel: the scvi-tools face of GeneMamba (AnnData set-up, tokenization, inference)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi's view_anndata_setup uses rich.pretty without importing it)
import torch
from anndata import AnnData
from scvi.data._constants import _MANAGER_UUID_KEY, _SCVI_UUID_KEY
from scvi.data._utils import _assign_adata_uuid
from scvi.model.base import BaseModelClass

from genemamba_scvi._config import MODEL_ARG_FIELDS, GeneMambaConfig
from genemamba_scvi._precision import require_cuda_if_asked, resolve_precision
from genemamba_scvi._warn import user_stacklevel
from genemamba_scvi.data._count_warnings import warn_if_rounded_log
from genemamba_scvi.data.gene_ids import warn_if_control_features, warn_if_not_gene_ids
from genemamba_scvi.data.normalize import count_matrix, warn_if_raw_holds_more_genes
from genemamba_scvi.data.tokenize import TOKENIZER_SETTINGS, TokenizerSettings
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.dataloader import TokenDataLoader, TokenDataSplitter, TokenizerSpec
from genemamba_scvi.model._genes import (
    _MIN_GENE_OVERLAP,
    GeneMambaGenesMixin,
    _check_gene_ids,
    _check_gene_overlap,
    _check_known_genes_expressed,
    config_in_order,
)
from genemamba_scvi.model._inference import embed_cells
from genemamba_scvi.model._perturb import GeneMambaPerturbMixin
from genemamba_scvi.model._query import GeneMambaQueryMixin
from genemamba_scvi.model._save_load import GeneMambaSaveLoadMixin
from genemamba_scvi.model._training import GeneMambaTrainingMixin, _GeneMambaTrainRunner
from genemamba_scvi.model._utils import (
    _QUERY_KEPT_KEYS,
    _check_indices,
    _check_is_anndata,
    _check_model_counts,
    _check_obs_key,
    _copy_of_registered,
    _positions,
    _query_for_this_call,
    _refuse_setup_kwargs,
    _register_fields,
    _register_query,
    _validate_count_layer,
    _warn_if_untrained,
    release_when_deleted,
)
from genemamba_scvi.module import GeneMambaModule
from genemamba_scvi.nn.config import check_count
from genemamba_scvi.nn.ssd import mamba_ssm_available
from genemamba_scvi.train import GeneMambaTrainingPlan

"""Default ``adata.obsm`` key for GeneMamba cell embeddings."""

_PROGRESS_MIN_CELLS = 5_000  # progress_bar=None shows a bar from this many cells on
_MAX_INFERENCE_CELLS = 1_024  # GPU inference batch: at most this many cells ...
_MAX_INFERENCE_TOKENS = 1 << 20  # ... and this many token slots (cells x max_genes)
_CPU_INFERENCE_TOKENS = 8_192  # CPU inference batch: this many token slots ...
_MAX_CPU_INFERENCE_CELLS = 8  # ... and at most this many cells (benchmarks/cpu_batch_size.py)


def _model_config(config: GeneMambaConfig | None, settings: dict[str, Any]) -> GeneMambaConfig:
    """``config`` with ``settings`` applied; only the settings a saved model keeps (its ``config.json``) are taken."""
    unknown = sorted(set(settings) - set(MODEL_ARG_FIELDS))
    if unknown:
        raise TypeError(
            f"GeneMambaModel got unexpected setting(s) {unknown}; the model's settings are {list(MODEL_ARG_FIELDS)} "
            f"(see GeneMambaConfig), min_gene_overlap and {', '.join(TOKENIZER_SETTINGS)} (see TokenizerSettings)"
        )
    if isinstance(config, Mapping):  # a dict of settings, e.g. a config.json read by hand
        config = GeneMambaConfig.from_dict(config)
    elif config is not None and not isinstance(config, GeneMambaConfig):
        raise TypeError(f"config must be a GeneMambaConfig (or a dict of its settings), got {type(config).__name__}")
    config = (config or GeneMambaConfig()).replace(**settings)
    defaults = GeneMambaConfig().to_dict()
    changed = sorted(k for k, v in config.to_dict().items() if k not in MODEL_ARG_FIELDS and v != defaults[k])
    if changed:
        raise ValueError(f"GeneMambaModel keeps the defaults of {changed} (they are not saved with a model)")
    return config


def _inference_batch_size(encoder: torch.nn.Module, max_genes: int, device: torch.device) -> int:
    """Cells per inference batch: on CPU 8,192 tokens (at most 8 cells); on a GPU, what its free memory holds.

    On a CPU, time per cell and memory grow with the batch (the torch backend's scan of a packed batch): with 1 layer
    of d_model 256 and ``max_genes=2048``, 64 cells a batch embedded 5.7 cells/s at 6.2 GB peak, 4 cells 34.4 cells/s
    at 1.7 GB (``benchmarks/results/cpu_batch_size.json``, session 19; the same embeddings).

    On a GPU larger batches are a little faster: ``get_latent_representation()`` on an H100 (24 x 512, top-2048)
    embedded 1,058 cells/s at 199 cells a batch (this function's choice until session 32), 1,072 at 256, 1,084 at 512
    (1.024x), 1,086 at 1,024, at 14.8-25.5 KB of peak memory per real token (9.9 GiB above the model at 512 cells;
    ``benchmarks/results/embed_batch_size_h100_s32.json``). The estimate below (25.7 KB a token slot for that
    model) stays above the measurement; 40% of the free memory gives the cap of 512 such cells on an 80 GB card,
    about 170 on a 24 GB one.
    """
    if device.type != "cuda":
        return int(max(1, min(_MAX_CPU_INFERENCE_CELLS, _CPU_INFERENCE_TOKENS // max(max_genes, 1))))
    free, _ = torch.cuda.mem_get_info(device)
    # transient bytes per token slot in one layer: both directions' in_proj output and about as much again for
    # conv / scan outputs (bf16), plus a few float32 d_model vectors (residual stream, padded output)
    per_token = 2 * 2 * 2 * encoder.d_in_proj + 4 * 4 * encoder.d_model
    if encoder.resolved_backend(device) != "mamba_ssm":  # the PyTorch scan keeps its chunk states: ~125 KiB a token
        per_token *= 5  # at d_model 512 on a CPU in float32 (review, session 32), 5x the fused path's estimate
    budget_tokens = min(int(0.4 * free) // per_token, _MAX_INFERENCE_TOKENS)
    return int(max(16, min(_MAX_INFERENCE_CELLS, budget_tokens // max(max_genes, 1))))


def _check_usable_medians(medians: np.ndarray, tokenization: str) -> np.ndarray:
    """``medians``, refused for the ranked tokenization where no gene can be ranked by them (none finite, > 0 or all).

    None finite and positive, or any negative: no median of counts is.

    Bad-input probe (session 33): all NaN, 0, -1 or inf were taken without a word, every gene then ranked with the
    fallback of 1.0 (by count / cell total alone), as ``build_corpus`` refuses. The published tokenization uses none.
    """
    if tokenization == "published":
        return medians
    finite = medians[np.isfinite(medians)]
    if (finite < 0).any():
        raise ValueError(
            f"gene_medians holds {int((finite < 0).sum())} negative value(s): a gene's median of count / cell total "
            "is never negative (log-scaled or centred values?); pass the medians compute_gene_medians gives"
        )
    if not (finite > 0).any():
        raise ValueError(
            "gene_medians holds no finite positive median (all NaN, infinite or 0): genes would be ranked by count / "
            "cell total alone. Pass gene_medians=None to compute them from adata, or compute_gene_medians(files)"
        )
    return medians


def _other_models_scvi_columns(cls: type, adata: AnnData) -> dict[str, pd.Series]:
    """``obs["_scvi_*"]`` columns another model class's set-up wrote last into ``adata`` (empty if GeneMamba's)."""
    latest = adata.uns.get(_MANAGER_UUID_KEY)  # the set-up that wrote them (a copy keeps its original's id)
    mine = any(manager.id == latest for manager in cls._setup_adata_manager_store.values())
    if latest is None or mine or id(adata) in _QUERY_KEPT_KEYS:
        return {}  # (a query's call puts the columns back when it ends: _query_for_this_call)
    return {c: adata.obs[c].copy() for c in adata.obs.columns if str(c).startswith("_scvi_")}


@contextlib.contextmanager
def _warn_if_other_models_columns_rewritten(cls: type, adata: AnnData) -> Iterator[None]:
    """Warn that the set-up inside rewrote columns another model (scVI beside GeneMamba) reads when it trains.

    scvi-tools probe (session 33): ``SCVI.setup_anndata(adata, batch_key=...)`` then GeneMamba's without it set
    ``_scvi_batch`` to 0, and scVI then trained on one batch without a word (as between two scvi-tools models).
    """
    before = _other_models_scvi_columns(cls, adata)  # (a copy of GeneMamba's own AnnData: still its original's id)
    yield
    changed = [
        name
        for name, column in before.items()
        if name in adata.obs and not np.array_equal(np.asarray(adata.obs[name]), np.asarray(column))
    ]
    if changed:
        warnings.warn(
            f"setup_anndata rewrote {', '.join(f'obs[{c!r}]' for c in changed)}, which another model set up on this "
            "AnnData before (e.g. scVI) reads when it trains or embeds: that model would now see GeneMamba's values "
            "(e.g. one batch). Set up each model on its own copy (adata_gm = adata.copy()), or run the other model's "
            "setup_anndata again before using it",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _backend_summary(backend: str) -> str:
    """The backend for ``print(model)``: what ``"auto"`` runs on a CPU and on a GPU (a probe read "auto" as unknown)."""
    if backend != "auto":
        return f"backend {backend}"
    gpu = "mamba_ssm on a GPU" if mamba_ssm_available() else "also on a GPU: mamba-ssm is not installed"
    return f"backend auto (torch on a CPU, {gpu})"


class GeneMambaModel(
    GeneMambaSaveLoadMixin,
    GeneMambaTrainingMixin,
    GeneMambaGenesMixin,
    GeneMambaPerturbMixin,
    GeneMambaQueryMixin,
    BaseModelClass,
):
    """GeneMamba: a bidirectional Mamba-2 foundation model of ranked gene tokens.

    Each cell becomes the sequence of its top ``max_genes`` genes ranked by count / cell total / the
    gene's non-zero median over the training corpus (Geneformer-style). A stack of Bi-Mamba blocks reads
    it in both directions with shared weights, merged by a learned gate. Cell embeddings are the mean of
    the final hidden states over real tokens (``pooling="cls"``: the ``<cls>`` token's state).

    ``pretrained_on_`` records where the weights were pre-trained (the corpus of :meth:`pretrain`, the directory
    :meth:`from_pretrained` read), or ``None``; :attr:`train_runs` what each training run was asked and did. Both
    are saved and loaded with the model.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    vocab
        A :class:`~genemamba_scvi.data.vocab.GeneVocab`, a path to its JSON, or ``None`` to build one from
        the genes of ``adata``: with the medians computed from ``adata`` (``gene_medians`` ``None``, ``"exact"`` or
        ``"tdigest"``) and ``tokenization="ranked"``, its genes with a count in some cell (a gene without any would
        be a token no cell trains; a query expressing it ignores it, as after
        ``sc.pp.filter_genes(adata, min_cells=1)``); otherwise all of them.
    gene_medians
        Non-zero medians per token id (length ``len(vocab)``), e.g. from a pre-trained model; per gene of
        ``adata`` (length ``adata.n_vars``, e.g. :func:`~genemamba_scvi.data.compute_gene_medians` streamed over
        the ``.h5ad`` files of a whole atlas while the model trains on a subsample of it); a pandas Series indexed
        by gene ids; or computed from ``adata`` in one pass over row chunks: ``None`` / ``"exact"`` (holds every
        non-zero's value, ~3x the sparse matrix at its peak) or ``"tdigest"`` (bounded memory, a close
        approximation; for large data).
    max_genes
        Genes per cell (sequence length), 2048 by default; 4096 is supported.
    min_gene_overlap
        An AnnData (set-up or query) is refused, with a report of the matched and unmatched genes, when both the
        fraction of its genes found in the vocabulary and the fraction of the model's genes it holds are below this
        (wrong gene ids or species); either alone is fine (a full matrix against a model of filtered genes, or a
        gene panel). 0.5 by default.
    tokenization
        ``"ranked"`` (default: genes ranked by count / cell total / gene median, zero counts and unknown
        genes left out, :func:`~genemamba_scvi.data.tokenize.rank_tokenize`) or ``"published"`` (the
        preprocessing of the published GeneMamba code, for its weights: raw-value ranks, zero counts
        kept, unknown genes as ``unk_token``; :func:`~genemamba_scvi.data.tokenize.published_tokenize`).
        Saved with the model.
    unk_token
        ``"published"`` only: the entry unknown genes become (``[UNK]`` by :meth:`from_pretrained`); ``None``: dropped.
    tie_break
        Order of equal counts in a cell, ``"median"`` (default) or ``"random"``
        (:func:`~genemamba_scvi.data.tokenize.rank_tokenize`).
    config
        The network and objective settings, a :class:`~genemamba_scvi.nn.config.GeneMambaConfig` (default: its
        defaults, the published 24 x 512 GeneMamba).
    **settings
        Any setting of :class:`~genemamba_scvi.nn.config.GeneMambaConfig` saved with a model, overriding
        ``config``: ``d_model`` (width, 512), ``n_layers`` (depth, 24), the Mamba-2 mixer's ``d_state``,
        ``d_conv``, ``expand``, ``headdim``, ``chunk_size``, ``bidirectional`` (``False``: the GeneMamba_U
        ablation), ``merge``, ``shared_merge``, ``block``, ``backend``, ``pooling``, ``tie_lm_head`` and
        ``mask_prob``; their meaning and defaults are on the :class:`~genemamba_scvi.nn.config.GeneMambaConfig`
        page. Any other name raises :class:`TypeError` naming it.

    Examples
    --------
    >>> model = GeneMambaModel(adata, d_model=64, n_layers=2)  # doctest: +SKIP
    >>> model = GeneMambaModel(adata, config=GeneMambaConfig(d_model=64, n_layers=2))  # doctest: +SKIP
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
        gene_medians: np.ndarray | Literal["exact", "tdigest"] | None = None,
        max_genes: int = 2048,
        min_gene_overlap: float = _MIN_GENE_OVERLAP,
        tokenization: Literal["ranked", "published"] = "ranked",
        unk_token: str | None = None,
        tie_break: Literal["median", "random"] = "median",
        config: GeneMambaConfig | None = None,
        **settings: Any,
    ):
        """Build the model on ``adata`` (set up with :meth:`setup_anndata`); the parameters are the class's above."""
        if adata is None:
            raise ValueError("GeneMambaModel needs an AnnData registered with GeneMambaModel.setup_anndata.")
        tokenizer = TokenizerSettings(max_genes, tokenization, unk_token, tie_break)  # checked there
        config = _model_config(config, settings)
        super().__init__(adata)
        release_when_deleted(self)  # scvi-tools' class stores would keep its own registrations and queries for good
        if isinstance(vocab, str | os.PathLike):
            vocab = GeneVocab.from_json(vocab)
        medians_given = not (gene_medians is None or isinstance(gene_medians, str | os.PathLike))
        if vocab is None:
            vocab = GeneVocab.from_var_names(self._vocabulary_genes(adata, tokenizer.tokenization, medians_given))
            warn_if_not_gene_ids(vocab.genes, "the genes of this AnnData", self._setup_arg("gene_id_key"))
            warn_if_control_features(vocab.genes, "the genes of this AnnData")
            warn_if_raw_holds_more_genes(adata)  # (a Seurat-style object: highly variable genes in X, all in raw)
        if unk_token is not None and (unk_token not in vocab or tokenization != "published"):
            why = (
                "is not an entry of the vocabulary"
                if tokenization == "published"
                else "applies to tokenization='published' only (here it would take a real gene out of the targets)"
            )
            raise ValueError(f"unk_token={unk_token!r} {why}")
        self.vocab_ = vocab
        # config.json's keys in CONFIG_KEYS' order; the one copy of the tokenizer settings and min_gene_overlap (the
        # attributes of the same names read and write it)
        values = {
            **config.to_dict(model_args_only=True),
            **tokenizer.to_config(),
            "min_gene_overlap": _check_gene_overlap(min_gene_overlap),
        }
        self._config = config_in_order(values)
        if not medians_given:
            gene_medians = self._medians_from(adata, "exact" if gene_medians is None else gene_medians)
        else:
            gene_medians = _check_usable_medians(self._medians_per_token(adata, gene_medians), tokenization)
        self.gene_medians_ = gene_medians
        if medians_given:  # after gene_medians_: a saved model judges adata as a query (superset of genes is fine)
            self._match_genes(adata)  # refuses genes that do not fit the model, warns about unknown and missing ones
        self.label_names_: list[str] | None = None
        self.classifier_hidden_: int | None = None
        self.pretrained_on_: str | None = None  # what the weights were pre-trained on (kept by save / load)
        self.train_runs_: list[dict[str, Any]] = []  # one record a training run (kept by save / load)
        self.module = self._module_cls(len(vocab), mask_id=vocab.mask_id, n_special=vocab.n_special, config=config)
        self.module.unk_id = None if unk_token is None else vocab[unk_token]  # never a masked-gene target
        n_params = sum(p.numel() for p in self.module.parameters())
        directions = f"bidirectional ({config.merge})" if config.bidirectional else "unidirectional"
        self._model_summary_string = (
            f"GeneMamba model: {config.n_layers} x d_model {config.d_model}, {directions}, vocab {len(vocab)}, "
            f"{self._genes_read()}, {n_params / 1e6:.2f}M parameters, {_backend_summary(config.backend)}"
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
            Cells x genes AnnData with raw integer counts (CSR, CSC or dense; CSC is copied to CSR, once per data
            loader, for the rows it reads).
        layer
            Layer holding the raw counts (``None``: ``adata.X``).
        batch_key
            Optional ``adata.obs`` column with the batch of each cell: stored with the set-up, **not used by the
            model** (no batch correction as in scVI: the embedding is not conditioned on it). To score batch
            mixing, :func:`~genemamba_scvi.metrics.benchmark_integration` takes its own batch column.
        labels_key
            Optional ``adata.obs`` column with cell-type labels (used by :meth:`train_classifier`).
        gene_id_key
            Optional ``adata.var`` column with the gene ids (symbols or Ensembl ids) to use instead of
            ``adata.var_names``. Ids are matched to the model's vocabulary directly, then without an Ensembl
            version suffix, then case-insensitively for symbols (so ``Cd3e`` matches ``CD3E``: mouse symbols
            written this way reach the human genes of the same name), then through the shipped symbol <-> Ensembl
            table (the module docstring of :mod:`genemamba_scvi.data.vocab` gives the order);
            ``model.vocab_.match(ids, min_overlap=0).report()`` shows how each was matched (``min_overlap=0``: the
            model accepts a query by either of two shares, see ``min_gene_overlap`` of :class:`GeneMambaModel`).

        Raises
        ------
        ValueError
            For non-count data (floats, negatives, NaN/inf) naming the layer, empty cells, an empty or backed
            AnnData, duplicated gene ids, missing keys or NaN in ``batch_key`` / ``labels_key``.
        """
        _refuse_setup_kwargs(kwargs)
        setup_method_args = cls._get_setup_method_args(**locals())
        _validate_count_layer(adata, layer)
        warn_if_rounded_log(count_matrix(adata, layer), "adata.X" if layer is None else f"layer {layer!r}")
        _check_obs_key(adata, batch_key, "batch_key")
        _check_obs_key(adata, labels_key, "labels_key")
        _check_gene_ids(adata, gene_id_key)
        with _warn_if_other_models_columns_rewritten(cls, adata):  # (asked before a copy gets its own id)
            if _copy_of_registered(cls._setup_adata_manager_store, adata):  # its own id: the original stays set up
                _assign_adata_uuid(adata, overwrite=True)  # (scvi-tools refused the original: "Did you make a copy?")
            cls.register_manager(_register_fields(adata, layer, batch_key, labels_key, setup_method_args, kwargs))

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """Register a new AnnData by re-running :meth:`setup_anndata` with the model's arguments.

        scvi-tools would *transfer* the registry, which demands the same number and order of genes.
        GeneMamba matches genes by id through its vocabulary instead, so a query AnnData may hold its
        genes in any order, miss some, or carry genes the model never saw (ignored with a warning).
        """
        _check_is_anndata(adata)
        if adata is None or self._registered_here(adata):
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        if adata.is_view:
            if not copy_if_view:
                raise ValueError("adata is a view; pass a copy (adata.copy()).")
            adata._init_as_actual(adata.copy())
        _register_query(type(self), adata, self.adata_manager.registry["setup_args"])
        self._register_manager_for_instance(self._get_most_recent_anndata_manager(adata, required=True))
        return adata

    def _registered_here(self, adata: AnnData) -> bool:
        """Whether this very AnnData object (not a copy of it) is registered with this model instance."""
        store = type(self)._per_instance_manager_store.get(self.id, {})
        manager = store.get(adata.uns.get(_SCVI_UUID_KEY))
        return manager is not None and manager.adata is adata

    def _setup_arg(self, name: str) -> Any:
        return self.adata_manager.registry["setup_args"].get(name)

    def _token_loader(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        perturb: Callable[[TokenizerSpec], Any] | None = None,
        checked: bool = False,
        **kwargs: Any,
    ) -> TokenDataLoader:
        query = isinstance(adata, AnnData) and not self._registered_here(adata)  # its counts checked as set up now
        adata = self._validate_anndata(adata)
        _check_indices(indices, adata.n_obs)
        layer = self._setup_arg("layer")
        # checked: an earlier pass of the same call checked the counts (in_silico_perturb's passes: once a gene they
        # re-read the whole AnnData, ~12% of its time on 4,472 cells; review)
        if not query and not checked:  # data registered before: changed since (normalised in place)?
            _check_model_counts(adata, layer)
        tokenizer = self._tokenizer_for(adata)
        if not checked:
            _check_known_genes_expressed(adata, layer, tokenizer.gene_token_ids, indices)
        return self._make_data_loader(
            adata=adata,
            indices=indices,
            batch_size=batch_size or 64,
            tokenizer=tokenizer if perturb is None else perturb(tokenizer),
            **kwargs,
        )

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the model, as scvi-tools' ``to_device``; a GPU asked for where torch sees none is named."""
        require_cuda_if_asked(None, "cuda" if isinstance(device, int) else device, "use to_device('cpu')")
        super().to_device(device)

    # ------------------------------------------------------------------ inference
    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _inference_batch_size(self, device: torch.device) -> int:
        return _inference_batch_size(self.module.encoder, self.max_genes, device)

    @torch.inference_mode()
    def _embed(self, adata, indices, batch_size, precision, progress_bar, perturb=None, checked=False) -> torch.Tensor:
        self.module.eval()
        device = self._device()
        resolved = resolve_precision(precision, device.type == "cuda")
        if batch_size is None:
            batch_size = self._inference_batch_size(device)
        loader = self._token_loader(adata, indices, check_count("batch_size", batch_size), perturb, checked)
        n_cells = len(loader.indices)
        show = n_cells >= _PROGRESS_MIN_CELLS if progress_bar is None else bool(progress_bar)
        return embed_cells(self.module, loader, device, resolved, show)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | int | None = "auto",
        progress_bar: bool | None = None,
        give_mean: bool = True,
        mc_samples: int | None = None,
        return_dist: bool = False,
    ) -> np.ndarray:
        """Cell embeddings: the final hidden states pooled per cell.

        ``pooling="mean"`` (the default): their mean over the cell's real gene tokens; ``pooling="cls"``: the state
        of its ``<cls>`` token.

        Store them with ``adata.obsm["X_genemamba"] = model.get_latent_representation()``.

        Parameters
        ----------
        adata
            AnnData with the same kind of genes (any order; unknown genes are ignored with a warning);
            ``None`` uses the AnnData the model was set up with. Another AnnData is set up with the model's
            arguments (scvi-tools' ``uns["_scvi_uuid"]``, ``uns["_scvi_manager_uuid"]``, ``obs["_scvi_batch"]``,
            ``obs["_scvi_labels"]`` = 0; a view becomes an AnnData of its own; another model's set-up of it is put
            back after the call; the docs' API page, "AnnData keys").
        indices
            Cells to embed (default: all).
        batch_size
            Cells per forward pass. ``None`` (default): on CPU 8,192 tokens' worth (4 cells at
            ``max_genes=2048``, at most 8: larger CPU batches are slower per cell); on a GPU, as many cells as a
            token budget of 40% of its free memory allows (at most 1,024; 512 at ``max_genes=2048`` on an 80 GB
            card: 1.024x the cells/s of 199 on an H100). A cell's embedding does not depend
            on it, and batches larger than the mamba-ssm kernels' 2^31-element limit are split by the encoder.
        precision
            ``"auto"`` (default): bf16 autocast on a CUDA GPU (about 4.5x faster than float32 there; cosine
            similarity to the float32 embedding above 0.9999), float32 on CPU. ``"32-true"`` forces
            float32; ``"bf16-mixed"`` / ``"16-mixed"`` force autocast. The result is float32 either way.
        progress_bar
            Show a progress bar (tqdm). ``None`` (default): only for 5,000 cells or more.
        give_mean, mc_samples
            scvi-tools' arguments for a variational posterior, accepted so that scvi code runs unchanged: the
            embedding is deterministic (the model is not a VAE), so the mean and any sample are the same array.
        return_dist
            Must be ``False``: there is no distribution to return (``True`` raises ``ValueError``).

        Returns
        -------
        ``float32`` array of shape ``(n_cells, d_model)``.
        """
        if return_dist:
            raise ValueError(
                "return_dist=True asks for a posterior distribution; GeneMamba's embedding is deterministic "
                "(not a VAE): call get_latent_representation() for the embedding itself"
            )
        _warn_if_untrained(self)
        with _query_for_this_call(self, adata):
            z = self._embed(adata, indices, batch_size, precision, progress_bar).numpy()
        if (adata is None or adata is self.adata) and indices is None:  # what obsm may hold: its first rows
            self._embedded_rows = z[:4].copy()
        return z

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
            the AnnData the model was set up with. Another AnnData gets scvi-tools' set-up keys, as in
            :meth:`get_latent_representation`.
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

        Notes
        -----
        Every cell gets one of the labels the head was trained on: a cell of a type the training labels lack gets
        the nearest one, often with a high probability, so the top probability is no score of novelty (the docs' API
        page, "Cell types the reference lacks", flags such cells by their distance to the reference's embeddings).
        """
        if self.module.classifier is None or self.label_names_ is None:
            raise RuntimeError("No classifier has been trained: call model.train_classifier(labels_key=...) first.")
        with _query_for_this_call(self, adata):
            adata = self._validate_anndata(adata)
            z = self._embed(adata, indices, batch_size, precision, progress_bar)
        self.module.eval()
        device = self._device()
        head_dtype = next(self.module.classifier.parameters()).dtype  # (a module cast to bf16 by hand, too)
        probs = torch.softmax(self.module.classify(z.to(device, head_dtype)).float(), dim=-1).cpu().numpy()
        if soft:
            obs_names = adata.obs_names[_positions(indices, adata.n_obs)]
            return pd.DataFrame(probs, index=obs_names, columns=self.label_names_)
        return pd.Index(self.label_names_)[probs.argmax(axis=1)].to_numpy()

    def get_gene_embeddings(self) -> pd.DataFrame:
        """Input gene embeddings (the token embedding table), genes x ``d_model``, indexed by vocabulary gene.

        The rows of the special tokens, and of a published vocabulary's unknown-gene token, are left out. On a model
        never trained (random weights) it warns: the table is then noise.
        """
        _warn_if_untrained(self)
        weight = self.module.encoder.embedding.weight.detach().float().cpu().numpy()
        table = pd.DataFrame(weight[self.vocab_.n_special :], index=pd.Index(self.vocab_.genes, name="gene"))
        return table.drop(index=self._unk_token) if self._unk_token is not None else table
