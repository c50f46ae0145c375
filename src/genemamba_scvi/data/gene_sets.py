"""Gene sets (GMT files) as lists of vocabulary token ids, for the pathway loss and pathway metrics."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .gene_ids import warn_if_case_only
from .vocab import GeneVocab

__all__ = ["check_gene_sets_source", "gene_sets_to_token_ids", "read_gmt", "split_gene_sets"]

#: the GMT collections shipped with the package, by the name ``gene_sets=`` takes
SHIPPED_GENE_SETS = ("go_bp", "kegg")


def check_gene_sets_source(gene_sets: object) -> None:
    """Refuse a ``gene_sets`` string or path that is neither a shipped collection nor an existing file.

    Checked even where the sets are not read (``gamma=0``), so that a mistyped path is not silent.
    """
    if isinstance(gene_sets, str | os.PathLike) and not (
        (isinstance(gene_sets, str) and gene_sets in SHIPPED_GENE_SETS) or os.path.isfile(gene_sets)
    ):
        raise ValueError(
            f"gene_sets={os.fspath(gene_sets)!r} is neither a shipped collection {SHIPPED_GENE_SETS} nor a GMT file; "
            "pass one of those, a path to a .gmt file, or a {name: [genes]} mapping"
        )


def read_gmt(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a GMT file (gzip-compressed if the name ends in ``.gz``).

    Each line is tab-separated: set name, description, then the genes. Empty lines are skipped, empty gene
    fields ignored and repeated genes within a set kept once (first occurrence).

    Parameters
    ----------
    path
        The ``.gmt`` or ``.gmt.gz`` file.

    Returns
    -------
    Mapping of set name to its genes, in file order.

    Raises
    ------
    ValueError
        If a line has fewer than two fields (name and description) or a set name repeats; the message names
        the file and line.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    sets: dict[str, list[str]] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ValueError(
                    f"{path}:{lineno}: a GMT line needs at least a set name and a description separated by tabs, "
                    f"got {line[:80]!r}"
                )
            name = fields[0].strip()
            if not name:
                raise ValueError(f"{path}:{lineno}: empty gene-set name")
            if name in sets:
                raise ValueError(f"{path}:{lineno}: gene set {name!r} appears twice")
            genes = [g.strip() for g in fields[2:]]
            sets[name] = list(dict.fromkeys(g for g in genes if g))
    return sets


def gene_sets_to_token_ids(
    sets: Mapping[str, Sequence[str]], vocab: GeneVocab, min_size: int = 2
) -> dict[str, np.ndarray]:
    """Map gene sets to vocabulary token ids.

    Genes are resolved like :meth:`GeneVocab.match` (symbols or Ensembl ids, version suffixes, case,
    symbol <-> Ensembl tables); genes not in the vocabulary are dropped. When most of the genes found match only with
    their case ignored (human sets on a model of mouse symbols, or mouse-style sets on a human model), a warning says
    so.

    Parameters
    ----------
    sets
        Mapping of set name to genes (e.g. from :func:`read_gmt`).
    vocab
        The vocabulary.
    min_size
        Sets with fewer distinct tokens after mapping are dropped.

    Returns
    -------
    Mapping of set name to a sorted ``int64`` array of distinct token ids (set order kept).
    """
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    genes = list(dict.fromkeys(g for members in sets.values() for g in members))
    tokens = vocab.lookup(genes)
    warn_if_case_only(
        vocab,
        [str(g) for g in genes],
        tokens,
        "gene-set genes",
        "they are read as the genes of that name of another species' naming (human sets on mouse symbols, or mouse "
        "sets on a human model), not checked orthologues",
    )
    ids = dict(zip(genes, tokens.tolist()))
    out: dict[str, np.ndarray] = {}
    for name, members in sets.items():
        toks = np.unique(np.fromiter((ids[g] for g in members), dtype=np.int64, count=len(members)))
        toks = toks[toks >= 0]
        if toks.size >= min_size:
            out[name] = toks
    return out


def split_gene_sets(
    sets: Mapping[str, object], held_out_fraction: float = 0.2, seed: int = 0
) -> tuple[dict[str, object], dict[str, object]]:
    """Randomly split gene sets into a training part and a held-out part (e.g. for pathway evaluation).

    The split depends only on the set names, ``held_out_fraction`` and ``seed`` (not on the order of
    ``sets``).

    Parameters
    ----------
    sets
        Mapping of set name to anything (gene lists or token-id arrays).
    held_out_fraction
        Fraction of sets held out, in ``[0, 1)``; ``round(fraction * n_sets)`` sets are held out.
    seed
        Seed of the random permutation.

    Returns
    -------
    ``(train, held_out)``: two mappings that partition ``sets``, each in the original order.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    names = sorted(sets)
    n_held = round(held_out_fraction * len(names))
    perm = np.random.default_rng(seed).permutation(len(names))
    held = {names[i] for i in perm[:n_held].tolist()}
    train = {k: v for k, v in sets.items() if k not in held}
    held_out = {k: v for k, v in sets.items() if k in held}
    return train, held_out
