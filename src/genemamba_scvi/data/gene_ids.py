"""Human Ensembl gene id <-> gene symbol tables (embedded; GENCODE v44 and org.Hs.eg.db 3.16.0) and their lookups.

The data layer's own copy of the tables, so that :mod:`genemamba_scvi.data.vocab` matches gene ids without
importing :mod:`genemamba_scvi.datasets` (which imports the data layer: that was an import cycle).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genemamba_scvi._resources import resource_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "case_only_matches",
    "load_gene_id_table",
    "non_gene_features",
    "refuse_non_gene_features",
    "strip_ensembl_version",
    "warn_if_case_only",
]

_GENCODE_FILE = "genes/gencode_v44_gene_id2name.csv"
_ORGHS_FILE = "genes/human_genes_orghs_2022.tsv"


@functools.lru_cache(maxsize=1)
def _gene_id_tables_by_source() -> dict[str, pd.DataFrame]:
    """The two embedded id tables, cleaned (``ensembl_id``, ``symbol``), in priority order."""
    import pandas as pd

    gencode = pd.read_csv(
        resource_path(_GENCODE_FILE), header=None, names=["ensembl_id", "symbol"], dtype=str, keep_default_na=False
    )
    orghs = pd.read_csv(resource_path(_ORGHS_FILE), sep="\t", dtype=str, keep_default_na=False)
    orghs = orghs.loc[orghs["ensembl_id"] != "", ["ensembl_id", "symbol"]]
    orghs = orghs.assign(ensembl_id=orghs["ensembl_id"].str.split(",")).explode("ensembl_id")
    out = {}
    for name, table in (("gencode", gencode), ("orghs", orghs)):
        table = table.assign(ensembl_id=table["ensembl_id"].str.strip(), symbol=table["symbol"].str.strip())
        table = table[(table["ensembl_id"] != "") & (table["symbol"] != "")]
        out[name] = table.drop_duplicates(ignore_index=True)
    return out


@functools.lru_cache(maxsize=1)
def _gene_id_table_cached() -> pd.DataFrame:
    import pandas as pd

    return pd.concat(list(_gene_id_tables_by_source().values()), ignore_index=True).drop_duplicates(ignore_index=True)


def load_gene_id_table() -> pd.DataFrame:
    """Human Ensembl gene id <-> gene symbol table.

    The union of GENCODE v44 (``gencode_v44_gene_id2name.csv``, shipped in celltypist 1.7.1) and
    org.Hs.eg.db 3.16.0 (Entrez Gene 2022-09-12; one row per Ensembl id of a gene). GENCODE rows
    come first; exact duplicate pairs are dropped. Ensembl ids carry no version suffix. An id can
    have several symbols (renamed genes) and a symbol several ids (e.g. alternative haplotypes).

    Returns
    -------
    A new :class:`pandas.DataFrame` with string columns ``ensembl_id`` and ``symbol``.
    """
    return _gene_id_table_cached().copy()


# RP11-30J20.1, CTD-2050I18.2, AC012345.2, XXbac-B461K10.4: clone-based gene names (GENCODE before v31 or so)
_CLONE_RE = re.compile(r"^[A-Za-z]{1,6}[0-9A-Za-z]*(-[0-9A-Za-z]+)*\.\d+$")
# ENSG00000141510, ENSG00000141510.12, ENSMUSG..., ENSG00000182378.15_PAR_Y
_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d+)(?:\.\d+)?(_PAR_Y)?$", re.IGNORECASE)


@functools.lru_cache(maxsize=1 << 18)
def strip_ensembl_version(name: str) -> str | None:
    """Upper-case Ensembl gene id without version suffix, or ``None`` if ``name`` is not an Ensembl gene id.

    ``"ENSG00000141510.12"`` -> ``"ENSG00000141510"``; a ``_PAR_Y`` suffix is kept
    (``"ENSG00000182378.15_PAR_Y"`` -> ``"ENSG00000182378_PAR_Y"``) because it names a different locus.
    """
    m = _ENSEMBL_RE.match(name.strip())
    if m is None:
        return None
    return m.group(1).upper() + (m.group(2).upper() if m.group(2) else "")


@dataclass(frozen=True)
class _GeneTable:
    id2sym: dict[str, list[str]]
    sym2id: dict[str, list[str]]
    sym2id_lower: dict[str, list[str]]


def _build_table(ensembl_ids: Iterable[str], symbols: Iterable[str]) -> _GeneTable:
    id2sym: dict[str, list[str]] = {}
    sym2id: dict[str, list[str]] = {}
    sym2id_lower: dict[str, list[str]] = {}
    for ens, sym in zip(ensembl_ids, symbols):
        ens = ens.upper()
        id2sym.setdefault(ens, []).append(sym)
        sym2id.setdefault(sym, []).append(ens)
        lst = sym2id_lower.setdefault(sym.lower(), [])
        if ens not in lst:
            lst.append(ens)
    return _GeneTable(id2sym, sym2id, sym2id_lower)


@functools.lru_cache(maxsize=1)
def _gene_tables() -> tuple[_GeneTable, ...]:
    """Ensembl id <-> symbol dictionaries: GENCODE v44, org.Hs.eg.db, and their union (loaded once)."""
    by_source = _gene_id_tables_by_source()
    union = _gene_id_table_cached()
    return (
        _build_table(by_source["gencode"]["ensembl_id"], by_source["gencode"]["symbol"]),
        _build_table(by_source["orghs"]["ensembl_id"], by_source["orghs"]["symbol"]),
        _build_table(union["ensembl_id"], union["symbol"]),
    )


#: Under this share of gene ids a list of names is taken for something else (row numbers, probe names).
MIN_GENE_ID_SHARE = 0.2


def few_gene_ids(names: Iterable[str]) -> tuple[float, list[str]] | None:
    """``(share, up to five others)`` when under :data:`MIN_GENE_ID_SHARE` of ``names`` are gene ids, else ``None``.

    A gene id is an Ensembl gene id (any species, any version), a clone-based name of older GENCODE releases
    (``RP11-30J20.1``, ``AC012345.2``: 40% of the shipped sample's genes) or a known human gene symbol (case
    ignored). The symbol tables are loaded only when the two patterns alone leave the share below the bound.
    """
    names = [str(n) for n in names]
    other = [n for n in names if strip_ensembl_version(n) is None and not _CLONE_RE.match(n)]
    if 1.0 - len(other) / max(len(names), 1) >= MIN_GENE_ID_SHARE:
        return None
    symbols = _gene_tables()[2].sym2id_lower
    other = [n for n in other if n.strip().lower() not in symbols]
    share = 1.0 - len(other) / max(len(names), 1)
    return (share, other[:5]) if share < MIN_GENE_ID_SHARE else None


def warn_if_not_gene_ids(names: Iterable[str], where: str, column: str | None = None) -> None:
    """Warn when few of ``names`` (the var column ``column``, or the var_names) are gene ids (:func:`few_gene_ids`)."""
    found = few_gene_ids(names)
    if found is not None:
        import warnings

        from genemamba_scvi._warn import user_stacklevel

        share, other = found
        fix = "set up with gene_id_key= naming the var column of gene ids"
        if column is not None:
            fix = f"adata.var[{column!r}] (gene_id_key) holds no gene ids: name a column that does, or None"
        warnings.warn(
            f"only {100 * share:.0f}% of {where} are gene symbols or Ensembl gene ids (e.g. {other}); the model's "
            f"vocabulary is made of them, so other data, saved models and the pathway loss can match genes by these "
            f"names only: {fix}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _gencode_genes(name: str) -> frozenset[str]:
    """GENCODE v44 gene names (lower case) that ``name`` (a symbol or an Ensembl id) is; empty if GENCODE lacks it."""
    gencode = _gene_tables()[0]
    base = strip_ensembl_version(name)
    if base is not None:
        return frozenset(s.lower() for s in gencode.id2sym.get(base.removesuffix("_PAR_Y").upper(), []))
    key = name.strip().lower()
    return frozenset([key]) if key in gencode.sym2id_lower else frozenset()


@functools.lru_cache(maxsize=1 << 16)
def _distinct_genes(a: str, b: str) -> bool:
    """Whether GENCODE v44 holds ``a`` and ``b`` as two different genes (each a symbol or an Ensembl id).

    org.Hs.eg.db lists Ensembl ids of overlapping or paralogous loci under some symbols (``HLA-DQA1`` with ids of
    ``HLA-DQA2``, ``ADAMTSL4-AS1`` with ``MCL1``'s): a match through it, or through the union's extra hop, must not
    read one current gene's counts as another's. Aliases and retired symbols (absent from GENCODE) still map.
    """
    ga, gb = _gencode_genes(a), _gencode_genes(b)
    return bool(ga) and bool(gb) and ga.isdisjoint(gb)


#: Cell Ranger's column of feature kinds (``read_10x_h5``): gene rows are "Gene Expression"
FEATURE_TYPE_COLUMNS = ("feature_types", "feature_type")


def non_gene_features(var: pd.DataFrame) -> tuple[str, np.ndarray] | None:
    """``(column, mask of the gene rows)`` of features a ``feature_types`` column marks as not "Gene Expression".

    ``None`` without such a column, or when it marks only genes (antibody capture and CRISPR features are no genes).
    """
    column = next((c for c in FEATURE_TYPE_COLUMNS if c in var.columns), None)
    if column is None:
        return None
    genes = (var[column].astype(str) == "Gene Expression").to_numpy()
    return None if genes.all() else (column, genes)


#: Control features of imaging panels (Xenium's negative-control probes and codewords, MERSCOPE's blanks, CosMx's
#: negative probes): counted like genes, they would become tokens and count in the cell totals.
_CONTROL_RE = re.compile(
    r"^(NegControlProbe|NegControlCodeword|UnassignedCodeword|DeprecatedCodeword|Intergenic_Region|BLANK|Blank|"
    r"NegPrb|SystemControl|FalseCode)([_-].*|\d+)?$"
)


def warn_if_control_features(names: Iterable[str], where: str) -> None:
    """Warn when a vocabulary made of ``names`` (``where``: whose) would hold an imaging panel's control features.

    Xenium's negative-control probes and codewords, MERSCOPE's blanks and CosMx's negative probes, known by their
    names (``NegControlProbe_00001``, ``BLANK_0006``) where no ``feature_types`` column marks them: a model built on
    them takes them as genes. (A model of other genes ignores them: they then only scale a cell's total, which
    changes no rank.)
    """
    names = [str(n) for n in names]
    controls = [n for n in names if _CONTROL_RE.match(n)]
    if controls:
        import warnings

        from genemamba_scvi._warn import user_stacklevel

        warnings.warn(
            f"{len(controls)} of {where} are named as the control probes or codewords of an imaging panel (e.g. "
            f"{controls[:3]}): they are not genes, yet a model built on them takes them as genes (tokens ranked "
            "with the others). Leave them out first: "
            f"adata = adata[:, ~adata.var_names.str.match({_CONTROL_RE.pattern!r})].copy()",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def refuse_non_gene_features(var: pd.DataFrame, source: str = "adata") -> None:
    """Refuse features a ``feature_types`` column marks as other than "Gene Expression" (antibody capture, CRISPR).

    GeneMamba reads RNA counts; an antibody feature named like a gene ("CD4") took that gene's token (a direct match
    outranks the gene's own Ensembl id), and any other feature counted in the cell totals.
    """
    found = non_gene_features(var)
    if found is not None:
        column, genes = found
        by_kind = var[column].astype(str)[~genes].value_counts().to_dict()
        names = [str(g) for g in var.index[~genes][:5]]
        raise ValueError(
            f"{source}.var[{column!r}] marks {int((~genes).sum())} of {genes.size} features as other than 'Gene "
            f"Expression' ({by_kind}; e.g. {names}): GeneMamba reads RNA counts, and such features would be read as "
            f"genes. Keep the gene rows: adata = adata[:, adata.var[{column!r}] == 'Gene Expression'].copy()"
        )


#: Matches of genes with their case ignored that, above half of the matched genes, get a warning (mouse symbols).
CASE_ONLY_WARN_MIN = 10


def case_only_matches(vocab: Any, names: Sequence[str], token_ids: np.ndarray) -> np.ndarray:
    """Which of ``names`` reached their token of ``vocab`` (``token_ids``, -1: none) only with their case ignored.

    ``vocab``: a :class:`~genemamba_scvi.data.vocab.GeneVocab`. A name the vocabulary does not hold as it is,
    matched to a gene of the same name in another case (``Cd3e`` -> ``CD3E``), or, for a vocabulary of Ensembl ids, a
    symbol that is no human symbol as written but is one with its case ignored (``Cd3e`` -> ``ENSG00000198851``):
    mouse symbols read as human genes.
    """
    import numpy as np

    symbols = _gene_tables()[2]
    tokens = vocab.tokens
    out = np.zeros(len(names), dtype=bool)
    for i, (name, tok) in enumerate(zip(names, np.asarray(token_ids).tolist())):
        if tok < 0 or name in vocab:
            continue
        if tokens[tok].upper() == name.upper():
            out[i] = True
        elif strip_ensembl_version(name) is None and name.strip() not in symbols.sym2id:
            out[i] = name.strip().lower() in symbols.sym2id_lower
    return out


def warn_if_case_only(vocab: Any, names: Sequence[str], token_ids: np.ndarray, what: str, reading: str) -> None:
    """Warn when most of ``names`` found in ``vocab`` (``token_ids``) reach it only with their case ignored.

    ``what``: whose names (e.g. "genes of this AnnData"); ``reading``: what the match means for them. Mouse symbols
    read as human genes (or human sets on a mouse model) should be known to the user (:func:`case_only_matches`).
    """
    import numpy as np

    case = case_only_matches(vocab, names, token_ids)
    n_case, n_found = int(case.sum()), int((np.asarray(token_ids) >= 0).sum())
    if n_case < CASE_ONLY_WARN_MIN or 2 * n_case <= n_found:
        return
    import warnings

    from genemamba_scvi._warn import user_stacklevel

    tokens = vocab.tokens
    examples = ", ".join(f"{names[i]}->{tokens[token_ids[i]]}" for i in np.flatnonzero(case)[:3])
    warnings.warn(
        f"{n_case} of the {n_found} {what} found in the model's vocabulary match it only with their case ignored "
        f"(e.g. {examples}): {reading}",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
