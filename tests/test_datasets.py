"""Embedded data: loaders, files identical to shared/data, provenance."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.sparse as sp

from genemamba_scvi import datasets

FILES = [
    "celltypist_sample_559cells_counts.h5ad",
    "genes/gencode_v44_gene_id2name.csv",
    "genes/human_genes_orghs_2022.tsv",
    "gene_sets/go_bp_human_2022.gmt",
    "gene_sets/kegg_human_2011.gmt",
]


def test_load_celltypist_sample():
    adata = datasets.load_celltypist_sample()
    assert adata.shape == (559, 32786)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.var_names.is_unique
    data = adata.X.data
    assert (data > 0).all() and np.array_equal(data, np.round(data))
    counts = adata.layers["counts"]
    assert counts is not adata.X and (counts != adata.X).nnz == 0
    detected = np.diff(adata.X.indptr)
    assert 1700 < detected.mean() < 2000
    assert datasets.load_celltypist_sample().X is not adata.X  # a new object each call


@pytest.mark.parametrize("relative", FILES)
def test_embedded_files_identical_to_shared(relative, shared_data):
    embedded = datasets.resource_path(relative)
    shared = shared_data / relative
    if shared.resolve() == embedded.resolve():
        pytest.skip("shared/data is not available; the fixture points at the embedded copy")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(embedded) == digest(shared)


def test_sources_md_names_every_file():
    text = datasets.resource_path("SOURCES.md").read_text()
    for relative in FILES:
        assert f"`{relative}`" in text
    assert "celltypist 1.7.1" in text and "org.hs.eg.db 3.16.0" in text


def test_gene_sets():
    for name, n in (("go_bp", 5233), ("kegg", 223)):
        path = datasets.gene_set_path(name)
        assert path.is_file() and path.suffix == ".gmt"
        sets = datasets.load_gene_sets(name)
        assert len(sets) == n
    with pytest.raises(ValueError, match=r"unknown gene-set collection 'reactome'; choose one of \['go_bp', 'kegg'\]"):
        datasets.gene_set_path("reactome")


def test_gene_id_table():
    table = datasets.load_gene_id_table()
    assert list(table.columns) == ["ensembl_id", "symbol"]
    assert not table.duplicated().any()
    assert table["ensembl_id"].str.fullmatch(r"ENSG\d{11}").all()  # no version suffixes
    pairs = set(zip(table["ensembl_id"], table["symbol"]))
    assert ("ENSG00000141510", "TP53") in pairs  # in both tables
    assert ("ENSG00000290825", "DDX11L2") in pairs  # first line of the GENCODE table
    assert ("ENSG00000204574", "ABCF1") in pairs and ("ENSG00000206490", "ABCF1") in pairs  # org.Hs, comma-joined
    assert len(table) > 62754  # more than GENCODE alone
    table.loc[0, "symbol"] = "CHANGED"
    assert datasets.load_gene_id_table().loc[0, "symbol"] != "CHANGED"  # callers get a copy
