"""Checks and settings of the cell-type head: label codes, class weights, the split and the monitored metric.

The head is trained by :meth:`GeneMambaModel.train_classifier <genemamba_scvi.model.GeneMambaModel.train_classifier>`;
what is checked here is what would make its numbers mean less than they seem without an error: a cell type with no
training cells, placeholder labels trained as cell types, validation cells the head was trained on in an earlier
call, and an early-stopping metric that is never logged (found only after an epoch of training).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from genemamba_scvi._constants import LATENT_KEY
from genemamba_scvi._warn import user_stacklevel as _user_stacklevel

#: Label values that read as "no label" (compared lower-cased, stripped): trained, they become a cell type.
PLACEHOLDER_LABELS = frozenset({"", "nan", "none", "na", "n/a", "unknown", "unassigned", "unlabeled", "unlabelled"})


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


def warn_on_label_values(labels_key: str, codes: np.ndarray, names: Sequence[Any]) -> None:
    """Warn about labels that read as missing ("Unknown", "nan") and about columns of about one cell per label."""
    placeholders = [n for n in names if str(n).strip().lower() in PLACEHOLDER_LABELS]
    if placeholders:
        first = placeholders[0]
        warnings.warn(
            f"adata.obs[{labels_key!r}] has the label(s) {placeholders}, which read as 'no label'; the head learns "
            f"them as cell types of their own. To annotate those cells, fine-tune on the others (ref = "
            f"adata[adata.obs[{labels_key!r}] != {first!r}].copy()) and predict them.",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
    counts = np.bincount(codes, minlength=len(names))
    if len(names) > 10 and (counts == 1).sum() >= len(names) / 2:
        warnings.warn(
            f"adata.obs[{labels_key!r}] has {len(names)} labels for {codes.size} cells, {(counts == 1).sum()} of them "
            "of a single cell: is it the cell-type column (and not a per-cell value)?",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def check_classifier_split(
    codes: np.ndarray,
    names: Sequence[Any],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    obs_names: pd.Index,
    head_cells: set[str] | None,
    test_idx: np.ndarray | None = None,
    head_positions: np.ndarray | None = None,
) -> None:
    """Warn when a cell type has no training cells, or validation or test cells trained the same head before.

    Cells are known by name (``head_cells``: a name survives subsetting and reloading); a name several cells share
    (lanes of one barcode) tells nothing, so those cells are known by position instead (``head_positions``: the last
    run's training cells, given while they name the same cells).
    """
    in_train = np.bincount(codes[np.asarray(train_idx, dtype=np.int64)], minlength=len(names))
    absent = [(names[k], int(n)) for k, n in enumerate(np.bincount(codes, minlength=len(names))) if in_train[k] == 0]
    if absent:
        shown = ", ".join(f"{name!r} ({n} cell{'s' * (n > 1)})" for name, n in absent[:10])
        warnings.warn(
            f"cell type(s) with no training cells in this split: {shown}, all in the validation (or test) cells. "
            "The head has an output for them that is never trained. Train on every cell (train_size=1.0), or drop "
            "or merge such rare types before fine-tuning.",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
    if not head_cells:
        return
    leaked = []
    named = ~np.asarray(obs_names.duplicated(keep=False))  # a name two cells share (lanes of one barcode) tells nothing
    for what, idx in (("validation", val_idx), ("test", test_idx if test_idx is not None else [])):
        idx = np.asarray(idx, dtype=np.int64)
        cells = np.asarray(obs_names[idx])
        seen = int((np.isin(cells, list(head_cells)) & named[idx]).sum())
        if head_positions is not None:
            seen += int((np.isin(idx, head_positions) & ~named[idx]).sum())
        if seen:
            leaked.append(f"{seen} of the {len(cells)} {what} cells")
    if leaked:
        warnings.warn(
            f"{' and '.join(leaked)} of this run trained this head in an earlier train_classifier call with another "
            "split (other train_size / validation_size, another seed, or the AnnData's cells changed since), so its "
            "validation metrics and a score of predict() on model.test_indices are optimistic; a new head (another "
            "hidden=) starts clean",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def obs_digest(obs_names: pd.Index) -> str:
    """A digest of the cells' names in order: split positions name the same cells only under the same digest."""
    return hashlib.sha256("\n".join(map(str, obs_names)).encode()).hexdigest()


def requested_sizes(n_obs: int, train_size: Any, validation_size: Any) -> tuple[int, int] | None:
    """Training and validation cells that ``train_size`` / ``validation_size`` ask for.

    scvi-tools' rule, before its last-batch adjustment; ``None`` for sizes scvi-tools refuses (it says why when
    training starts).
    """
    try:
        t = 0.9 if not train_size else float(train_size)
        n_train = math.ceil(t * n_obs)
        return n_train, (n_obs - n_train if validation_size is None else math.floor(n_obs * float(validation_size)))
    except (TypeError, ValueError):
        return None


def split_to_json(model: Any) -> dict[str, Any] | None:
    """The last run's train / validation / test cells and the head's (if another run's), for ``save``."""
    if model.train_indices is None:
        return {"lost": True} if getattr(model, "_split_lost", False) else None
    if getattr(model, "_split_digest", None) != obs_digest(model.adata.obs_names):
        return {"lost": True}  # the AnnData's cells changed since the split was drawn: its positions name others
    last = [np.asarray(i, dtype=np.int64) for i in (model.train_indices, model.validation_indices, model.test_indices)]
    out: dict[str, Any] = {"obs_digest": model._split_digest, "last": [i.tolist() for i in last]}
    head = getattr(model, "_head_split", None)
    if head is not None:
        same = all(np.array_equal(a, b) for a, b in zip(head["indices"], last))
        out["head"] = {"sizes": list(head["sizes"]), "indices": None if same else [i.tolist() for i in head["indices"]]}
        cells = getattr(model, "_head_cells", None) or set()
        if len(cells) > len(head["indices"][0]):  # trained on more cells than its last split's (another split before)
            out["head"]["cells"] = np.flatnonzero(model.adata.obs_names.isin(list(cells))).tolist()
    return out


def split_from_json(model: Any, saved: dict[str, Any] | None) -> None:
    """Restore :func:`split_to_json`'s cells on a loaded model, if it is loaded with the same cells (obs_names)."""
    if not saved:
        return
    if saved.get("lost") or saved.get("obs_digest") != obs_digest(model.adata.obs_names):
        # other cells (a query, or the cells reordered): the saved positions would name others; validation_indices
        # stay None, and train_classifier says so if it trains this head further
        model._split_lost = True
        return
    model._split_digest = saved["obs_digest"]
    last = [np.asarray(i, dtype=np.int64) for i in saved["last"]]
    model.train_indices, model.validation_indices, model.test_indices = last
    head = saved.get("head")
    if head is not None:
        indices = last if head["indices"] is None else [np.asarray(i, dtype=np.int64) for i in head["indices"]]
        model._head_split = {"indices": indices, "sizes": tuple(head["sizes"])}
        cells = np.asarray(head.get("cells", indices[0]), dtype=np.int64)
        model._head_cells = set(model.adata.obs_names[cells])


def reused_head_split(model: Any, same_head: bool, train_size: Any, validation_size: Any) -> list | None:
    """The split a continued head trained on, to train it further on the same cells (the same sizes asked for)."""
    head = getattr(model, "_head_split", None)
    asked = requested_sizes(model.adata.n_obs, train_size, validation_size)
    if not same_head or head is None or asked is None or tuple(head["sizes"]) != asked:
        return None
    if sum(len(i) for i in head["indices"]) != model.adata.n_obs:
        return None
    return [np.asarray(i, dtype=np.int64) for i in head["indices"]]


_HEAD_ATTRIBUTES = ("label_names_", "labels_key_", "classifier_hidden_", "_head_cells", "_head_split")


def check_head_args(hidden: Any, trainer_kwargs: dict[str, Any]) -> None:
    """Refuse a head width that is not a positive integer and the pre-training objective's settings."""
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1):
        raise ValueError(f"hidden must be a positive number of units (or None: a linear head), got {hidden!r}")
    if pretraining_only := sorted(set(trainer_kwargs) & {"gene_sets", "gamma", "objective"}):
        raise TypeError(
            f"train_classifier got {pretraining_only}: settings of the pre-training objective, which train() "
            "takes; fine-tuning trains the classification loss only"
        )


