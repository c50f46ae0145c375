"""What each training run of a model was asked to do and what it did: ``model.train_runs`` (saved with the model).

``model.history`` holds the losses; a methods section also needs the arguments (epochs, learning rate, batch size,
gene sets, precision, seed), which scvi-tools does not keep. Each finished or interrupted :meth:`train`,
:meth:`train_classifier` or :meth:`pretrain` appends one JSON-able dict, written to ``extra.json`` by ``save`` and
read back by ``load``.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from genemamba_scvi import __version__

#: Names in a method's ``locals()`` that are not arguments to record (``trainer_kwargs`` / ``kwargs`` are merged in).
_SKIPPED = frozenset({"self", "trainer_kwargs", "kwargs"})


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON.

    Numbers, strings, short lists and dicts as they are; an array, a long list or mapping, a non-finite number, a
    callback or any other object by a short description (never the data itself).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # (JSON has no NaN or inf)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return f"<array of shape {tuple(value.shape)}>"
    if depth >= 3:
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping):
        if len(value) > 20:
            return f"<mapping of {len(value)} items>"
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > 20:
            return f"<{type(value).__name__} of {len(value)} items>"
        return [jsonable(v, depth + 1) for v in value]
    return f"<{type(value).__name__}>"  # a callback, a logger, a profiler: its class


def start_record(method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A run's record before it starts: the method, its arguments as the user passed them, the seed and versions."""
    import scvi
    import torch

    given = {k: v for k, v in args.items() if k not in _SKIPPED}
    given.update(args.get("trainer_kwargs") or {})
    given.update(args.get("kwargs") or {})
    if isinstance(given.get("gene_sets"), Mapping):  # {name: genes}: the count, not the genes (GO-BP: 5,233 sets)
        given["gene_sets"] = f"<mapping of {len(given['gene_sets'])} gene sets>"
    return {
        "id": uuid.uuid4().hex[:12],
        "method": method,
        "started_utc": _now(),
        "args": {k: jsonable(v) for k, v in given.items()},
        "scvi_settings_seed": jsonable(scvi.settings.seed),
        "genemamba_scvi_version": __version__,
        "torch_version": torch.__version__,
    }


def finish_record(record: dict[str, Any], trainer: Any, n_train: int | None, n_val: int | None, status: str) -> dict:
    """``record`` with what the run did: status, epochs and steps, cells, device and precision."""
    out = dict(record, status=status, finished_utc=_now())
    if trainer is not None:
        out["epochs_run"] = int(trainer.current_epoch)
        out["steps"] = int(trainer.global_step)
        out["precision"] = str(getattr(trainer, "precision", None))
        try:
            out["device"] = str(trainer.strategy.root_device)
            out["devices"] = int(trainer.num_devices)
        except Exception:  # a strategy without one root device: the record goes without it
            pass
    if n_train is not None:
        out["n_cells"] = {"train": int(n_train), "validation": int(n_val or 0)}
    return out


def runs_from_json(value: Any) -> list[dict[str, Any]]:
    """The runs read from ``extra.json`` (none for models saved before they were kept)."""
    return [dict(r) for r in value] if isinstance(value, list) else []
