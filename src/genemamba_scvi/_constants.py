"""Names shared across the package: minibatch tensor keys, the special tokens of the vocabulary, the obsm key.

Standard library only, so that any layer (data, loaders, module, pre-training) can import it.
"""

from __future__ import annotations

__all__ = [
    "CLS_ID",
    "CLS_TOKEN",
    "LATENT_KEY",
    "LENGTHS_KEY",
    "MASK_ID",
    "MASK_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TOKENS_KEY",
]

#: ``adata.obsm`` key of the cell embeddings (``get_latent_representation``), as the docs and the CLI write it.
LATENT_KEY = "X_genemamba"
#: Minibatch key of the ``[batch, L]`` int64 token ids (right-padded with ``PAD_ID``).
TOKENS_KEY = "tokens"
#: Minibatch key of the ``[batch]`` int64 numbers of real tokens per cell.
LENGTHS_KEY = "lengths"

PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
MASK_TOKEN = "<mask>"
#: The special tokens, in token-id order (genes follow from id ``len(SPECIAL_TOKENS)``).
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, CLS_TOKEN, MASK_TOKEN)
PAD_ID = SPECIAL_TOKENS.index(PAD_TOKEN)
CLS_ID = SPECIAL_TOKENS.index(CLS_TOKEN)
MASK_ID = SPECIAL_TOKENS.index(MASK_TOKEN)
