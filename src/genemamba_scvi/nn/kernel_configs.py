"""Tuned launch configurations for the mamba-ssm Triton kernels: no minute-long first call.

mamba-ssm decorates its Triton kernels with ``triton.autotune``: the first call of each kernel for a
new key (``chunk_size``, ``hdim``, ``dstate``, the dtypes of the arguments, ...) compiles and times
every candidate configuration (up to 9) before it runs. For a Bi-Mamba forward that is about a minute
on an H100/H200, and a training step more (issue 13).

The winners depend on the GPU and the key, not on the batch, so this module

- **ships** them: ``tuned/sm<major><minor>.json`` holds the winners recorded on a GPU of that compute
  capability (``sm90.json``: an H200, for the model sizes written in its ``meta``). On a GPU of that
  capability, :func:`install_tuned_configs` puts them into each autotuner's in-memory cache before the
  first call, so a fresh process compiles one configuration per kernel and times none.
- **remembers** new ones: winners found at run time (another GPU, another key) are written to a user
  cache file (``~/.cache/genemamba_scvi/kernels/``, or ``$GENEMAMBA_KERNEL_CACHE``; ``0`` turns it off)
  by :func:`save_kernel_cache`, and read back by the next process on the same GPU model.
  ``GENEMAMBA_TUNED_KERNELS=0`` turns both off (plain autotuning, as mamba-ssm alone does).

Triton's own compilation cache (``~/.triton/cache``) then makes a second process start in seconds.
A shipped or remembered winner is used only if it is one of the kernel's own candidate configurations
(matched by block sizes, warps and stages), so a mamba-ssm upgrade that changes its candidates can never
receive a configuration it does not list; such kernels are simply autotuned again.

This module imports only the standard library and torch; Triton and mamba-ssm are looked up lazily.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("genemamba_scvi")

__all__ = [
    "autotuners",
    "export_tuned_configs",
    "install_tuned_configs",
    "kernel_cache_path",
    "save_kernel_cache",
    "shipped_configs_path",
]

#: mamba-ssm modules whose Triton kernels GeneMamba runs.
TUNER_MODULES = (
    "mamba_ssm.ops.triton.ssd_bmm",
    "mamba_ssm.ops.triton.ssd_chunk_scan",
    "mamba_ssm.ops.triton.ssd_chunk_state",
    "mamba_ssm.ops.triton.ssd_state_passing",
    "mamba_ssm.ops.triton.ssd_combined",
    "mamba_ssm.ops.triton.layer_norm",
    "mamba_ssm.ops.triton.layernorm_gated",
    "mamba_ssm.ops.triton.k_activations",
)
SHIPPED_DIR = Path(__file__).resolve().parent / "tuned"
_STATE: dict[str, Any] = {"installed": False, "known": set(), "stats": None}


def _autotuner_of(obj: Any, autotuner_cls: type) -> Any | None:
    """The ``Autotuner`` inside ``obj`` (a ``triton.heuristics`` wrapper may sit around it)."""
    for _ in range(4):
        if isinstance(obj, autotuner_cls):
            return obj
        obj = getattr(obj, "fn", None)
        if obj is None:
            return None
    return None


def autotuners() -> dict[str, Any]:
    """The Triton autotuners of the mamba-ssm kernels, by ``"<module>.<kernel>"`` (empty without Triton)."""
    try:
        from triton.runtime.autotuner import Autotuner
    except Exception:
        return {}
    out: dict[str, Any] = {}
    for module_name in TUNER_MODULES:
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except Exception:
                continue
        for name, obj in vars(module).items():
            tuner = _autotuner_of(obj, Autotuner)
            if tuner is not None:
                out[f"{module_name.rsplit('.', 1)[-1]}.{name}"] = tuner
    return out


def _describe(config: Any) -> dict[str, Any]:
    return {
        "kwargs": {k: v for k, v in sorted(config.kwargs.items())},
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        "num_ctas": getattr(config, "num_ctas", 1),
        "maxnreg": getattr(config, "maxnreg", None),
    }


def _key_to_json(key: tuple) -> list:
    return [k if isinstance(k, bool | int | float | str) or k is None else str(k) for k in key]


def _key_from_json(key: list) -> tuple:
    return tuple(key)


def _enabled() -> bool:
    """``GENEMAMBA_TUNED_KERNELS=0`` turns shipped and remembered configurations off (plain autotuning)."""
    return os.environ.get("GENEMAMBA_TUNED_KERNELS", "1").strip().lower() not in ("0", "off", "false", "no")


def _device_capability(device: torch.device | int | None = None) -> tuple[int, int] | None:
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def shipped_configs_path(device: torch.device | int | None = None) -> Path | None:
    """The shipped configuration file for the GPU's compute capability, or ``None`` if none ships."""
    cap = _device_capability(device)
    if cap is None:
        return None
    path = SHIPPED_DIR / f"sm{cap[0]}{cap[1]}.json"
    return path if path.is_file() else None


