"""The GeneMamba settings dataclass (defined in :mod:`genemamba_scvi.nn.config`, which imports only the stdlib)."""

from genemamba_scvi.nn.config import ENCODER_FIELDS, MODEL_ARG_FIELDS, GeneMambaConfig

__all__ = ["ENCODER_FIELDS", "MODEL_ARG_FIELDS", "GeneMambaConfig"]
