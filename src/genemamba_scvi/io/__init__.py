"""Checkpoint directories: our own format and the official GeneMamba (Hugging Face) layout.

Two formats live here.

**Our format** (used by ``GeneMambaModel.save`` / ``load``), one directory::

    config.json          model configuration (whatever the caller passes, JSON)
    model.safetensors    the state dict (tied tensors stored once, see below)
    vocab.json           the GeneVocab
    gene_medians.npy     per-gene non-zero medians (float64, optional, never pickled)
    extra.json           anything else (scvi registry, attributes, label names)
    adata.h5ad           the AnnData, only with ``save(..., save_anndata=True)``
    checksums.json       format name/version and the sha256 of every file above

Writes are atomic: everything goes into a hidden temporary sibling directory (same parent, so the
same file system), files and directory are fsync'ed, and only then is the directory renamed into
place. With ``overwrite=True`` the new directory is swapped in with one atomic
``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere: old renamed aside, new renamed in, old
deleted), so a crash at any point leaves either the complete old or the complete new model.
Only the files above are ever replaced (``adata.h5ad`` only by a save that writes it): anything else a user
keeps in the directory is hard-linked (copied where links are impossible) into the new directory before the
swap, so it survives unchanged.
Reading verifies every checksum before anything is parsed, and nothing is ever unpickled.

**Official layout** (``mineself2016/GeneMamba`` on the Hugging Face Hub and the ``MambaModel``
of ``xiamengxxx/GeneMamba``): ``config.json``, ``model.safetensors`` and ``tokenizer.json``
(GitHub: ``gene_tokenizer.json``; or ``vocab.json`` / ``vocab.txt``), optionally
``special_tokens_map.json`` and ``tokenizer_config.json``. :func:`read_official_checkpoint` maps it onto
:class:`~genemamba_scvi.nn.GeneMambaEncoder` (``block="official"``) and our :class:`GeneVocab`;
the tests fabricate official checkpoints with a writer of that layout (``tests/_official_writer.py``,
since the real weights cannot be downloaded here). A Hub repository id is looked up in the local Hugging Face
cache (:mod:`~genemamba_scvi.io._hub_cache`, offline). See ``docs/pretrained.md``.

Modules: :mod:`~genemamba_scvi.io._checkpoint` (our format), :mod:`~genemamba_scvi.io._official` (the
official reader), :mod:`~genemamba_scvi.io._files` (atomic file helpers shared by both).
"""

from genemamba_scvi.io._checkpoint import (
    ANNDATA_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EXTRA_FILE,
    MEDIANS_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from genemamba_scvi.io._official import MAMBA2_PARAMS, OfficialCheckpoint, read_official_checkpoint

__all__ = [
    "ANNDATA_FILE",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKSUMS_FILE",
    "CONFIG_FILE",
    "EXTRA_FILE",
    "MAMBA2_PARAMS",
    "MEDIANS_FILE",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "Checkpoint",
    "OfficialCheckpoint",
    "read_checkpoint",
    "read_official_checkpoint",
    "write_checkpoint",
]
