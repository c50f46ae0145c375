"""Token corpus: streamed build over several real .h5ad files, exactly-once, crash/resume, mismatch errors."""

from __future__ import annotations

import json
import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import genemamba_scvi.data.corpus as corpus_mod
from genemamba_scvi.data.corpus import Manifest, TokenCorpus, build_corpus, resolve_inputs
from genemamba_scvi.data.normalize import compute_gene_medians
from genemamba_scvi.data.tokenize import rank_tokenize
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.datasets import load_celltypist_sample, load_gene_id_table

EMPTY_ROW = 50  # file 0 gets an all-zero cell inserted here


def _ensembl_names(symbols) -> list[str]:
    """Symbols -> Ensembl ids where the GENCODE/org.Hs.eg.db pair is one-to-one (else keep the symbol)."""
    t = load_gene_id_table()
    t = t[t["ensembl_id"].str.startswith("ENSG")]
    n_ids = t.groupby("symbol")["ensembl_id"].nunique()
    n_syms = t.groupby("ensembl_id")["symbol"].nunique()
    t = t[t["symbol"].map(n_ids).eq(1) & t["ensembl_id"].map(n_syms).eq(1)].drop_duplicates("symbol")
    mapping = dict(zip(t["symbol"], t["ensembl_id"]))
    return [mapping.get(g, g) for g in symbols]


@pytest.fixture(scope="module")
def sample():
    adata = load_celltypist_sample()
    del adata.layers["counts"]
    return adata


@pytest.fixture(scope="module")
def files(sample, tmp_path_factory):
    """Three real files: symbols (+ one empty cell), permuted genes, Ensembl ids (+ a dense 'counts' layer)."""
    d = tmp_path_factory.mktemp("h5ad")
    a0 = sample[:200].copy()
    X0 = sp.vstack([a0.X[:EMPTY_ROW], sp.csr_matrix((1, a0.n_vars), dtype=a0.X.dtype), a0.X[EMPTY_ROW:]]).tocsr()
    a0 = anndata.AnnData(X0, var=a0.var.copy())
    a1 = sample[200:400].copy()
    a1 = a1[:, np.random.default_rng(1).permutation(a1.n_vars)].copy()
    a2 = sample[400:].copy()
    a2.var_names = _ensembl_names(a2.var_names)
    paths = [d / "a_symbols.h5ad", d / "b_permuted.h5ad", d / "c_ensembl.h5ad"]
    for a, p in zip((a0, a1, a2), paths):
        a.write_h5ad(p)
    return paths


def _direct(paths, vocab: GeneVocab, medians: np.ndarray, max_genes: int) -> dict[tuple[int, int], tuple]:
    """(file, row) -> tokens of every non-empty cell, tokenized in memory file by file."""
    out = {}
    for fi, p in enumerate(paths):
        a = anndata.read_h5ad(p)
        tok = vocab.match(list(a.var_names), min_overlap=0.0).token_ids  # (the corpus's vocabulary: expressed genes)
        col_med = np.where(tok >= 0, medians[np.clip(tok, 0, None)], np.nan)
        tokens, lengths = rank_tokenize(sp.csr_matrix(a.X), tok, col_med, max_genes=max_genes)
        for r in range(a.n_obs):
            if lengths[r]:
                out[(fi, r)] = tuple(tokens[r, : lengths[r]].tolist())
    return out


def _from_corpus(root) -> dict[tuple[int, int], tuple]:
    c = TokenCorpus(root, verify=True)
    cells = np.arange(c.n_cells)
    fi, rows = c.cell_ids(cells)
    tokens, lengths = c.get(cells, trim=False)
    out = {}
    for f, r, t, n in zip(fi.tolist(), rows.tolist(), tokens, lengths.tolist()):
        assert (f, r) not in out, f"cell {(f, r)} appears twice"
        assert not t[n:].any(), "padding must be zero"
        out[(f, r)] = tuple(t[:n].astype(np.int64).tolist())
    return out


