"""Small real data sets shipped with the package (offline; nothing is downloaded).

The files live under ``genemamba_scvi/_resources`` (see ``SOURCES.md`` there for provenance):

- a 559-cell human sample with raw UMI counts (celltypist 1.7.1),
- Ensembl id <-> gene symbol tables (GENCODE v44 and org.Hs.eg.db 3.16.0),
- GO biological-process (2022) and KEGG (2011) gene sets in GMT format (gene symbols).

:func:`load_pbmc68k_counts` adds 700 labelled PBMCs from the copy of ``pbmc68k_reduced`` that ships with
scanpy (counts recovered from its log-normalised values).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from genemamba_scvi._resources import resource_path
from genemamba_scvi.data.gene_ids import load_gene_id_table

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "GENE_SET_FILES",
    "gene_set_path",
    "load_celltypist_sample",
    "load_gene_id_table",
    "load_gene_sets",
    "load_pbmc68k_counts",
    "resource_path",
]

GENE_SET_FILES: dict[str, str] = {
    "go_bp": "gene_sets/go_bp_human_2022.gmt",
    "kegg": "gene_sets/kegg_human_2011.gmt",
}
"""Names accepted by :func:`gene_set_path` / :func:`load_gene_sets` and their files."""

_SAMPLE_FILE = "celltypist_sample_559cells_counts.h5ad"


def load_celltypist_sample() -> AnnData:
    """Load the 559-cell human sample with raw counts.

    559 cells x 32,786 genes of raw integer UMI counts (CSR, float32) with gene symbols in
    ``var_names`` and no labels; about 1,840 detected genes per cell. It is the sample matrix that
    ships inside celltypist 1.7.1 (``celltypist/data/samples/sample_cell_by_gene.csv``).

    Returns
    -------
    A new :class:`~anndata.AnnData` each call, with the raw counts in ``X`` and a copy of them in
    ``layers["counts"]``.

    Examples
    --------
    >>> from genemamba_scvi.datasets import load_celltypist_sample
    >>> adata = load_celltypist_sample()
    >>> adata.shape
    (559, 32786)
    """
    import anndata

    adata = anndata.read_h5ad(resource_path(_SAMPLE_FILE))
    adata.layers["counts"] = adata.X.copy()
    return adata


def gene_set_path(name: Literal["go_bp", "kegg"]) -> Path:
    """Path of an embedded gene-set collection in GMT format.

    Parameters
    ----------
    name
        ``"go_bp"``: 5,233 GO biological-process sets of 15-500 genes (GO 2022-07-01, org.Hs.eg.db
        3.16.0); ``"kegg"``: 223 KEGG pathways (2011-03-15 snapshot; ids only, names not shipped).
        Genes are human gene symbols.

    Returns
    -------
    Path to a plain-text ``.gmt`` file (tab-separated: set name, description, genes...).
    """
    if name not in GENE_SET_FILES:
        raise ValueError(f"unknown gene-set collection {name!r}; choose one of {sorted(GENE_SET_FILES)}")
    return resource_path(GENE_SET_FILES[name])


def load_gene_sets(name: Literal["go_bp", "kegg"]) -> dict[str, list[str]]:
    """Load an embedded gene-set collection.

    Parameters
    ----------
    name
        ``"go_bp"`` or ``"kegg"`` (see :func:`gene_set_path`).

    Returns
    -------
    Mapping of set name to its gene symbols (file order, duplicates removed).
    """
    from genemamba_scvi.data.gene_sets import read_gmt

    return read_gmt(gene_set_path(name))


def load_pbmc68k_counts() -> AnnData:
    """700 labelled PBMCs with integer counts recovered from scanpy's ``pbmc68k_reduced``.

    ``scanpy.datasets.pbmc68k_reduced()`` ships inside scanpy (no download). Its ``.raw`` holds
    ``log1p`` of library-size-normalised expression of 765 genes, stored to 3 decimals. Each cell's
    smallest non-zero value corresponds to one UMI, so ``counts = round(expm1(x) / min_nonzero(expm1(x)))``
    recovers integer counts (largest rounding residual on this file: 0.11). Only these 765 genes exist,
    so every cell has 183-409 expressed genes: good for annotation tests and tutorials, not a substitute
    for a full transcriptome.

    Returns
    -------
    AnnData with integer counts in ``X`` and ``layers["counts"]`` (CSR, float32), labels in
    ``obs["bulk_labels"]`` (10 PBMC types) and the original ``obs`` columns.
    """
    import numpy as np
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp
    from anndata import AnnData

    ref = sc.datasets.pbmc68k_reduced()
    raw = ref.raw.to_adata()
    x = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    e = np.expm1(x.astype(np.float64))
    unit = np.where(e > 0, e, np.inf).min(axis=1, keepdims=True)
    counts = np.rint(e / unit)
    out = AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=ref.obs.copy(),
        var=pd.DataFrame(index=raw.var_names.copy()),
    )
    out.layers["counts"] = out.X.copy()
    return out
