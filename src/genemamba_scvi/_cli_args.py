"""argparse types of the ``genemamba`` command's options: numbers refused by argparse, naming the option."""

from __future__ import annotations

import argparse
from typing import Any


def _number(convert: type, ok: Any, bound: str) -> Any:
    """An argparse type: ``convert(text)`` where ``ok(value)``; refused by argparse, naming the option, otherwise."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' * (convert is int)}number") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


count = _number(int, lambda v: v >= 1, ">= 1")
positive = _number(float, lambda v: 0 < v < float("inf"), "a number > 0")
nonnegative = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
seed = _number(int, lambda v: 0 <= v < 2**32, f"from 0 to {2**32 - 1}")
share = _number(float, lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")


def devices(text: str) -> int | str | list[int]:
    """``--devices``: ``auto``, a number of devices, or a comma-separated list of device indices (``0,2``)."""
    if text == "auto":
        return text
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be auto, a number of devices or indices such as 0,1; got {text}"
        ) from None
    if len(parts) == 1 and parts[0] >= 1:
        return parts[0]
    if len(parts) > 1 and min(parts) >= 0 and len(set(parts)) == len(parts):
        return parts
    raise argparse.ArgumentTypeError(f"must be auto, a number of devices >= 1 or distinct indices; got {text}")


def held_out(text: str) -> float | int:
    """``--validation-size``: a share of the cells (``0 < x < 1``) or a number of cells (a whole number >= 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a share in (0, 1) or a whole number of cells >= 1, got {text}")