@pytest.fixture(scope="module")
def corpus(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the empty cell is reported by the medians pass
        manifest = build_corpus(files, out, max_genes=256, shard_size=64, chunk_size=30, median_method="exact")
    return out, manifest


def test_every_cell_once_equal_to_direct_tokenization(files, corpus, sample):
    out, manifest = corpus
    assert manifest.is_complete
    assert manifest.n_input_cells == 560 and manifest.n_rows == 560
    assert manifest.n_empty == 1 and manifest.n_cells == 559
    vocab = GeneVocab.from_json(out / "vocab.json")
    # default vocabulary: the first file's genes that some corpus cell expresses (session 31: the others were
    # untrained tokens a query ranked with a stand-in median)
    expressed = np.asarray((sample.X > 0).sum(axis=0)).ravel() > 0
    assert vocab.genes == list(sample.var_names[expressed]) and 0 < expressed.sum() < sample.n_vars
    medians = np.load(out / "gene_medians.npy")
    # streamed exact medians over the three files (genes permuted / renamed) = medians of the original sample
    exact = compute_gene_medians(sample.X, method="exact")[expressed]
    np.testing.assert_allclose(medians[3:], exact, rtol=1e-12)
    assert Manifest.read(out).config["vocab_genes_without_counts"] == sample.n_vars - expressed.sum()
    expected = _direct(files, vocab, medians, 256)
    got = _from_corpus(out)
    assert len(expected) == 559
    assert got == expected  # order-insensitive: same (file, row) keys, same tokens
    assert (0, EMPTY_ROW) not in got
    # uint16 storage, shards within files
    c = TokenCorpus(out)
    assert c._shard(0)[0].dtype == np.uint16
    assert all(s["row_stop"] - s["row_start"] <= 64 for s in manifest.shards)
    on_disk = Manifest.read(out)
    assert on_disk.to_dict()["shards"] == manifest.to_dict()["shards"]
    assert on_disk.config["vocab_sha256"] == vocab.sha256()


def test_loader_view(corpus):
    out, _ = corpus
    c = TokenCorpus(out)
    cells = np.array([558, 3, 200, 0])
    tokens, lengths = c.get(cells)
    assert tokens.shape == (4, int(lengths.max()))
    np.testing.assert_array_equal(c.lengths_of(cells), lengths)
    fi, rows = c.cell_ids(np.array([EMPTY_ROW - 1, EMPTY_ROW, 200]))
    assert fi.tolist() == [0, 0, 1] and rows.tolist() == [EMPTY_ROW - 1, EMPTY_ROW + 1, 0]  # skips the empty row
    with pytest.raises(IndexError):
        c.get(np.array([559]))
    one, one_len = c.get(200)  # one index: one row (an IndexError inside before; gene probe, session 24)
    np.testing.assert_array_equal(one[0, : one_len[0]], tokens[2, : lengths[2]])
    assert one.shape == (1, int(one_len[0])) and one_len.tolist() == [lengths[2]]


def test_crash_and_resume_exactly_once(files, corpus, tmp_path, monkeypatch):
    ref_dir, ref = corpus
    out = tmp_path / "c"
    real = corpus_mod._write_shard
    calls = {"n": 0}

    def flaky(shard_dir, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # die half-way through the third shard, leaving a partial temp file
            (shard_dir / "tokens.npy").write_bytes(b"partial")
            raise KeyboardInterrupt("simulated crash")
        return real(shard_dir, *args, **kwargs)

    monkeypatch.setattr(corpus_mod, "_write_shard", flaky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(KeyboardInterrupt):
            build_corpus(files, out, max_genes=256, shard_size=64, chunk_size=30, median_method="exact")
    partial = Manifest.read(out)
    assert partial.status == "building" and len(partial.shards) == 2
    assert any(p.name.startswith(".tmp-") for p in (out / "shards").iterdir())
    with pytest.raises(ValueError, match="incomplete"):
        TokenCorpus(out)
    # an unrecorded (renamed but not yet in the manifest) shard must be redone, not trusted
    (out / "shards" / "shard_000005").mkdir()
    (out / "shards" / "shard_000005" / "tokens.npy").write_bytes(b"junk")

    monkeypatch.setattr(corpus_mod, "_write_shard", real)
    manifest = build_corpus(files, out, max_genes=256, shard_size=64, chunk_size=30, median_method="exact")
    assert manifest.is_complete and manifest.n_rows == 560
    assert not any(p.name.startswith(".tmp-") for p in (out / "shards").iterdir())
    assert [s["sha256"] for s in manifest.shards] == [s["sha256"] for s in ref.shards]
    assert _from_corpus(out) == _from_corpus(ref_dir)
    # re-running a complete corpus is a no-op
    again = build_corpus(files, out, max_genes=256, shard_size=64, chunk_size=30, median_method="exact")
    assert [s["sha256"] for s in again.shards] == [s["sha256"] for s in ref.shards]


def test_manifest_mismatch_is_a_clear_error(files, corpus, sample):
    out, _ = corpus
    with pytest.raises(ValueError, match=r"max_genes: corpus has 256, this call gives 128"):
        build_corpus(files, out, max_genes=128, shard_size=64, chunk_size=30, median_method="exact")
    other = GeneVocab(list(sample.var_names[::-1]))
    with pytest.raises(ValueError, match="vocab_sha256"):
        build_corpus(files, out, vocab=other, max_genes=256, shard_size=64, median_method="exact")
    with pytest.raises(ValueError, match="number of input files"):
        build_corpus(files[:2], out, max_genes=256, shard_size=64, median_method="exact")
    with pytest.raises(ValueError, match="shard_size"):
        build_corpus(files, out, max_genes=256, shard_size=100, median_method="exact")
    medians = np.load(out / "gene_medians.npy") * 2
    with pytest.raises(ValueError, match="different gene_medians"):
        build_corpus(files, out, max_genes=256, shard_size=64, gene_medians=medians)
    with pytest.raises(ValueError, match="medians_source"):
        build_corpus(files, out, max_genes=256, shard_size=64, median_method="tdigest")
    assert Manifest.read(out).is_complete  # refused runs leave the corpus untouched


def test_a_new_corpus_never_writes_over_a_foreign_vocab_or_medians_file(files, sample, tmp_path):
    # user probe: a vocab.json left in out_dir without a manifest was silently taken as the corpus vocabulary
    out = tmp_path / "c"
    out.mkdir()
    stale = GeneVocab(list(sample.var_names[:50]))
    stale.to_json(out / "vocab.json")
    before = (out / "vocab.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds a vocab.json but no manifest.json"):
        build_corpus(files, out, max_genes=64, shard_size=64, median_method="exact")
    assert (out / "vocab.json").read_bytes() == before and not (out / "manifest.json").exists()
    # a vocab.json of the same content (a build stopped before its manifest) is taken up
    (out / "vocab.json").unlink()
    first = GeneVocab(list(sample.var_names[np.asarray((sample.X > 0).sum(axis=0)).ravel() > 0]))
    first.to_json(out / "vocab.json")
    np.save(out / "gene_medians.npy", np.zeros(len(first)))  # but medians of another corpus are not overwritten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=r"holds a gene_medians.npy but no manifest.json"):
            build_corpus(files, out, max_genes=64, shard_size=64, median_method="exact")
        (out / "gene_medians.npy").unlink()
        manifest = build_corpus(files, out, max_genes=64, shard_size=64, median_method="exact")
    assert manifest.is_complete and GeneVocab.from_json(out / "vocab.json") == first


def test_a_saved_model_as_out_dir_is_refused_before_any_pass(files, tmp_path, monkeypatch):
    # pipeline probe: the medians' pass read every input (75 min for 10M cells) before the foreign-file error
    import genemamba_scvi.data.corpus as corpus

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    for name in ("checksums.json", "model.safetensors", "gene_medians.npy"):
        (model_dir / name).write_bytes(b"x")
    before = sorted(p.name for p in model_dir.iterdir())
    monkeypatch.setattr(corpus, "_accumulate_medians", lambda *a, **k: pytest.fail("read the inputs first"))
    with pytest.raises(ValueError, match=r"is a saved GeneMamba model, not a corpus; build into an empty out_dir"):
        build_corpus(files, model_dir, max_genes=64, shard_size=64)
    assert sorted(p.name for p in model_dir.iterdir()) == before  # nothing added (no shards folder, no lock)


def test_layer_dense_given_medians_and_cli(sample, tmp_path, capsys):
    a = sample[:40].copy()
    a.layers["counts"] = a.X.toarray()  # dense layer on disk
    a.X = sp.csr_matrix(a.X.shape, dtype=np.float32)
    p = tmp_path / "dense.h5ad"
    a.write_h5ad(p)
    vocab = GeneVocab(list(sample.var_names))
    medians = np.full(len(vocab), np.nan)
    medians[3:] = compute_gene_medians(sample.X, method="exact")
    vocab.to_json(tmp_path / "vocab.json")
    m = build_corpus(
        tmp_path,
        tmp_path / "c1",
        vocab=tmp_path / "vocab.json",
        layer="counts",
        gene_medians=medians,
        max_genes=64,
        add_cls=True,
    )
    assert m.config["medians_source"] == "given" and m.n_cells == 40
    tokens, lengths = TokenCorpus(tmp_path / "c1").get(np.arange(40), trim=False)
    ref_t, ref_l = rank_tokenize(
        sp.csr_matrix(a.layers["counts"]),
        vocab.match(list(a.var_names)).token_ids,
        medians[3:],
        max_genes=64,
        add_cls=True,
    )
    np.testing.assert_array_equal(tokens, ref_t)
    np.testing.assert_array_equal(lengths, ref_l)
    with pytest.raises(ValueError, match="layer 'nope' not found"):
        build_corpus(p, tmp_path / "c2", layer="nope")
    # the medians of a published-tokenization model are all NaN: refused, not a corpus ranked by nothing
    with pytest.raises(ValueError, match=r"no finite median.*tokenization='published'"):
        build_corpus(p, tmp_path / "c4", vocab=vocab, layer="counts", gene_medians=np.full(len(vocab), np.nan))
    assert not (tmp_path / "c4").exists()

    from genemamba_scvi.cli import main

    assert (
        main(
            [
                "build-corpus",
                str(p),
                "--out",
                str(tmp_path / "c3"),
                "--layer",
                "counts",
                "--max-genes",
                "32",
                "--chunk-size",
                "16",
            ]
        )
        == 0
    )
    d = json.loads((tmp_path / "c3" / "manifest.json").read_text())
    assert d["status"] == "complete" and d["n_cells"] == 40 and d["config"]["max_genes"] == 32
    # the Python call's resume unit, median method, gene-id column and overlap are options of the command too
    opts = ["--shard-size", "16", "--median-method", "exact", "--gene-id-key", "ids", "--min-gene-overlap", "0.9"]
    a.var["ids"] = a.var_names
    a.write_h5ad(p)
    assert main(["build-corpus", str(p), "--out", str(tmp_path / "c6"), "--layer", "counts", *opts]) == 0
    d = json.loads((tmp_path / "c6" / "manifest.json").read_text())
    assert d["n_cells"] == 40 and len(d["shards"]) == 3 and d["config"]["medians_source"] == "computed (exact)"
    assert d["config"]["gene_id_key"] == "ids" and d["config"]["shard_size"] == 16
    # bad input on the command line: one line naming the problem, exit status 2, no traceback
    assert main(["build-corpus", str(p), "--out", str(tmp_path / "c4"), "--layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "genemamba build-corpus: error:" in err and "layer 'nope' not found" in err and "Traceback" not in err
    assert main(["build-corpus", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "c5")]) == 2


def test_resolve_inputs_errors(files, tmp_path):
    assert resolve_inputs(files[0].parent) == sorted(files)
    with pytest.raises(FileNotFoundError):
        resolve_inputs(tmp_path / "missing.h5ad")
    with pytest.raises(FileNotFoundError, match=r"no \.h5ad"):
        resolve_inputs(tmp_path)
    with pytest.raises(ValueError, match="more than once"):
        resolve_inputs([files[0], files[0]])


def test_build_corpus_refuses_features_that_are_not_gene_expression(tmp_path):
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from genemamba_scvi.data import build_corpus

    adata = ad.AnnData(X=sp.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(3, 4)))
    adata.var_names = ["CD3E", "MS4A1", "LYZ", "CD4"]
    adata.var["feature_types"] = ["Gene Expression"] * 3 + ["Antibody Capture"]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    with pytest.raises(ValueError, match=r"marks 1 of 4 features as other than 'Gene Expression'.*'CD4'"):
        build_corpus([tmp_path / "cells.h5ad"], tmp_path / "corpus", max_genes=4, progress=False)
    assert not (tmp_path / "corpus").exists()  # a refused build leaves no folder behind (it left an empty shards/)


def test_a_second_build_into_the_same_folder_is_refused_and_a_dead_builders_lock_taken_over(files, tmp_path):
    # two builds at once shared the shards' temporary folders: one failed, the other could mark a corpus "complete"
    # whose shard held the other run's tokens (user probe: 6 of 16 trials)
    import os
    import socket
    import subprocess

    out = tmp_path / "c"
    out.mkdir()
    lock = out / corpus_mod.LOCK_FILE
    lock.write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process holds it
    with pytest.raises(ValueError, match=rf"is being built by process {os.getppid()} on .*another out_dir"):
        build_corpus(files[:1], out, max_genes=64)
    assert not (out / "manifest.json").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid}")  # its builder was killed: the next build goes on
    build_corpus(files[:1], out, max_genes=64)
    assert TokenCorpus(out).manifest.status == "complete" and not lock.exists()


def test_a_vocabulary_of_things_that_are_not_gene_ids_is_refused(sample, tmp_path):
    # --gene-id-key naming a column of row numbers built a "complete" corpus whose vocabulary was '0', '1', ...
    a = sample[:50].copy()
    a.var["junk"] = np.arange(a.n_vars).astype(str)
    a.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(ValueError, match=r"only 0% of them are gene symbols or Ensembl gene ids .*'0', '1'"):
        build_corpus(tmp_path / "a.h5ad", tmp_path / "c", max_genes=32, gene_id_key="junk")
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match=r"only 0% of them are gene symbols"):  # parents it made go too
        build_corpus(tmp_path / "a.h5ad", tmp_path / "new" / "x" / "c", max_genes=32, gene_id_key="junk")
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"  # a folder of the user's: kept, with their file, and nothing of the failed build
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"only 0% of them are gene symbols"):
        build_corpus(tmp_path / "a.h5ad", mine, max_genes=32, gene_id_key="junk")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    build_corpus(tmp_path / "a.h5ad", tmp_path / "ok", max_genes=32)  # the symbols of the var_names are fine


