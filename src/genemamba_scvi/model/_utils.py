"""AnnData checks and helpers shared by the parts of :class:`~genemamba_scvi.model.GeneMambaModel`."""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data._constants import _MANAGER_UUID_KEY, _SCVI_UUID_KEY
from scvi.data._utils import _assign_adata_uuid
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass

from genemamba_scvi._config import ENCODER_FIELDS, MODEL_ARG_FIELDS
from genemamba_scvi._warn import user_stacklevel as _user_stacklevel
from genemamba_scvi.data.gene_ids import refuse_non_gene_features
from genemamba_scvi.data.normalize import (
    NotCountsError,
    count_matrix,
    find_raw_counts,
    raw_counts_hint,
    validate_counts,
)


def _save_kernel_cache() -> None:
    """Remember Triton winners found in this process (GPU only; see :mod:`genemamba_scvi.nn.kernel_configs`)."""
    if torch.cuda.is_available():
        from genemamba_scvi.nn.kernel_configs import save_kernel_cache

        save_kernel_cache()


#: Encoder settings that are model arguments (the official reader's settings are filtered by them).
_ENCODER_ARGS = tuple(k for k in ENCODER_FIELDS if k in MODEL_ARG_FIELDS)


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse a setting that is not one of ``allowed``, naming them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _check_obs_key(adata: AnnData, key: str | None, what: str) -> None:
    if key is None:
        return
    if key not in adata.obs:
        columns = [c for c in adata.obs.columns if not str(c).startswith("_scvi_")]
        shown = f"{columns[:30]}" + (f" ... ({len(columns)} in all)" if len(columns) > 30 else "")
        raise ValueError(f"{what}={key!r} is not a column of adata.obs (columns: {shown}).")
    n_missing = int(pd.isna(adata.obs[key]).sum())
    if n_missing and what == "labels_key":
        raise ValueError(
            f"adata.obs[{key!r}] (labels_key) has {n_missing} missing (NaN) values. To annotate the unlabelled cells, "
            f"set up and fine-tune on the labelled ones (ref = adata[adata.obs[{key!r}].notna()].copy()) and "
            f"predict the others (model.predict(adata[adata.obs[{key!r}].isna()].copy())); filled with a placeholder "
            "such as 'Unknown' they would become a cell type the classifier learns. Cells only to embed need no "
            "labels_key."
        )
    if n_missing:
        raise ValueError(
            f"adata.obs[{key!r}] ({what}) has {n_missing} missing (NaN) values; fill them "
            f"(e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(object).fillna('Unknown').astype(str)) or drop "
            f"those cells (adata = adata[adata.obs[{key!r}].notna()].copy())."
        )
    column = adata.obs[key]
    values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column
    kinds = sorted({type(v).__name__ for v in values})
    if len(kinds) > 1 and pd.api.types.infer_dtype(values, skipna=True) not in (
        "integer",
        "floating",
        "mixed-integer-float",
    ):
        raise ValueError(
            f"adata.obs[{key!r}] ({what}) mixes value types ({', '.join(kinds)}), which cannot be sorted into "
            f"categories; make them one type, e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)."
        )


def _torch_device(accelerator: str, device: int | str) -> torch.device:
    """Where ``load`` / ``from_pretrained`` put a model.

    scvi-tools' ``accelerator`` / ``device`` (a GPU index or ``"auto"``), or a torch device name as ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    """
    from scvi.model._utils import parse_device_args

    from genemamba_scvi._precision import require_cuda_if_asked

    if isinstance(device, torch.device):  # torch's habit: the same as its name (Lightning refused the object)
        device = str(device)
    require_cuda_if_asked(accelerator, device)
    if isinstance(device, str) and device != "auto":
        named = torch.device(device)
        if named.type == "cpu":
            return named
        accelerator, device = "gpu", [named.index] if named.index is not None else "auto"  # an int: a GPU count
    return parse_device_args(accelerator=accelerator, devices=device, return_device="torch")[2]


