"""Data layer: gene vocabulary, count validation and gene medians, rank tokenisation, gene sets.

numpy / scipy / anndata only (no torch model code).
"""

from .corpus import Manifest, TokenCorpus, build_corpus
from .gene_sets import gene_sets_to_token_ids, read_gmt, split_gene_sets
from .normalize import GeneMedianAccumulator, compute_gene_medians, validate_counts
from .tokenize import fallback_median, published_tokenize, rank_tokenize
from .vocab import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, GeneMatch, GeneVocab, strip_ensembl_version

__all__ = [
    "CLS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "GeneMatch",
    "GeneMedianAccumulator",
    "GeneVocab",
    "Manifest",
    "TokenCorpus",
    "build_corpus",
    "compute_gene_medians",
    "fallback_median",
    "gene_sets_to_token_ids",
    "published_tokenize",
    "rank_tokenize",
    "read_gmt",
    "split_gene_sets",
    "strip_ensembl_version",
    "validate_counts",
]
