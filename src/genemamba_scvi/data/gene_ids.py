"""Human Ensembl gene id <-> gene symbol tables (embedded; GENCODE v44 and org.Hs.eg.db 3.16.0).

The data layer's own copy of the tables, so that :mod:`genemamba_scvi.data.vocab` matches gene ids without
importing :mod:`genemamba_scvi.datasets` (which imports the data layer: that was an import cycle).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from genemamba_scvi._resources import resource_path

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_gene_id_table"]

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