def classifier_labels(model: Any, labels_key: str | None) -> tuple[str, np.ndarray, list[Any]]:
    """``(labels_key, codes, names)`` of the cells' labels in ``model.adata``.

    Refused when there are none to learn (no key, a missing column, a single label); warned about when some read as
    "no label".
    """
    from genemamba_scvi.model._utils import _check_obs_key, warn_rare_labels

    if labels_key is None:
        raise ValueError("train_classifier needs labels: pass labels_key= or set it in setup_anndata.")
    _check_obs_key(model.adata, labels_key, "labels_key")
    if labels_key != model._setup_arg("labels_key"):  # (set-up's column was told at setup_anndata)
        warn_rare_labels(model.adata.obs[labels_key], labels_key)
    codes, names = _label_codes(model.adata.obs[labels_key])
    if len(names) < 2:
        raise ValueError(f"adata.obs[{labels_key!r}] has a single label ({names[0]!r}); nothing to classify.")
    warn_on_label_values(labels_key, codes, names)
    return labels_key, codes, names


def set_head(model: Any, labels_key: str, names: list[Any], hidden: int | None, dropout: float) -> bool:
    """Make the model's head the one to train; return whether it is the trained head, continued.

    The same cell types and width train the earlier head further (its dropout set to ``dropout``), as ``train()``
    continues the encoder; otherwise a new head, whose split bookkeeping starts empty.
    """
    same_head = (
        model.module.classifier is not None
        and model.label_names_ is not None
        and list(model.label_names_) == list(names)
        and model.classifier_hidden_ == hidden
    )
    model.label_names_, model.labels_key_, model.classifier_hidden_ = names, labels_key, hidden
    if same_head:
        for layer in model.module.classifier.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = float(dropout)
    else:
        model.module.add_classifier(len(names), hidden=hidden, dropout=dropout)
        model._head_cells, model._head_split = set(), None
    warn_if_head_split_lost(model, same_head)
    return same_head


