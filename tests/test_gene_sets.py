"""GMT reading, gene sets -> token ids, train / held-out split."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

from genemamba_scvi.data import GeneVocab, gene_sets_to_token_ids, read_gmt, split_gene_sets
from genemamba_scvi.datasets import gene_set_path, load_gene_id_table


def test_read_embedded_collections():
    kegg = read_gmt(gene_set_path("kegg"))
    assert len(kegg) == 223
    assert "GAPDH" in kegg["KEGG_hsa00010"] and "PKM" in kegg["KEGG_hsa00010"]
    go = read_gmt(gene_set_path("go_bp"))
    assert len(go) == 5233
    sizes = np.array([len(g) for g in go.values()])
    assert sizes.min() >= 15 and sizes.max() <= 500


def test_read_gmt_parsing(tmp_path):
    text = "SET_A\tdesc a\tTP53\tCD3E\tTP53\t\n\nSET_B\t\tGAPDH\r\nSET_EMPTY\tnothing\n"
    path = tmp_path / "sets.gmt"
    path.write_text(text)
    expected = {"SET_A": ["TP53", "CD3E"], "SET_B": ["GAPDH"], "SET_EMPTY": []}
    assert read_gmt(path) == expected
    gz = tmp_path / "sets.gmt.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    assert read_gmt(gz) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("SET_A\tdesc\tTP53\nSET_B_NO_TABS\n", r"sets.gmt:2: a GMT line needs at least a set name"),
        ("SET_A\tdesc\tTP53\nSET_A\tagain\tCD3E\n", r"sets.gmt:2: gene set 'SET_A' appears twice"),
        ("\tdesc\tTP53\n", r"sets.gmt:1: empty gene-set name"),
    ],
)
def test_read_gmt_errors(tmp_path, text, match):
    path = tmp_path / "sets.gmt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_gmt(path)


def test_gene_sets_to_token_ids_symbols(sample_adata):
    vocab = GeneVocab.from_var_names(sample_adata.var_names)
    sets = read_gmt(gene_set_path("kegg"))
    ids = gene_sets_to_token_ids(sets, vocab, min_size=2)
    assert 0 < len(ids) <= len(sets)
    for name, toks in ids.items():
        assert toks.dtype == np.int64
        assert np.all(np.diff(toks) > 0)  # sorted, distinct
        assert toks.min() >= 3 and toks.max() < len(vocab)
        direct = {vocab[g] for g in sets[name] if g in vocab}
        assert direct <= set(toks.tolist())
    glyco = ids["KEGG_hsa00010"]
    assert vocab["GAPDH"] in glyco
    assert set(glyco.tolist()) == {vocab[g] for g in sets["KEGG_hsa00010"] if g in vocab}
    # oxidative phosphorylation: the set says ATP6 / COX1 (NCBI symbols), the data MT-ATP6 / MT-CO1 (GENCODE)
    oxphos = sets["KEGG_hsa00190"]
    assert "ATP6" in oxphos and "MT-ATP6" not in oxphos and "ATP6" not in vocab
    assert vocab["MT-ATP6"] in ids["KEGG_hsa00190"] and vocab["MT-CO1"] in ids["KEGG_hsa00190"]


def test_gene_sets_to_token_ids_ensembl_and_min_size():
    vocab = GeneVocab(["ENSG00000141510", "ENSG00000198851", "ENSG00000111640.16"])  # TP53, CD3E, GAPDH
    sets = {
        "two": ["TP53", "cd3e", "UNKNOWN_GENE"],
        "one": ["GAPDH", "UNKNOWN_GENE"],
        "dup": ["TP53", "ENSG00000141510.3", "ENSG00000111640"],
    }
    ids = gene_sets_to_token_ids(sets, vocab, min_size=2)
    assert list(ids) == ["two", "dup"]
    assert ids["two"].tolist() == [3, 4]
    assert ids["dup"].tolist() == [3, 5]
    assert list(gene_sets_to_token_ids(sets, vocab, min_size=1)) == ["two", "one", "dup"]
    with pytest.raises(ValueError, match="min_size must be >= 1"):
        gene_sets_to_token_ids(sets, vocab, min_size=0)


def test_split_gene_sets():
    sets = {f"S{i:03d}": [f"G{i}"] for i in range(101)}
    train, held = split_gene_sets(sets, held_out_fraction=0.2, seed=0)
    assert len(held) == 20 and len(train) == 81
    assert set(train) | set(held) == set(sets) and not set(train) & set(held)
    assert list(train) == [k for k in sets if k in train]  # original order kept
    assert all(train[k] is sets[k] for k in train)
    # deterministic, independent of the input order, different for another seed
    _, again_held = split_gene_sets(dict(reversed(list(sets.items()))), 0.2, seed=0)
    assert set(again_held) == set(held)
    assert set(split_gene_sets(sets, 0.2, seed=1)[1]) != set(held)
    assert split_gene_sets(sets, 0.0)[1] == {}
    with pytest.raises(ValueError, match=r"held_out_fraction must be in \[0, 1\)"):
        split_gene_sets(sets, 1.0)


def test_unknown_collection_name_is_named(tmp_path):
    from genemamba_scvi.module import gene_set_tensors

    vocab = GeneVocab(["CD3E", "CD3D", "CD14", "LYZ"])
    with pytest.raises(ValueError, match=r"gene_sets='reactome' is neither a shipped collection \('go_bp', 'kegg'\)"):
        gene_set_tensors("reactome", vocab)
    gmt = tmp_path / "my.gmt"
    gmt.write_text("T\tdesc\tCD3E\tCD3D\nM\tdesc\tCD14\tLYZ\n")
    assert [t.tolist() for t in gene_set_tensors(gmt, vocab)] == [[3, 4], [5, 6]]  # genes from id 3 (specials)
    assert len(gene_set_tensors(str(gmt), vocab)) == 2


def test_gene_sets_that_map_to_the_same_genes_or_only_by_case_are_told():
    """Panel probe (session 29): sets that held the same genes of a small panel gave a pathway loss of exactly 0 in
    every step, silently; human sets on a model of mouse symbols matched by case with no word."""
    from genemamba_scvi.module import gene_set_tensors

    vocab = GeneVocab(["CD3E", "CD3D", "CD19", "MS4A1"])
    same = {"A": ["CD3E", "CD3D", "LCK"], "B": ["CD3E", "CD3D", "ZAP70"]}  # LCK and ZAP70 not on the panel
    with pytest.raises(ValueError, match=r"the 2 gene sets .*all hold the same genes there \(\['CD3E', 'CD3D'\]\)"):
        gene_set_tensors(same, vocab)
    assert len(gene_set_tensors({**same, "C": ["CD19", "MS4A1"]}, vocab)) == 3  # (kept: other sets contrast them)
    with pytest.raises(ValueError, match=r"none of the gene sets .*name human gene symbols: .*another species"):
        gene_set_tensors({"A": ["Ly6a", "H2-K1"], "B": ["Lyz2", "Cd8b1"]}, GeneVocab(["CD3E", "CD19"]))
    kegg = read_gmt(gene_set_path("kegg"))
    mouse = GeneVocab(sorted({g.capitalize() for members in list(kegg.values())[:20] for g in members}))
    with pytest.warns(UserWarning, match=r"gene-set genes found in the model's vocabulary match it only with their "
                      r"case ignored .*human sets on mouse symbols, or mouse sets on a human model"):  # fmt: skip
        gene_set_tensors("kegg", mouse)
    # review (session 29): a vocabulary of Ensembl ids (the published one's kind) matched mouse-style sets through the
    # symbol tables with their case ignored, and no word
    table = load_gene_id_table()
    ids = dict(zip(table["symbol"], table["ensembl_id"]))
    genes = sorted({g for members in list(kegg.values())[:20] for g in members if g in ids})
    ensembl = GeneVocab(sorted({ids[g] for g in genes}))
    mouse_sets = {name: [g.capitalize() for g in members] for name, members in list(kegg.items())[:20]}
    with pytest.warns(UserWarning, match=r"gene-set genes found in the model's vocabulary match it only with their "
                      r"case ignored \(e\.g\. [A-Z][a-z0-9]+->ENSG"):  # fmt: skip
        gene_set_tensors(mouse_sets, ensembl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the human sets on the same vocabulary: no word
        gene_set_tensors(dict(list(kegg.items())[:20]), ensembl)