def test_a_file_without_some_genes_tokenizes_its_cells_as_a_file_with_them(sample, tmp_path):
    """Geneformer probe (session 29): genes without a median (medians given, as a model's) took the median of the
    file's own genes' medians, so a file lacking genes none of its cells expresses ranked the others differently from
    the same cells with them."""
    a, b = sample[:280].copy(), sample[500:].copy()  # (59 cells: many genes with a median have no count there)
    medians = compute_gene_medians(a.X, method="exact")  # a model's medians: b expresses genes a never did
    in_b = np.asarray((b.X > 0).sum(axis=0)).ravel() > 0
    assert (np.isnan(medians) & in_b).sum() > 100
    silent = np.flatnonzero(np.isfinite(medians) & ~in_b)  # a median, no count in b: the low half dropped
    drop = silent[medians[silent] < np.nanmedian(medians)]
    assert len(drop) >= 100
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad", tmp_path / "b_fewer.h5ad"]
    for x, p in zip((a, b, b[:, ~np.isin(np.arange(b.n_vars), drop)].copy()), paths):
        x.write_h5ad(p)
    got = {}
    for name, files in (("all", paths[:2]), ("fewer", [paths[0], paths[2]])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            build_corpus(
                files, tmp_path / name, max_genes=256, shard_size=512, gene_medians=np.r_[[np.nan] * 3, medians]
            )
        got[name] = {key: t for key, t in _from_corpus(tmp_path / name).items() if key[0] == 1}
    assert len(got["all"]) == b.n_obs and got["fewer"] == got["all"]


def test_a_csc_file_is_told_once(tmp_path, caplog):
    # corrected-input probe (session 30): the "stored as CSC" advice came once for every opening of the file (4)
    adata = load_celltypist_sample()[:40].copy()
    adata.X = sp.csc_matrix(adata.layers.pop("counts"))
    adata.write_h5ad(tmp_path / "csc.h5ad")
    with caplog.at_level("WARNING"):
        build_corpus(tmp_path / "csc.h5ad", tmp_path / "corpus", max_genes=32, median_method="exact")
    assert sum("is stored as CSC" in r.getMessage() for r in caplog.records) == 1


def test_files_are_checked_before_the_medians_pass_and_genes_left_out_are_told(tmp_path, monkeypatch):
    # corpus probe (session 31): with vocab=None the vocabulary is the first file's genes; a later file's own genes
    # were left out told only at log level INFO, and a later file of too few vocabulary genes (or counts in another
    # layer) was named only when the medians' pass reached it
    adata = load_celltypist_sample()[:60].copy()
    adata.X = adata.layers.pop("counts")
    first, second = adata[:30, :20000].copy(), adata[30:, 5000:].copy()  # 12,786 of the second's genes not in first
    first.write_h5ad(tmp_path / "a.h5ad")
    second.write_h5ad(tmp_path / "b.h5ad")
    with pytest.warns(
        UserWarning, match=r"vocabulary is the genes of its first file, a\.h5ad.*b\.h5ad: 12,786 of 27,786"
    ):
        build_corpus([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], tmp_path / "c1", max_genes=32)
    vocab = GeneVocab.from_var_names(list(adata.var_names))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a vocabulary given: nothing to tell
        build_corpus([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], tmp_path / "c2", max_genes=32, vocab=vocab)

    monkeypatch.setattr(corpus_mod, "_accumulate_medians", lambda *a, **k: pytest.fail("medians' pass began"))
    adata[:, 19990:20300].copy().write_h5ad(tmp_path / "few.h5ad")  # 10 of its 310 genes in the vocabulary
    with pytest.raises(
        ValueError, match=r"few\.h5ad.*\n\(the corpus vocabulary is the genes of the first file, a\.h5ad"
    ):
        build_corpus([tmp_path / "a.h5ad", tmp_path / "few.h5ad"], tmp_path / "c3", max_genes=32, min_gene_overlap=0.5)
    other = adata[:10].copy()
    other.layers["counts"] = other.X.copy()
    other.X = other.X.astype(np.float32) / 3.0
    other.write_h5ad(tmp_path / "layered.h5ad")  # (its first rows' counts are checked before the medians' pass too)
    with pytest.raises(ValueError, match=r"pass layer='counts' \(the same layer is read from every input file"):
        build_corpus([tmp_path / "a.h5ad", tmp_path / "layered.h5ad"], tmp_path / "c4", max_genes=32)


def test_one_file_under_two_names_is_told(files, tmp_path):
    # corpus probe (session 31): a copy of a file under another name was taken as a second study (its cells twice)
    import shutil

    copy = tmp_path / "copy_of_a.h5ad"
    shutil.copy(files[0], copy)
    with pytest.warns(UserWarning, match=r"copy_of_a\.h5ad has the same size and content fingerprint as .*a_symbols"):
        build_corpus([files[0], copy], tmp_path / "c", max_genes=32)


def _counts_file(path, n_cells: int) -> None:
    """The first ``n_cells`` of the celltypist sample with their counts in X, written to ``path``."""
    adata = load_celltypist_sample()[:n_cells].copy()
    adata.X = adata.layers.pop("counts")
    adata.write_h5ad(path)


def test_input_files_without_cells_are_refused_before_a_corpus_is_written(tmp_path):
    # bad-input probe (session 33): build-corpus on a 0-cell file wrote a "complete" corpus of 3 special tokens and
    # exit 0; the failure came only at pretrain ("the corpus has no cells")
    _counts_file(tmp_path / "empty.h5ad", 0)
    with pytest.raises(ValueError, match=r"the input files hold no cells \(empty.h5ad: 0 cells each\)"):
        build_corpus(tmp_path / "empty.h5ad", tmp_path / "corpus")
    assert not (tmp_path / "corpus" / "manifest.json").exists()


def test_an_out_dir_that_is_a_file_or_inside_one_is_named(tmp_path):
    # bad-input probe (session 33): build_corpus into a file (e.g. its own input) gave only "[Errno 17] File exists"
    _counts_file(tmp_path / "x.h5ad", 20)
    with pytest.raises(NotADirectoryError, match=r"out_dir '.*x\.h5ad' is a file, not a folder"):
        build_corpus(tmp_path / "x.h5ad", tmp_path / "x.h5ad")
    with pytest.raises(NotADirectoryError, match=r"out_dir '.*sub' is inside .*x\.h5ad, a file"):
        build_corpus(tmp_path / "x.h5ad", tmp_path / "x.h5ad" / "sub")
    assert anndata.read_h5ad(tmp_path / "x.h5ad").n_obs == 20  # the input is untouched