def head_state(model: Any) -> dict[str, Any]:
    """The cell-type head as it is (module, label names, split), to put back if a run fails before training it."""
    return {
        "classifier": model.module.classifier,
        "n_labels": getattr(model.module, "n_labels", None),
        **{name: getattr(model, name, None) for name in _HEAD_ATTRIBUTES},
    }


def restore_head(model: Any, state: dict[str, Any]) -> None:
    """Put back :func:`head_state` (a failed ``train_classifier`` left a new, untrained head that predict would use)."""
    model.module.classifier = state["classifier"]
    model.module.n_labels = state["n_labels"]
    for name in _HEAD_ATTRIBUTES:
        setattr(model, name, state[name])


def warn_if_head_split_lost(model: Any, same_head: bool) -> None:
    """Warn when a head is trained further but the split it was trained on could not be restored."""
    if same_head and getattr(model, "_head_split", None) is None and getattr(model, "_split_lost", False):
        warnings.warn(
            "this head was trained on a split that is not known any more (the model was saved after its AnnData's "
            "cells changed, or loaded with other cells): the validation cells of this run may include cells it "
            "trained on",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def warn_if_embedding_stale(
    model: Any,
    freeze_encoder: bool,
    key: str = LATENT_KEY,
    cause: str = "train_classifier fine-tuned the encoder too (freeze_encoder=False)",
    other_fix: str = ", or pass freeze_encoder=True to keep the encoder",
) -> None:
    """After ``cause`` changed the encoder, an embedding stored before in ``adata.obsm`` is another model's: say so.

    Only where that embedding was this model's: its first rows are those ``get_latent_representation()`` last gave
    for the model's cells (or, for a model that never embedded them, it has the model's width). A sweep storing its
    best model's embedding and training other models on the same AnnData was told every time that the best one's
    was no longer "this model's" (sweep probe, session 28).
    """
    adata = model.adata
    if not freeze_encoder and key in adata.obsm and _holds_embedding_of(model, adata.obsm[key]):
        warnings.warn(
            f"{cause}, so adata.obsm[{key!r}], computed before, is no longer this model's embedding (nor are "
            f"neighbours / UMAP / clusters from it): recompute it with model.get_latent_representation(){other_fix}",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _holds_embedding_of(model: Any, stored: Any) -> bool:
    """Whether ``stored`` (an ``obsm`` entry) looks like ``model``'s embedding of its cells (see the caller)."""
    try:
        stored = np.asarray(stored)
    except (TypeError, ValueError):
        return False
    rows = getattr(model, "_embedded_rows", None)
    if rows is None:
        return stored.ndim == 2 and stored.shape[1] == model.module.encoder.d_model
    same_shape = stored.ndim == 2 and stored.shape[1:] == rows.shape[1:] and len(stored) >= len(rows)
    return same_shape and np.allclose(stored[: len(rows)], rows, rtol=1e-5, atol=1e-6)


def warn_if_stale_after_train(model: Any, was_trained: bool, key: str = LATENT_KEY) -> None:
    """After ``train`` moved the encoder: a cell-type head trained before, and an embedding stored before, are stale.

    The head (:meth:`train_classifier`) was fitted to the encoder's earlier embeddings; ``predict`` would go on
    giving confident labels from it (user probe: 0.57 -> 0.27 of the training cells right after 3 more epochs).
    """
    if model.module.classifier is not None:
        labels_key, hidden = getattr(model, "labels_key_", None), getattr(model, "classifier_hidden_", None)
        labels = f" (of {labels_key!r})" if labels_key else ""
        # the call that goes on with this head: its labels (the default is set-up's labels_key, maybe another
        # column or none: annotation probe, session 29) and its hidden width
        again = ", ".join([f"labels_key={labels_key!r}"] * bool(labels_key) + [f"hidden={hidden}"] * bool(hidden))
        warnings.warn(
            f"this model's cell-type head{labels} was trained on the encoder as it was before this train() run, "
            "which changed the encoder under it: predict() now uses a head that no longer matches its embeddings. "
            f"Run train_classifier({again}) again (it goes on with the same head and split)",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
    if was_trained:
        warn_if_embedding_stale(model, False, key, cause="train() changed the encoder", other_fix="")


def note_head(model: Any, random_encoder: bool, train_size: Any, validation_size: Any) -> None:
    """After a head trained: whether the encoder stays random, the cells it trained on, and its split."""
    model._random_encoder = random_encoder
    trained_on = model.adata.obs_names[np.asarray(model.train_indices, dtype=np.int64)]
    model._head_cells = (model._head_cells or set()) | set(trained_on)
    indices = [np.asarray(i) for i in (model.train_indices, model.validation_indices, model.test_indices)]
    model._head_split = {"indices": indices, "sizes": requested_sizes(model.adata.n_obs, train_size, validation_size)}


def head_train_positions(model: Any) -> np.ndarray | None:
    """The last head run's training positions while they name the same cells (its split's digest matches), else None."""
    split = getattr(model, "_head_split", None)
    if not split or getattr(model, "_split_digest", None) != obs_digest(model.adata.obs_names):
        return None
    return np.asarray(split["indices"][0], dtype=np.int64)