def kernel_cache_path(device: torch.device | int | None = None) -> Path | None:
    """The user cache file of run-time winners for this GPU model (``None``: no GPU, or turned off)."""
    root = os.environ.get("GENEMAMBA_KERNEL_CACHE")
    if root is not None and root.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    if not torch.cuda.is_available():
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genemamba_scvi"
    name = re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device)).strip("_").lower() or "gpu"
    return base / "kernels" / f"{name}.json"


def _read(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("genemamba_scvi: ignoring the kernel configuration file %s (%s)", path, err)
        return {}
    kernels = data.get("kernels", {}) if isinstance(data, dict) else {}
    return kernels if isinstance(kernels, dict) else {}


def _install(kernels: dict[str, list[dict[str, Any]]], tuners: dict[str, Any]) -> tuple[int, int]:
    installed = skipped = 0
    for name, entries in kernels.items():
        tuner = tuners.get(name)
        if tuner is None:
            skipped += len(entries)
            continue
        candidates = {json.dumps(_describe(c), sort_keys=True): c for c in tuner.configs}
        for entry in entries:
            config = candidates.get(json.dumps(entry.get("config"), sort_keys=True))
            if config is None:  # not one of this mamba-ssm's candidates: let Triton tune it
                skipped += 1
                continue
            key = _key_from_json(entry["key"])
            tuner.cache.setdefault(key, config)
            _STATE["known"].add((name, json.dumps(entry["key"])))
            installed += 1
    return installed, skipped


def install_tuned_configs(device: torch.device | int | None = None, force: bool = False) -> dict[str, Any]:
    """Pre-load the shipped and remembered winners into the mamba-ssm autotuners (once per process).

    Parameters
    ----------
    device
        The CUDA device whose compute capability selects the shipped file (default: the current one).
    force
        Install again even if this process already did.

    Returns
    -------
    dict
        ``{"shipped": path or None, "user_cache": path or None, "installed": n, "skipped": n}``.
    """
    if _STATE["installed"] and not force:
        return _STATE["stats"]
    stats: dict[str, Any] = {"shipped": None, "user_cache": None, "installed": 0, "skipped": 0}
    tuners = autotuners()
    if tuners and torch.cuda.is_available() and _enabled():
        for path in (shipped_configs_path(device), kernel_cache_path(device)):
            if path is None or not path.is_file():
                continue
            n_in, n_skip = _install(_read(path), tuners)
            stats["installed"] += n_in
            stats["skipped"] += n_skip
            stats["shipped" if path.parent == SHIPPED_DIR else "user_cache"] = str(path)
        logger.debug("genemamba_scvi: kernel configurations %s", stats)
    _STATE["installed"], _STATE["stats"] = True, stats
    return stats


def export_tuned_configs() -> dict[str, list[dict[str, Any]]]:
    """Every autotuner's current winners as ``{kernel: [{"key": [...], "config": {...}}]}`` (JSON-ready)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, tuner in sorted(autotuners().items()):
        entries = [{"key": _key_to_json(k), "config": _describe(c)} for k, c in tuner.cache.items()]
        if entries:
            out[name] = sorted(entries, key=lambda e: json.dumps(e["key"]))
    return out


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_kernel_cache(device: torch.device | int | None = None) -> Path | None:
    """Write winners found at run time (not shipped, not yet saved) to the user cache file.

    Returns the file written, or ``None`` when there was nothing new (or the cache is off). Never
    raises on an unwritable cache directory: it logs a warning and returns ``None``.
    """
    if not _enabled():
        return None
    path = kernel_cache_path(device)
    if path is None:
        return None
    new = {
        name: [e for e in entries if (name, json.dumps(e["key"])) not in _STATE["known"]]
        for name, entries in export_tuned_configs().items()
    }
    new = {k: v for k, v in new.items() if v}
    if not new:
        return None
    merged = _read(path) if path.is_file() else {}
    for name, entries in new.items():
        have = {json.dumps(e["key"]) for e in merged.get(name, [])}
        merged.setdefault(name, []).extend(e for e in entries if json.dumps(e["key"]) not in have)
    meta = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}
    try:
        _atomic_write_json(path, {"meta": meta, "kernels": merged})
    except OSError as err:
        logger.warning("genemamba_scvi: could not write the kernel cache %s (%s)", path, err)
        return None
    for name, entries in new.items():
        _STATE["known"].update((name, json.dumps(e["key"])) for e in entries)
    return path
