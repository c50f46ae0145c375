"""Pure-PyTorch GeneMamba network code (optional mamba-ssm kernels, imported lazily).

Nothing here imports scvi-tools, AnnData or data code, so it runs on a GPU box with only torch
(+ the mamba-ssm / causal-conv1d kernels).
"""

from genemamba_scvi.nn.bimamba import (
    BiMambaBlock,
    PackedCells,
    bipack,
    merge_directions,
    merge_packed,
    pack_cells,
    reversal_index,
    reversal_index_packed,
    reverse_sequences,
)
from genemamba_scvi.nn.config import GeneMambaConfig
from genemamba_scvi.nn.encoder import MAMBA_SSM_MAX_CALL_ELEMENTS, GeneMambaEncoder
from genemamba_scvi.nn.heads import ClassifierHead, MaskedLMHead
from genemamba_scvi.nn.losses import (
    IGNORE_INDEX,
    PathwayInfoNCE,
    mask_tokens,
    masked_lm_loss,
    next_token_loss,
    supervised_contrastive_loss,
)
from genemamba_scvi.nn.mamba2 import Mamba2Mixer, RMSNorm, RMSNormGated
from genemamba_scvi.nn.pooling import pack_tokens, pool_hidden, pool_packed, unpack_hidden
from genemamba_scvi.nn.ssd import (
    INSTALL_HINT,
    causal_conv1d_available,
    causal_conv1d_torch,
    mamba_ssm_available,
    resolve_backend,
    ssd_chunked,
    ssd_sequential,
)

__all__ = [
    "IGNORE_INDEX",
    "INSTALL_HINT",
    "MAMBA_SSM_MAX_CALL_ELEMENTS",
    "BiMambaBlock",
    "ClassifierHead",
    "GeneMambaConfig",
    "GeneMambaEncoder",
    "Mamba2Mixer",
    "MaskedLMHead",
    "PackedCells",
    "PathwayInfoNCE",
    "RMSNorm",
    "RMSNormGated",
    "bipack",
    "causal_conv1d_available",
    "causal_conv1d_torch",
    "mamba_ssm_available",
    "mask_tokens",
    "masked_lm_loss",
    "merge_directions",
    "merge_packed",
    "next_token_loss",
    "pack_cells",
    "pack_tokens",
    "pool_hidden",
    "pool_packed",
    "resolve_backend",
    "reversal_index",
    "reversal_index_packed",
    "reverse_sequences",
    "ssd_chunked",
    "ssd_sequential",
    "supervised_contrastive_loss",
    "unpack_hidden",
]
