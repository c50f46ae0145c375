"""The GeneMamba settings dataclass (defined in :mod:`genemamba_scvi.nn.config`).

``nn/config.py`` itself needs only the standard library and numpy, but importing it runs ``genemamba_scvi.nn``'s
``__init__``, which imports torch: code that must stay torch-free (the CLI's argument parser) cannot import it.
"""

from genemamba_scvi.nn.config import ENCODER_FIELDS, MODEL_ARG_FIELDS, GeneMambaConfig

__all__ = ["ENCODER_FIELDS", "MODEL_ARG_FIELDS", "GeneMambaConfig"]
