"""GeneMambaConfig: every encoder and objective setting of GeneMamba, with its default, in one place.

Modelled on mamba-ssm's ``MambaConfig``: the encoder, its Bi-Mamba blocks, the module and the model are
built from one :class:`GeneMambaConfig` passed down, instead of repeating the settings as parameter lists.
Standard library and numpy only, so that :mod:`genemamba_scvi.nn` keeps importing nothing but torch (importing this
module still runs ``genemamba_scvi.nn``'s ``__init__``, and so imports torch).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["ENCODER_FIELDS", "MODEL_ARG_FIELDS", "GeneMambaConfig", "check_choice"]


def _internal(default: Any) -> Any:
    """A setting that is not a :class:`~genemamba_scvi.model.GeneMambaModel` argument (not saved in its config.json)."""
    return field(default=default, metadata={"model_arg": False})


def _objective(default: Any) -> Any:
    """A setting of the module's objective (not of the encoder)."""
    return field(default=default, metadata={"encoder": False})


def d_model_step(headdim: int, expand: int) -> int:
    """The smallest step of ``d_model`` whose ``expand * d_model`` splits into heads of ``headdim``."""
    return headdim // math.gcd(headdim, expand)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ValueError` naming the setting ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_count(name: str, value: Any, least: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer >= ``least``; else :class:`ValueError` naming the setting ``name``.

    Booleans, floats (``2.5`` or ``8.0``) and strings are refused rather than truncated or compared as text.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class GeneMambaConfig:
    """Settings of the GeneMamba encoder and its pre-training objective.

    Attributes
    ----------
    d_model
        Width: size of the token embeddings, of every layer's output and of the cell embedding (the
        published GeneMamba uses 512).
    n_layers
        Number of Bi-Mamba blocks (the published GeneMamba uses 24; 0 gives the bag-of-genes baseline).
    d_state, d_conv, expand, headdim, chunk_size, ngroups
        Mamba-2 mixer settings (``mamba_ssm.Mamba2`` names).
    bidirectional
        Bi-Mamba (default) or the unidirectional (causal) ablation.
    merge
        How the two directions are merged: ``"gate"`` (default), ``"concat"``, ``"mean"`` or ``"sum"``.
    shared_merge
        One merge layer shared by all blocks (the published layout) instead of one per block.
    block
        ``"prenorm"`` (default), ``"official"`` (published layer, no norm) or ``"official_identity"``.
    backend
        ``"auto"``, ``"torch"`` or ``"mamba_ssm"``.
    pooling
        ``"mean"`` over real tokens or ``"cls"`` (position 0; refused where that state never sees the genes:
        ``bidirectional=False``, ``n_layers=0``, ``block="official_identity"``).
    norm_eps
        RMSNorm epsilon.
    tie_lm_head
        Tie the masked-gene head to the token embedding.
    mask_prob
        Masking rate of the masked-gene objective.

    Examples
    --------
    >>> cfg = GeneMambaConfig(d_model=64, n_layers=2)
    >>> GeneMambaConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    d_model: int = 512
    n_layers: int = 24
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    chunk_size: int = 256
    bidirectional: bool = True
    merge: Literal["gate", "mean", "sum", "concat"] = "gate"
    shared_merge: bool = False
    block: Literal["prenorm", "official", "official_identity"] = "prenorm"
    backend: Literal["auto", "torch", "mamba_ssm"] = "auto"
    pooling: Literal["mean", "cls"] = "mean"
    ngroups: int = _internal(1)
    norm_eps: float = _internal(1e-5)
    tie_lm_head: bool = _objective(True)
    mask_prob: float = _objective(0.15)

    def __post_init__(self) -> None:
        """Refuse impossible sizes and rates now, naming the setting (not as a ZeroDivisionError, or never)."""
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "chunk_size", "ngroups", "n_layers"):
            value = check_count(name, getattr(self, name), least=0 if name == "n_layers" else 1)
            object.__setattr__(self, name, value)  # a plain int (a numpy one would not be JSON-able in to_dict)
        for name in ("bidirectional", "shared_merge", "tie_lm_head"):  # "false" would be a true string
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))  # a numpy bool (from a grid of settings)
        for name in ("mask_prob", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        for name, hint in typing.get_type_hints(type(self)).items():  # merge, block, backend, pooling
            if typing.get_origin(hint) is Literal:
                check_choice(name, getattr(self, name), typing.get_args(hint))
        blind = (
            "a causal scan (bidirectional=False) reads nothing after it" if not self.bidirectional
            else "no layer (n_layers=0) mixes tokens" if self.n_layers == 0
            else "layers that return their input (block='official_identity') mix no tokens"
            if self.block == "official_identity" else None
        )  # fmt: skip
        if self.pooling == "cls" and blind:
            raise ValueError(
                f"pooling='cls' takes the state of the <cls> token at position 0, and {blind}: it never sees the "
                "cell's genes, so every cell would get the same embedding; use pooling='mean'"
            )

    # ------------------------------------------------------------------ dict round trip
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self, *, model_args_only: bool = False) -> dict[str, Any]:
        """The settings as a plain (JSON-able) dict.

        Parameters
        ----------
        model_args_only
            Only the settings that are :class:`~genemamba_scvi.model.GeneMambaModel` arguments (the keys
            of a saved model's ``config.json``, so that older versions of this package read it).

        Returns
        -------
        dict
            ``{name: value}``.
        """
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not model_args_only or f.metadata.get("model_arg", True)
        }

    @classmethod
    def split_dict(cls, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split ``data`` into the config's settings and everything else.

        Returns
        -------
        tuple
            ``(settings, rest)``, two dicts.
        """
        names = set(cls.field_names())
        known = {k: v for k, v in data.items() if k in names}
        rest = {k: v for k, v in data.items() if k not in names}
        return known, rest

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, unknown: Literal["raise", "ignore"] = "raise") -> GeneMambaConfig:
        """Build a config from a dict (e.g. :meth:`to_dict`'s output); missing settings take their defaults.

        Parameters
        ----------
        data
            ``{name: value}``.
        unknown
            ``"raise"`` (default): a key that is not a setting raises :class:`ValueError` naming it;
            ``"ignore"``: such keys are dropped.

        Returns
        -------
        GeneMambaConfig
            The config.
        """
        if unknown not in ("raise", "ignore"):
            raise ValueError(f"unknown must be 'raise' or 'ignore', got {unknown!r}")
        known, rest = cls.split_dict(data)
        if rest and unknown == "raise":
            raise ValueError(
                f"unknown GeneMambaConfig setting(s) {sorted(rest)}; the settings are {list(cls.field_names())}"
            )
        return cls(**known)

    def replace(self, **changes: Any) -> GeneMambaConfig:
        """A copy with some settings changed; an unknown setting raises :class:`TypeError` naming it."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise TypeError(f"unexpected GeneMamba setting(s) {unknown}; the settings are {list(self.field_names())}")
        return dataclasses.replace(self, **changes)

    def encoder_dict(self) -> dict[str, Any]:
        """The encoder's settings (everything but the objective's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("encoder", True)}


#: Names of the encoder settings.
ENCODER_FIELDS: tuple[str, ...] = tuple(GeneMambaConfig().encoder_dict())
#: Names of the settings that are :class:`~genemamba_scvi.model.GeneMambaModel` arguments.
MODEL_ARG_FIELDS: tuple[str, ...] = tuple(GeneMambaConfig().to_dict(model_args_only=True))
