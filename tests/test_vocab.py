"""GeneVocab: specials, persistence, and matching symbols / Ensembl ids (real gene tables)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genemamba_scvi.data import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, GeneMatch, GeneVocab, strip_ensembl_version
from genemamba_scvi.datasets import load_gene_id_table

# facts from GENCODE v44 (independent of the code under test)
KNOWN = {
    "TP53": "ENSG00000141510",
    "CD3E": "ENSG00000198851",
    "MS4A1": "ENSG00000156738",
    "GAPDH": "ENSG00000111640",
    "ACTB": "ENSG00000075624",
    "CD19": "ENSG00000177455",
    "PTPRC": "ENSG00000081237",
}


def test_special_tokens_and_indexing():
    vocab = GeneVocab(["A1BG", "TP53", "CD3E"])
    assert (vocab.pad_id, vocab.cls_id, vocab.mask_id, vocab.n_special) == (0, 1, 2, 3)
    assert len(vocab) == 6
    assert vocab["A1BG"] == 3 and vocab["CD3E"] == 5
    assert vocab[PAD_TOKEN] == 0 and vocab[CLS_TOKEN] == 1 and vocab[MASK_TOKEN] == 2
    assert vocab.tokens[:4] == [PAD_TOKEN, CLS_TOKEN, MASK_TOKEN, "A1BG"]
    assert vocab.decode([5, 1]) == ["CD3E", CLS_TOKEN]
    assert "TP53" in vocab and "tp53" not in vocab
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        vocab.decode([3, -1])
    with pytest.raises(KeyError, match="'MYC' is not in the vocabulary"):
        vocab["MYC"]


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        (["A", "B", "A", "C", "C"], r"duplicated genes in vocabulary: 'A', 'C'"),
        (["A", "<mask>"], "may not be special tokens"),
        (["A", ""], "non-empty strings"),
        (["A", 3], "non-empty strings"),
    ],
)
def test_bad_vocab(genes, match):
    with pytest.raises(ValueError, match=match):
        GeneVocab(genes)


def test_from_var_names_keeps_names(sample_adata):
    vocab = GeneVocab.from_var_names(sample_adata.var_names)
    assert vocab.genes == sample_adata.var_names.tolist()
    assert vocab[sample_adata.var_names[10]] == 13
    names = sample_adata.var_names.tolist()
    names[5] = names[7]
    with pytest.raises(ValueError, match=rf"1 duplicated names, e.g. '{names[7]}'"):
        GeneVocab.from_var_names(names)


def test_json_round_trip_and_checksum(tmp_path, sample_adata):
    vocab = GeneVocab.from_var_names(sample_adata.var_names)
    path = tmp_path / "vocab.json"
    vocab.to_json(path)
    loaded = GeneVocab.from_json(path)
    assert loaded == vocab and loaded.genes == vocab.genes
    assert loaded.sha256() == vocab.sha256()
    assert len(vocab.sha256()) == 64
    assert GeneVocab.from_dict(vocab.to_dict()) == vocab
    # the checksum depends on order and content
    assert GeneVocab(vocab.genes[::-1]).sha256() != vocab.sha256()
    d = json.loads(path.read_text())
    d["genes"][0], d["genes"][1] = d["genes"][1], d["genes"][0]
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="checksum mismatch"):
        GeneVocab.from_json(path)
    with pytest.raises(ValueError, match="not a GeneMamba vocabulary"):
        GeneVocab.from_dict({"format": "something-else", "genes": ["A"]})
    with pytest.raises(ValueError, match="special tokens"):
        GeneVocab.from_dict({"genes": ["A"], "special_tokens": ["[PAD]", "[CLS]", "[MASK]"]})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GeneVocab.from_json(path)
    path.write_text('{"someone": "else"}')  # a vocab.json of another tool: the message names the file
    with pytest.raises(ValueError, match=rf"{path.name}'?: not a GeneMamba vocabulary"):
        GeneVocab.from_json(path)


def test_sha256_is_of_the_gene_list():
    import hashlib

    assert GeneVocab(["A", "B"]).sha256() == hashlib.sha256(b"A\nB").hexdigest()


def test_strip_ensembl_version():
    assert strip_ensembl_version("ENSG00000141510.12") == "ENSG00000141510"
    assert strip_ensembl_version("ensg00000141510") == "ENSG00000141510"
    assert strip_ensembl_version("ENSG00000182378.15_PAR_Y") == "ENSG00000182378_PAR_Y"
    assert strip_ensembl_version("ENSMUSG00000064370.1") == "ENSMUSG00000064370"
    assert strip_ensembl_version("TP53") is None
    assert strip_ensembl_version("RP11-34P13.7") is None


def test_match_same_names_is_identity(sample_adata):
    vocab = GeneVocab.from_var_names(sample_adata.var_names)
    m = vocab.match(sample_adata.var_names)
    assert isinstance(m, GeneMatch)
    assert m.token_ids.dtype == np.int64
    np.testing.assert_array_equal(m.token_ids, np.arange(sample_adata.n_vars) + 3)
    assert m.counts()["direct"] == sample_adata.n_vars


def test_symbols_to_ensembl_and_back():
    symbols = list(KNOWN)
    ens_vocab = GeneVocab(list(KNOWN.values()))
    m = ens_vocab.match(symbols)
    assert ens_vocab.decode(m.token_ids) == list(KNOWN.values())
    assert m.counts()["mapped"] == len(KNOWN)
    sym_vocab = GeneVocab(symbols[::-1])
    m = sym_vocab.match(list(KNOWN.values()))
    assert sym_vocab.decode(m.token_ids) == symbols


def test_versioned_ids_both_ways():
    ids = list(KNOWN.values())
    m = GeneVocab(ids).match([f"{e}.{i + 3}" for i, e in enumerate(ids)])
    np.testing.assert_array_equal(m.token_ids, np.arange(len(ids)) + 3)
    assert m.counts()["version"] == len(ids)
    versioned = GeneVocab([f"{e}.7" for e in ids])
    m = versioned.match(ids[::-1])
    np.testing.assert_array_equal(m.token_ids, np.arange(len(ids))[::-1] + 3)
    # versioned vocabulary, symbols in the data: through the table, then the version strip
    m = versioned.match(list(KNOWN))
    np.testing.assert_array_equal(m.token_ids, np.arange(len(ids)) + 3)


def test_mixed_names_and_report():
    symbols = list(KNOWN)
    vocab = GeneVocab(symbols)
    query = ["TP53", KNOWN["CD3E"] + ".11", KNOWN["MS4A1"], "gapdh", "ACTB", "NOT_A_GENE_1", "NOT_A_GENE_2"]
    m = vocab.match(query)
    assert vocab.decode(m.token_ids[:5]) == ["TP53", "CD3E", "MS4A1", "GAPDH", "ACTB"]
    assert m.token_ids[5:].tolist() == [-1, -1]
    assert m.counts() == {"direct": 2, "version": 0, "case": 1, "mapped": 2, "unmatched": 2}
    assert m.n_matched == 5 and m.overlap == pytest.approx(5 / 7)
    assert m.unmatched_names == ["NOT_A_GENE_1", "NOT_A_GENE_2"]
    report = m.report()
    assert "5 of 7 var_names matched" in report
    assert "directly:" in report and "via symbol<->Ensembl mapping:" in report
    assert "'NOT_A_GENE_1'" in report
    assert "5 of 7 vocabulary genes" in report


def test_mixed_on_real_sample(sample_adata):
    # an Ensembl vocabulary of the sample genes that map one-to-one; the data give half of them as
    # symbols, half as versioned Ensembl ids
    table = load_gene_id_table()
    n_ids = table.groupby("symbol")["ensembl_id"].nunique()
    n_syms = table.groupby("ensembl_id")["symbol"].nunique()
    sym2id = dict(zip(table["symbol"], table["ensembl_id"]))
    genes = [g for g in sample_adata.var_names if n_ids.get(g, 0) == 1 and n_syms[sym2id[g]] == 1][:4000]
    ids = [sym2id[g] for g in genes]
    vocab = GeneVocab(ids)
    query = [g if i % 2 else f"{sym2id[g]}.{i % 9 + 1}" for i, g in enumerate(genes)]
    m = vocab.match(query)
    np.testing.assert_array_equal(m.token_ids, np.arange(len(ids)) + 3)
    assert m.counts() == {"direct": 0, "version": 2000, "case": 0, "mapped": 2000, "unmatched": 0}
    # and the full sample against it: the unmatched genes are dropped, the overlap is reported
    m = vocab.match(sample_adata.var_names, min_overlap=0.1)
    assert m.n_matched == len(ids)
    assert set(m.token_ids[m.matched].tolist()) == set(range(3, 3 + len(ids)))


def test_direct_match_wins_over_mapping():
    vocab = GeneVocab([KNOWN["TP53"], "CD3E"])
    m = vocab.match([KNOWN["TP53"], "TP53", "CD3E"])
    assert m.token_ids.tolist() == [3, -1, 4]  # TP53 would map to the id already taken directly


def test_case_sensitive_mapping_wins_over_case_insensitive():
    vocab = GeneVocab([KNOWN["TP53"]])
    m = vocab.match(["tp53", "TP53"])
    assert m.token_ids.tolist() == [-1, 3]


def test_no_overlap_raises_with_examples(sample_adata):
    vocab = GeneVocab(["GENE_X1", "GENE_X2", "GENE_X3"])
    for threshold in (0.0, 0.5):  # bad-input probe (session 33): with nothing matched it said "lower min_overlap"
        with pytest.raises(ValueError, match=r"none of the 32786 var_names match the vocabulary of 3 genes") as err:
            vocab.match(sample_adata.var_names, min_overlap=threshold)
        msg = str(err.value)
        assert "'MIR1302-10'" in msg and "'GENE_X1'" in msg and "min_overlap" not in msg


def test_low_overlap_raises_then_threshold_lowered(sample_adata):
    vocab = GeneVocab(sample_adata.var_names[:100].tolist())
    with pytest.raises(ValueError, match=r"only 100 of 32786 var_names .*min_overlap is 50%"):
        vocab.match(sample_adata.var_names)
    m = vocab.match(sample_adata.var_names, min_overlap=0.001)
    assert m.n_matched == 100
    with pytest.raises(ValueError, match="min_overlap must be in"):
        vocab.match(sample_adata.var_names, min_overlap=1.5)


def test_duplicated_var_names_raise():
    vocab = GeneVocab(["TP53", "CD3E"])
    with pytest.raises(ValueError, match=r"2 duplicated names, e.g. 'TP53', 'CD3E'"):
        vocab.match(["TP53", "CD3E", "TP53", "CD3E"])


def test_two_names_same_token():
    vocab = GeneVocab([KNOWN["TP53"], KNOWN["CD3E"]])
    query = [KNOWN["TP53"] + ".1", KNOWN["TP53"] + ".2", KNOWN["CD3E"]]
    with pytest.raises(ValueError, match=r"'ENSG00000141510.1' and 'ENSG00000141510.2' -> 'ENSG00000141510'") as err:
        vocab.match(query)
    # the advice holds where the model or build_corpus matched (they take no on_collision): drop a column
    assert "Remove one column of each pair from the data" in str(err.value)
    m = vocab.match(query, on_collision="first")
    assert m.token_ids.tolist() == [3, -1, 4]
    assert m.collisions == [(query[1], query[0], KNOWN["TP53"])]
    assert "dropped, duplicate of another gene:       1" in m.report()
    with pytest.raises(ValueError, match="on_collision must be"):
        vocab.match(query, on_collision="last")


def test_lookup_allows_repeats():
    vocab = GeneVocab(["TP53", "CD3E"])
    np.testing.assert_array_equal(vocab.lookup(["TP53", KNOWN["TP53"], "xx", "cd3e", "TP53"]), [3, 3, -1, 4, 3])


def test_a_gene_held_twice_is_reported_as_a_duplicate_not_as_unknown():
    vocab = GeneVocab(["CCR7", "CD3E", "MS4A1"])
    match = vocab.match(["CCR7", "CD3E", "ENSG00000126353"], min_overlap=0.5)  # CCR7 again, by its Ensembl id
    assert match.token_ids[2] == -1
    assert match.yielded == [("ENSG00000126353", "CCR7", "CCR7")]
    report = match.report()
    assert "dropped, not in vocabulary:               0" in report
    assert "ENSG00000126353->CCR7 (kept CCR7)" in report
    alone = vocab.match(["ENSG00000126353", "CD3E"], min_overlap=0.5)  # alone, the id does map to CCR7
    assert alone.token_ids[0] == vocab.match(["CCR7"]).token_ids[0] and not alone.yielded


def test_two_current_gencode_genes_are_never_joined_through_org_hs():
    # org.Hs.eg.db lists HLA-DQA2's Ensembl ids under HLA-DQA1 and MCL1's under ADAMTSL4-AS1; GENCODE v44 holds each
    # as its own gene. A query's HLA-DQA1 counts were read as the vocabulary's HLA-DQA2, silently.
    vocab = GeneVocab(["MCL1", "HLA-DQA2", "IGHV3-29", "NPIPA1", "CD3E"])
    got = vocab.match(["ADAMTSL4-AS1", "HLA-DQA1", "IGHV3-32", "NPIPA2", "CD3E"], min_overlap=0.0)
    assert [vocab.tokens[t] if t >= 0 else None for t in got.token_ids] == [None, None, None, None, "CD3E"]
    # an Ensembl id: MCL1's id is never ADAMTSL4-AS1 (org.Hs.eg.db's link), though the vocabulary lacks MCL1
    ids = GeneVocab(["ADAMTSL4-AS1", "TP53"]).match(["ENSG00000143384.12", "ENSG00000141510"], min_overlap=0.0)
    assert ids.token_ids.tolist() == [-1, GeneVocab(["ADAMTSL4-AS1", "TP53"])["TP53"]]
    # what GENCODE does not hold as another gene still maps: a symbol absent from GENCODE (GPR75-ASB3, whose only
    # Ensembl id is ASB3's) and ids <-> symbols of one gene
    other = GeneVocab(["GPR75-ASB3", "MCL1"])
    assert other.match(["ASB3", "ENSG00000143384"], min_overlap=0.0).token_ids.tolist() == [
        other["GPR75-ASB3"],
        other["MCL1"],
    ]
    assert vocab.lookup(["HLA-DQA1", "hla-dqa2"]).tolist() == [-1, vocab["HLA-DQA2"]]


def test_a_genes_own_ensembl_id_outranks_a_case_variant_of_its_symbol():
    # user probe: the sample holds C2orf15 (146 UMIs) and an all-zero C2ORF15 column; with var_names converted to
    # Ensembl ids by GENCODE, C2orf15's id lost its token to the case variant (its counts read as zeros)
    vocab = GeneVocab(["C2orf15", "CD3E"])
    match = vocab.match(["C2ORF15", "ENSG00000273045", "CD3E"])
    assert match.token_ids.tolist() == [-1, vocab["C2orf15"], vocab["CD3E"]]
    assert match.yielded == [("C2ORF15", "ENSG00000273045", "C2orf15")]
    assert vocab.lookup(["ENSG00000273045", "c2orf15"]).tolist() == [vocab["C2orf15"]] * 2
    # a name matched through the tables is named in the report, so that each can be checked
    assert match.mapped == [("ENSG00000273045", "C2orf15")]
    assert "e.g. 'ENSG00000273045->C2orf15'" in match.report()