def _check_is_anndata(adata: Any) -> None:
    """Refuse what is not an in-memory AnnData, naming it.

    A file name failed in scvi-tools on ``adata.uns``, a MuData inside the search for counts, a view of a backed
    AnnData in anndata's copy (whose advice gives another backed object).
    """
    if adata is not None and not isinstance(adata, AnnData):
        path = isinstance(adata, str | os.PathLike)
        hint = f"; read the file with anndata.read_h5ad({str(adata)!r})" if path else ""
        if type(adata).__name__ == "MuData":
            hint = f"; pass one modality's AnnData, e.g. mdata[{next(iter(adata.mod), 'rna')!r}]"
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__} {str(adata)[:80]!r}{hint}")
    if adata is not None:
        _refuse_backed(adata)


def _warn_if_untrained(model: Any) -> None:
    """scvi-tools raises on an untrained model's latent; an untrained baseline is legitimate, so a warning here.

    A cell-type head trained on a frozen, never-trained encoder (``train_classifier(freeze_encoder=True)`` first) makes
    ``is_trained`` True while the encoder's weights stay random: that is said too.
    """
    if not model.is_trained_:
        what = "this GeneMambaModel is not trained (model.is_trained is False)"
    elif model._random_encoder:
        what = (
            "only this GeneMambaModel's cell-type head is trained (train_classifier(freeze_encoder=True) on an "
            "encoder that was never trained)"
        )
    else:
        return
    warnings.warn(
        f"{what}: its embeddings come from randomly initialised weights. Train it first (model.train()), or load "
        "trained weights (GeneMambaModel.load, GeneMambaModel.from_pretrained); ignore this for an untrained baseline.",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def _check_finite_embeddings(z: torch.Tensor, module: torch.nn.Module) -> None:
    """Refuse non-finite cell embeddings (a diverged training run), naming the cause, instead of returning NaN."""
    bad = ~torch.isfinite(z).all(dim=1)
    if bool(bad.any()):
        weights = "finite" if all(torch.isfinite(p).all() for p in module.parameters()) else "not finite"
        raise RuntimeError(
            f"the embeddings of {int(bad.sum())} of {z.shape[0]} cells are not finite (the model's weights are "
            f"{weights}): the model diverged in training (e.g. a learning rate too high; see NonFiniteLossError) "
            "or its weights overflow in this precision. Train again from a checkpoint or with a lower lr."
        )


def _refuse_backed(adata: AnnData) -> None:
    if adata.isbacked:
        raise ValueError(
            "backed AnnData is not supported by GeneMambaModel: load it with adata.to_memory(), or build a "
            "token corpus out of core with genemamba_scvi.data.build_corpus for pre-training."
        )


def _validate_count_layer(adata: AnnData, layer: str | None) -> None:
    """Raise a clear ValueError for anything GeneMamba cannot tokenize."""
    _check_is_anndata(adata)  # (a backed AnnData too)
    where = "adata.X" if layer is None else f"layer {layer!r}"
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    refuse_non_gene_features(adata.var)
    X = count_matrix(adata, layer)
    try:
        validate_counts(X, where)
    except NotCountsError as err:
        found = find_raw_counts(adata, layer)
        if found is None:
            raise NotCountsError(err.problem, raw_counts_hint(adata, None, err.hint)) from None
        source, source_layer = found
        if source_layer is not None:
            hint = f"{source} holds them: set up with layer={source_layer!r}"
        elif source == "adata.X":
            hint = "adata.X holds them: set up with layer=None"
        else:
            hint = raw_counts_hint(adata, source)
        raise NotCountsError(err.problem, hint) from None
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise ValueError(
            f"{n_empty} of {adata.n_obs} cells have zero total counts in {where}; GeneMamba cannot rank genes of "
            "an empty cell. Remove them, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )


def _copy_of_registered(store: dict, adata: AnnData) -> bool:
    """Whether ``adata`` carries the scvi id of another AnnData registered in ``store`` (it is a copy of it)."""
    manager = store.get(adata.uns.get(_SCVI_UUID_KEY))
    return manager is not None and manager.adata is not adata


#: The start of the warning about labels of fewer than 3 cells (not given for a query, which trains nothing).
RARE_LABELS_WARNING = "fewer than 3 cells hold"


def _register_afresh(model_cls: type[BaseModelClass], adata: AnnData, setup_args: dict[str, Any]) -> None:
    """Run ``setup_anndata`` on ``adata``; a copy of a registered AnnData first gets its own scvi id.

    scvi-tools refuses copies ("Did you make a copy?") or transfers the registry, which demands the same genes in
    the same order. GeneMamba matches genes by id, so a copy (also with permuted or fewer genes) is simply set up
    again with the model's arguments. Query data need not carry the batch or label columns, nor the model's
    ``gene_id_key`` column: without it, the query's gene ids are its var_names (symbols or Ensembl ids, matched
    to the vocabulary like any ids; a poor match is refused).
    """
    args = _query_setup_args(adata, setup_args)
    if _copy_of_registered(model_cls._setup_adata_manager_store, adata):
        _assign_adata_uuid(adata, overwrite=True)
    with warnings.catch_warnings():  # scvi's "fewer than 3 cells ... may not train" on a query or a load: no training
        warnings.filterwarnings("ignore", message=RARE_LABELS_WARNING, category=UserWarning)
        warnings.filterwarnings("ignore", message="Training will be faster when sparse", category=UserWarning)
        model_cls.setup_anndata(adata, **args)


def _register_fields(
    adata: AnnData, layer: str | None, batch_key: str | None, labels_key: str | None, args: dict, kwargs: dict
) -> AnnDataManager:
    """scvi-tools' registration of the counts, the batch and the labels (arguments checked by ``setup_anndata``)."""
    fields = [
        # counts were checked exactly before; scvi's sampled check would refuse scipy sparse *arrays*
        LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
    ]
    manager = AnnDataManager(fields=fields, setup_method_args=args)
    with warnings.catch_warnings():  # "fewer than 3 cells ... may not train properly": the model never reads the batch
        warnings.filterwarnings("ignore", message=r"Category \d+ in adata.obs\['_scvi_", category=UserWarning)
        manager.register_fields(adata, **kwargs)
    if labels_key is not None:  # scvi's own warning names the label by its code ("Category 4"): by name here
        warn_rare_labels(adata.obs[labels_key], labels_key)
    return manager


def warn_rare_labels(labels: pd.Series, labels_key: str) -> None:
    """Warn about labels that fewer than 3 cells hold (named, the first 10), which a classifier may not learn."""
    sizes = labels.value_counts()
    rare = sizes[(sizes > 0) & (sizes < 3)]
    if len(rare):
        shown = ", ".join(f"{k!r} ({v})" for k, v in rare.iloc[:10].items()) + (", ..." if len(rare) > 10 else "")
        warnings.warn(
            f"{RARE_LABELS_WARNING} {len(rare)} of the {len(sizes[sizes > 0])} labels of adata.obs[{labels_key!r}]: "
            f"{shown}; a classifier may not learn them",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _set_up_again_for_load(
    model_cls: type[BaseModelClass], adata: AnnData, current: dict[str, Any], saved: dict[str, Any]
) -> None:
    """``load`` onto an AnnData the user set up already: the saved arguments win, as in scvi-tools' ``load``.

    Where the user's set-up reads counts from another place (``layer``, ``gene_id_key``), that is said. A labels or
    batch column the saved model has none of stays the user's (to fine-tune a loaded model on their labels). If the
    saved layer holds no raw counts in this AnnData while the user's does (the user set it up to say where they are),
    the user's layer is kept, with a warning, instead of an error whose advice would be the set-up already made.
    """
    args = dict(saved)
    for key in ("labels_key", "batch_key"):
        if args.get(key) is None and current.get(key) is not None:
            args[key] = current[key]
    if current == args:
        return
    changed = {k: current.get(k) for k in ("layer", "gene_id_key") if current.get(k) != args.get(k)}
    if "layer" in changed and not _holds_counts(adata, args.get("layer")) and _holds_counts(adata, current["layer"]):
        args["layer"] = current["layer"]
        message = (
            f"the saved model reads raw counts from layer={saved.get('layer')!r}, which holds none in this AnnData; it "
            f"reads them as this AnnData was set up: layer={current['layer']!r}"
        )
    elif changed:
        message = (
            f"this AnnData was set up with {changed}; the saved model was set up with "
            f"{ {k: args.get(k) for k in changed} } and reads its cells that way (as scvi-tools' load sets up an "
            "AnnData again with the saved arguments)"
        )
    else:
        message = None
    _register_afresh(model_cls, adata, args)
    if message:
        warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def _holds_counts(adata: AnnData, layer: str | None) -> bool:
    """Whether ``adata`` holds raw counts in ``layer`` (``None``: ``X``); a matrix of zeros holds none.

    (A placeholder ``X`` of zeros beside a counts layer passed as counts: a model saved reading ``X`` and loaded
    onto such an AnnData then refused every cell as empty, advising to filter them all; backed probe, session 28.)
    """
    if layer is not None and layer not in adata.layers:
        return False
    matrix = count_matrix(adata, layer)
    try:
        validate_counts(matrix, "counts")
    except NotCountsError:
        return False
    values = matrix.data if hasattr(matrix, "data") and not isinstance(matrix, np.ndarray) else matrix
    return bool(np.any(np.asarray(values)))


def _query_setup_args(adata: AnnData, setup_args: dict[str, Any], missing_labels_ok: bool = False) -> dict[str, Any]:
    """A model's set-up arguments for ``adata``: obs / var columns it lacks dropped (see :func:`_register_afresh`).

    With ``missing_labels_ok`` (a saved model loaded onto cells to embed or predict) a labels or batch column with
    missing values is dropped too, as scvi-tools' ``load`` allows missing labels.
    """
    args = dict(setup_args)
    for key in ("batch_key", "labels_key"):
        column = args.get(key)
        if column is not None and (column not in adata.obs or (missing_labels_ok and adata.obs[column].isna().any())):
            args[key] = None
    if args.get("gene_id_key") is not None and args["gene_id_key"] not in adata.var:
        args["gene_id_key"] = None
    return args


def _check_model_layer(adata: AnnData, layer: str | None) -> None:
    """Refuse a backed AnnData, or one without the layer a model reads, saying where to put its counts."""
    _refuse_backed(adata)  # before the search for counts, which cannot read a backed file
    if layer is not None and layer not in adata.layers:
        where = f"adata.layers[{layer!r}]"
        example = _copy_counts_example(adata, layer, where)
        raise ValueError(
            f"This model was set up to read raw counts from {where}; this AnnData has no such layer (layers: "
            f"{list(adata.layers.keys())}). Put its raw counts there"
            + (f", e.g. {example}." if example else " (neither its layers, adata.X nor adata.raw hold raw counts).")
        )


#: Guards the bookkeeping of :func:`_query_for_this_call` (calls of one model from several threads).
_QUERY_LOCK = threading.Lock()
#: ``(model id, id(adata))`` -> calls running with that query AnnData.
_QUERY_CALLS: dict[tuple[str, int], int] = {}
#: model id -> ``{uuid: (id(adata), the class-store manager it added (weak) or None, added to the instance store)}``:
#: registrations that calls with a query added, dropped once a later query's call ends and no call still uses them.
_QUERY_ENTRIES: dict[str, dict[str, tuple[int, weakref.ref | None, bool]]] = {}
#: ``id(adata)`` -> ``[calls of any model running with it, the scvi-tools keys it carried before the first]``.
_QUERY_KEPT_KEYS: dict[int, list] = {}
#: ids of deleted models whose registrations are still to be dropped (:func:`release_when_deleted`).
_RELEASED: collections.deque[tuple[type, str]] = collections.deque()


@contextlib.contextmanager
def _query_for_this_call(model: BaseModelClass, adata: AnnData | None) -> Iterator[None]:
    """Keep at most the latest query AnnData registered with ``model`` once its call ends (and any still in use).

    scvi-tools keeps every AnnData a model was ever given in class-level stores, so a service embedding one request
    after another kept each request's matrix alive (serving probe: 30 requests of 50 cells, +247 MB; 800 of 3 cells,
    +85 MB, growing without end). The latest query stays registered, as in scvi-tools (``get_anndata_manager``,
    ``view_anndata_setup`` and a second call on it work); an earlier one's registrations are dropped when no call of
    this model still uses it (threads). A setting the user gave the same AnnData in the class store before the call
    (its own ``setup_anndata``) is put back after it: the query's set-up with the model's arguments replaced it.
    So are the scvi-tools columns and manager id another model's set-up wrote into it (:func:`_scvi_keys_of`), once
    the last call of any model using that AnnData ends.
    """
    if not isinstance(adata, AnnData) or adata is model.adata:
        yield
        return
    cls_store = type(model)._setup_adata_manager_store
    inst_store = type(model)._per_instance_manager_store.setdefault(model.id, {})
    call = (model.id, id(adata))
    with _QUERY_LOCK:
        _drop_released()
        cls_before, inst_before = dict(cls_store), set(inst_store)
        if id(adata) not in _QUERY_KEPT_KEYS:
            _QUERY_KEPT_KEYS[id(adata)] = [0, None if adata.is_view else _scvi_keys_of(adata)]
        _QUERY_KEPT_KEYS[id(adata)][0] += 1
        _QUERY_CALLS[call] = _QUERY_CALLS.get(call, 0) + 1
    try:
        yield
    finally:
        with _QUERY_LOCK:
            _QUERY_CALLS[call] -= 1
            if not _QUERY_CALLS[call]:
                del _QUERY_CALLS[call]
            kept = _QUERY_KEPT_KEYS[id(adata)]
            kept[0] -= 1
            if not kept[0]:
                del _QUERY_KEPT_KEYS[id(adata)]
                if kept[1]:
                    _put_back_scvi_keys(adata, kept[1])
            entries = _QUERY_ENTRIES.setdefault(model.id, {})
            for uuid, manager in list(cls_store.items()):
                if manager.adata is not adata:
                    continue
                if uuid in cls_before and cls_before[uuid] is not manager:  # the user's own set-up: back
                    cls_store[uuid] = cls_before[uuid]
                elif uuid not in cls_before:
                    entries[uuid] = (id(adata), weakref.ref(manager), uuid not in inst_before)
            for uuid, manager in list(inst_store.items()):
                if manager.adata is adata and uuid not in inst_before and uuid not in entries:
                    entries[uuid] = (id(adata), None, True)
            for uuid, (owner, added, in_inst) in list(entries.items()):
                if owner != id(adata) and (model.id, owner) not in _QUERY_CALLS:  # an earlier query, idle
                    _drop_entry(cls_store, uuid, added)
                    if in_inst:
                        inst_store.pop(uuid, None)
                    del entries[uuid]


def _drop_entry(cls_store: dict, uuid: str, added: weakref.ref | None) -> None:
    """Drop a query's class-store registration, unless the user set that AnnData up since (its entry is theirs)."""
    if added is not None and cls_store.get(uuid) is added() is not None:
        del cls_store[uuid]


def release_when_deleted(model: BaseModelClass) -> None:
    """When ``model`` is garbage-collected, drop what scvi-tools' class-level stores hold for it alone.

    Its per-instance store (its own AnnData's manager and its queries') and the class-store entries its latest query
    added, unless the user set that AnnData up since: a sweep training model after model in one process kept every
    deleted model's queries alive (sweep probe, session 28: 2 AnnData a model). The entries ``setup_anndata`` made
    stay (scvi-tools' design: a new model may be built on that AnnData without setting it up again), so an AnnData
    copied and set up for each model lives as long as the process, as with every scvi-tools model.

    The finalizer may run inside the garbage collector at any allocation, also one under :data:`_QUERY_LOCK` in this
    thread (review: a deadlock), so it only queues the model; the queue is emptied by the next query call or model.
    """
    with _QUERY_LOCK:
        _drop_released()
    weakref.finalize(model, _RELEASED.append, (type(model), model.id))


def _drop_released() -> None:
    """Drop the registrations of the deleted models queued by their finalizers (call under :data:`_QUERY_LOCK`)."""
    while _RELEASED:
        model_cls, model_id = _RELEASED.popleft()
        model_cls._per_instance_manager_store.pop(model_id, None)
        for uuid, (_owner, added, _in_inst) in _QUERY_ENTRIES.pop(model_id, {}).items():
            _drop_entry(model_cls._setup_adata_manager_store, uuid, added)


def _scvi_keys_of(adata: AnnData) -> dict[str, Any]:
    """The scvi-tools set-up an AnnData carries: its ``obs["_scvi_*"]`` columns and ``uns["_scvi_manager_uuid"]``.

    A query's set-up with a GeneMamba model's arguments rewrites them (``_scvi_batch`` and ``_scvi_labels`` to 0):
    another model set up on the same AnnData (an scVI beside GeneMamba, the usual comparison) would then train on
    those zeros without a word, as its training reads the columns and does not check the manager id (sweep probe,
    session 28). They are kept here (small integer columns) and put back after the call.
    """
    kept: dict[str, Any] = {c: adata.obs[c].copy() for c in adata.obs.columns if str(c).startswith("_scvi_")}
    if kept and _MANAGER_UUID_KEY in adata.uns:
        kept[_MANAGER_UUID_KEY] = adata.uns[_MANAGER_UUID_KEY]
    return kept


def _put_back_scvi_keys(adata: AnnData, kept: dict[str, Any]) -> None:
    """Undo a query's set-up of the scvi-tools keys :func:`_scvi_keys_of` kept (where the cells are still those)."""
    columns = {k: v for k, v in kept.items() if k != _MANAGER_UUID_KEY}
    if any(not column.index.equals(adata.obs_names) for column in columns.values()):
        return
    for name, column in columns.items():
        adata.obs[name] = column
    if _MANAGER_UUID_KEY in kept:
        adata.uns[_MANAGER_UUID_KEY] = kept[_MANAGER_UUID_KEY]


def _register_query(model_cls: type[BaseModelClass], adata: AnnData, setup_args: dict[str, Any]) -> None:
    """Set up a query AnnData with the model's arguments, with errors that say what a query must hold.

    A query needs no labels or batches to be embedded or predicted (it may lack those obs columns, and scvi would
    warn about categories of fewer than 3 cells in a small query); it must hold raw counts where the model reads them.
    """
    args = {**setup_args, "labels_key": None, "batch_key": None}
    layer = args.get("layer")
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    _check_model_layer(adata, layer)
    try:
        _register_afresh(model_cls, adata, args)  # (no "fewer than 3 cells" warnings: a query is no training set)
    except NotCountsError as err:  # its advice (layer=...) is for set-up; a query reads the set-up layer
        example = _copy_counts_example(adata, layer, where) or f"put them in {where}"
        raise ValueError(
            f"{err.problem}; GeneMamba needs raw counts. This model was set up to read {where}, so a query "
            f"AnnData must hold its raw counts there too (e.g. {example})."
        ) from None


def _check_model_counts(adata: AnnData, layer: str | None) -> None:
    """:func:`_validate_count_layer` for a model's data: the place it reads is fixed, so its fix is to refill it.

    ``setup_anndata``'s advice (``layer=...``) does not apply once a model exists; the usual cause is a scanpy step
    (``sc.pp.normalize_total``, ``sc.pp.log1p``) run in place on the counts after set-up.
    """
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    try:
        _validate_count_layer(adata, layer)
    except NotCountsError as err:
        example = _copy_counts_example(adata, layer, where)
        refill = f"put them back ({example})" if example else f"put the raw counts back in {where}"
        raise NotCountsError(
            err.problem,
            f"this model reads {where}, which no longer holds them (changed after setup_anndata, e.g. by "
            f"sc.pp.normalize_total / sc.pp.log1p in place): {refill}, and next time keep the counts in a layer "
            "(adata.layers['counts'] = adata.X.copy()) before normalising",
        ) from None


def _copy_counts_example(adata: AnnData, layer: str | None, where: str) -> str | None:
    """``"<where> = <where this AnnData holds raw counts>"``, for a query whose set-up place lacks them."""
    found = find_raw_counts(adata, layer)
    if found is None:
        return None
    source = found[0]
    return f"{where} = {source}" + ("" if source.startswith("adata.raw") else ".copy()")


def _refuse_setup_kwargs(kwargs: dict[str, Any]) -> None:
    """``setup_anndata``'s extra keywords reach scvi's ``register_fields``, which takes transfer settings only."""
    if kwargs and "source_registry" not in kwargs:
        raise TypeError(
            f"GeneMambaModel.setup_anndata() got unexpected keyword arguments {sorted(kwargs)}; it takes layer, "
            "batch_key, labels_key and gene_id_key. GeneMamba reads only the counts: it is not conditioned on "
            "covariates or size factors, and train_classifier needs every cell labelled (no unlabeled_category: "
            "train on the labelled cells, predict the others)."
        )


def _positions(indices: Sequence[int] | None, n_obs: int) -> np.ndarray:
    """Integer positions of checked ``indices`` (all cells for ``None``, a boolean mask's true entries)."""
    if indices is None:
        return np.arange(n_obs)
    idx = np.asarray(indices)
    if idx.dtype.kind == "b":
        return np.flatnonzero(idx)
    return idx.astype(np.int64) if idx.size == 0 else idx


def _check_indices(indices: Sequence[int] | None, n_obs: int) -> None:
    """Refuse ``indices`` that are not positions (or a boolean mask) of the AnnData's cells, naming the bad ones."""
    if indices is None:
        return
    idx = np.asarray(indices)
    if idx.dtype.kind == "b":
        if idx.shape != (n_obs,):
            raise IndexError(f"a boolean mask as indices needs one entry per cell ({n_obs}), not shape {idx.shape}")
        return
    if idx.size == 0:
        return
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integer positions of cells (0 to {n_obs - 1}), not {idx.dtype} values")
    bad = idx[(idx < -n_obs) | (idx >= n_obs)]
    if bad.size:
        raise IndexError(
            f"{bad.size} of the {idx.size} indices are outside the AnnData's {n_obs} cells (0 to {n_obs - 1}), "
            f"e.g. {bad[:5].tolist()}"
        )


def _shallow_copy_for_writing(adata: AnnData) -> AnnData:
    """An AnnData sharing ``adata``'s matrices but holding copies of ``obs``, ``var`` and ``raw.var``.

    anndata's ``write_h5ad`` turns string columns into categoricals *in place* (its default, and the only way
    it writes an object column with NaN or a pandas ``"string"`` column); writing this copy instead leaves the
    caller's data frames as they were, and copies no matrix.
    """
    out = AnnData(
        X=adata.X,
        obs=_writable_frame(adata.obs),
        var=_writable_frame(adata.var),
        uns=adata.uns,
        obsm=adata.obsm,
        varm=adata.varm,
        layers=adata.layers,
        obsp=adata.obsp,
        varp=adata.varp,
    )
    if adata.raw is not None:
        out.raw = AnnData(X=adata.raw.X, var=_writable_frame(adata.raw.var), varm=adata.raw.varm)
    return out


def _writable_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose pandas ``"string"`` columns and string columns with missing values are categoricals.

    anndata converts string columns to categoricals only where values repeat; a column of unique strings with a
    missing value, or a pandas ``"string"`` column, it cannot write otherwise.
    """
    out = df.copy()
    for key in out.columns:
        col = out[key]
        if isinstance(col.dtype, pd.StringDtype) or (
            col.dtype == object and col.isna().any() and pd.api.types.infer_dtype(col, skipna=True) == "string"
        ):
            out[key] = pd.Categorical(col.astype(object).where(col.notna(), None))
    return out
