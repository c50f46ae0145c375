"""Numerical precision of the public entry points: one ``precision=`` keyword, Lightning's names.

``"auto"`` (the default everywhere) is bf16 mixed precision on a CUDA GPU that supports bf16 and
float32 everywhere else (CPU results stay exactly as they were). Weights stay float32 in every mode
(mixed precision: matrix products and the mamba-ssm kernels run in bf16, norms and reductions in
float32), and embeddings are returned as float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["PRECISIONS", "inference_autocast", "resolve_precision", "training_on_gpu"]

#: Accepted spellings -> canonical Lightning precision string.
_ALIASES: dict[str | int, str] = {
    "auto": "auto",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    16: "16-mixed",
    "32-true": "32-true",
    "32": "32-true",
    32: "32-true",
    "fp32": "32-true",
}
PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true")


def resolve_precision(precision: str | int | None, on_gpu: bool) -> str:
    """Canonical precision for a run on a GPU (``on_gpu``) or not.

    Parameters
    ----------
    precision
        ``"auto"`` / ``None``, ``"bf16-mixed"`` (alias ``"bf16"``), ``"16-mixed"`` (``16``), ``"32-true"``
        (``32``, ``"32"``, ``"fp32"``).
    on_gpu
        Whether the work runs on a CUDA device.

    Returns
    -------
    str
        One of ``"bf16-mixed"``, ``"16-mixed"``, ``"32-true"``.
    """
    key = "auto" if precision is None else precision
    if isinstance(key, str):
        key = key.strip().lower()
    canonical = _ALIASES.get(key) if isinstance(key, str | int) and not isinstance(key, bool) else None
    if canonical is None:
        raise ValueError(
            f"precision={precision!r} is not supported; use one of {', '.join(map(repr, PRECISIONS))} "
            "(aliases: 'bf16', 16, 32)."
        )
    if canonical == "auto":
        if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    return canonical


def require_cuda_if_asked(
    accelerator: object, device: object = None, advice: str = "use accelerator='auto' or 'cpu'"
) -> None:
    """Refuse, naming the argument, a GPU asked for on a machine where torch sees none.

    Lightning's own error names neither the argument nor the fix.
    """
    device = str(device) if isinstance(device, torch.device) else device
    on_cpu = isinstance(device, str) and device.lower().startswith("cpu")  # a device named "cpu" wins
    asked = isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda") and not on_cpu
    named = isinstance(device, str) and device.lower().startswith("cuda")
    if (asked or named) and not torch.cuda.is_available():
        what = f"accelerator={accelerator!r}" if asked else f"device={device!r}"
        raise ValueError(
            f"{what} asks for a CUDA GPU, but torch sees none on this machine (torch.cuda.is_available() is False: "
            f"no GPU, or a CPU-only torch build); {advice}"
        )


def training_on_gpu(accelerator: str | None, devices: object = "auto") -> bool:
    """Whether Lightning will train on a CUDA GPU for these ``accelerator`` / ``devices`` arguments."""
    acc = (accelerator or "auto").lower() if isinstance(accelerator, str) else "custom"
    if acc in ("gpu", "cuda"):
        return True
    if acc != "auto" or not torch.cuda.is_available():
        return False
    return devices not in (0, "0", [], None)


@contextlib.contextmanager
def inference_autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast for a resolved ``precision`` on ``device`` (a no-op for ``"32-true"``)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
