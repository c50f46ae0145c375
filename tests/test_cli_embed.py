"""``genemamba embed``: an .h5ad file in, a copy with ``obsm["X_genemamba"]`` out, with a saved or a published model.

Real cells (``sample48`` of the shipped celltypist sample), a tiny untrained model; the embedding written must be
the one the Python API gives, and no input or existing file may be changed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from genemamba_scvi import GeneMambaModel
from genemamba_scvi.cli import main
from test_pretrained import _adata, _load, _official_tensors, _write_hf


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(sample48_model, tmp_path_factory):
    """A model saved after set-up on ``layer="counts"``, its AnnData, and its embedding of those cells."""
    model, adata = sample48_model
    path = tmp_path_factory.mktemp("embed") / "model"
    model.save(path)
    return path, adata, model.get_latent_representation(adata)


def _user_file(adata, path, counts_in: str = "X"):
    """An .h5ad a user brings: counts in X (or in a layer, with log-normalised X), obs columns of their own."""
    counts = adata.layers["counts"].copy()
    user = ad.AnnData(X=counts, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    user.obs["donor"] = ["d1", "d2"] * (user.n_obs // 2)
    if counts_in != "X":
        user.layers[counts_in] = counts
        user.X = sp.csr_matrix(np.log1p(counts.toarray()))
    user.write_h5ad(path)
    return path


def test_embed_with_a_saved_model_writes_the_api_embedding_and_keeps_the_input(tmp_path, saved, capsys):
    model_dir, adata, expected = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")  # counts in X, the model reads layer "counts"
    before = _digest(source)
    out = tmp_path / "results" / "cells_embedded.h5ad"  # the parent directory is created
    assert main(["embed", str(source), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    written = ad.read_h5ad(out)
    np.testing.assert_allclose(written.obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
    record = written.uns["genemamba"]["X_genemamba"]
    assert record["model"] == str(model_dir.resolve())  # absolute: the file says which model, wherever it is read
    assert record["max_genes"] == 64 and record["tokenization"] == "ranked" and record["pooling"] == "mean"
    assert record["tie_break"] == "median"  # every tokenizer setting (user probe: tie_break was left out)
    import hashlib  # the model's identity, not only its path (repro probe, session 31)

    assert record["model_checksums_sha256"] == hashlib.sha256((model_dir / "checksums.json").read_bytes()).hexdigest()
    assert list(written.obs.columns) == ["donor"]  # no scvi set-up columns
    assert not [k for k in written.uns if k.startswith("_scvi")]
    assert (written.X != ad.read_h5ad(source).X).nnz == 0
    assert _digest(source) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind
    capsys.readouterr()
    assert main(["embed", str(out), "--model", str(model_dir), "--out", str(tmp_path / "again.h5ad"), "--quiet"]) == 0
    assert "obsm['X_genemamba'] of the input is replaced in again.h5ad" in capsys.readouterr().err


def test_embed_reads_counts_from_a_layer(tmp_path, saved):
    model_dir, adata, expected = saved
    source = _user_file(adata, tmp_path / "cells.h5ad", counts_in="raw_counts")
    out = tmp_path / "out.h5ad"
    args = ["embed", str(source), "--model", str(model_dir), "--out", str(out), "--quiet", "--key", "X_gm"]
    assert main([*args, "--layer", "raw_counts"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_gm"], expected, rtol=1e-5, atol=1e-6)
    assert main([*args, "--overwrite"]) == 2  # X is log-normalised: the count check refuses it


def test_embed_of_non_counts_names_what_it_read_and_the_layer_to_pass(tmp_path, saved, capsys):
    model_dir, adata, _ = saved  # the model was set up on layer "counts": the message must not name that layer
    source = _user_file(adata, tmp_path / "cells.h5ad", counts_in="umi")
    assert main(["embed", str(source), "--model", str(model_dir), "--out", str(tmp_path / "o.h5ad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "X of " in err and "non-integer values" in err and "pass --layer umi" in err
    assert "layer 'counts'" not in err and "layer=" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_embed_never_replaces_a_file_without_overwrite(tmp_path, saved, capsys):
    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"a file of the user")
    base = ["embed", str(source), "--model", str(model_dir), "--quiet"]
    assert main([*base, "--out", str(out)]) == 2
    assert out.read_bytes() == b"a file of the user"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--out", str(source), "--overwrite"]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x.h5ad"), "--layer", "nope"]) == 2
    assert "--layer 'nope' is not a layer" in capsys.readouterr().err
    assert (
        main(["embed", str(source), "--model", str(tmp_path / "no" / "model"), "--out", str(tmp_path / "n.h5ad")]) == 2
    )
    assert "no such directory (give a model saved with GeneMambaModel.save" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "cells.zarr")]) == 2  # an HDF5 file named .zarr: read by nothing
    assert "names a zarr store, but genemamba embed writes an .h5ad file" in capsys.readouterr().err
    assert not (tmp_path / "cells.zarr").exists()
    assert main([*base, "--out", str(out), "--overwrite"]) == 0
    assert "X_genemamba" in ad.read_h5ad(out).obsm


def test_embed_with_a_published_checkpoint(tmp_path):
    raw = _official_tensors("gate", seed=3)
    checkpoint = _write_hf(tmp_path / "GeneMamba", raw, mode="gate", pooling="mean")
    adata = _adata(seed=4)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "out.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unknown genes of this AnnData are reported
        rc = main(["embed", str(tmp_path / "cells.h5ad"), "--model", str(checkpoint), "--out", str(out), "--quiet"])
    assert rc == 0
    expected = _load(checkpoint, adata.copy(), max_genes=2048).get_latent_representation()
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)


def test_embed_checks_the_input_file_first(tmp_path, capsys):
    missing = tmp_path / "no_such.h5ad"
    args = ["embed", str(missing), "--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "o.h5ad")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"input {missing}: no such file" in err and "errno" not in err and "--model" not in err
    assert main(["embed", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "is a directory, not an .h5ad file" in capsys.readouterr().err


def test_embed_refuses_published_only_options_with_a_saved_model(tmp_path, saved, capsys):
    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    base = ["embed", str(source), "--model", str(model_dir), "--out", str(tmp_path / "o.h5ad"), "--quiet"]
    for extra in (["--max-genes", "64"], ["--subfolder", "x"], ["--revision", "main"], ["--cache-dir", "c"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert f"{extra[0]} apply to published checkpoints only" in err and "GeneMambaModel.save" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_embed_honours_gene_id_key_with_a_saved_model(tmp_path, saved, capsys):
    model_dir, adata, expected = saved
    user = ad.read_h5ad(_user_file(adata, tmp_path / "cells.h5ad"))
    user.var["ensembl"] = list(user.var_names)  # the ids the model knows, in a column
    user.var_names = [f"probe{i}" for i in range(user.n_vars)]  # var_names the model does not know
    user.write_h5ad(tmp_path / "probes.h5ad")
    out = tmp_path / "o.h5ad"
    base = ["embed", str(tmp_path / "probes.h5ad"), "--model", str(model_dir), "--out", str(out), "--quiet"]
    assert main([*base, "--gene-id-key", "ensembl"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
    assert list(ad.read_h5ad(out).var_names[:2]) == ["probe0", "probe1"]  # the file's own genes are written
    assert main([*base, "--gene-id-key", "symbol", "--overwrite"]) == 2
    assert "--gene-id-key 'symbol' is not a column of var" in capsys.readouterr().err


def test_embed_never_writes_into_the_model_directory(tmp_path, saved, capsys):
    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    before = {p.name: _digest(p) for p in model_dir.iterdir()}
    for target in (
        model_dir / "model.safetensors",
        model_dir / "sub" / "e.h5ad",
        model_dir / ".." / model_dir.name / "x",
    ):
        args = ["embed", str(source), "--model", str(model_dir), "--out", str(target), "--overwrite", "--quiet"]
        assert main(args) == 2
        assert "is inside the model's directory" in capsys.readouterr().err
    assert {p.name: _digest(p) for p in model_dir.iterdir()} == before
    # a --model that is no model at all (e.g. ".", the data folder): that is named, not the --out inside it
    args = ["embed", str(source), "--model", str(tmp_path), "--out", str(tmp_path / "e.h5ad"), "--quiet"]
    assert main(args) == 2
    assert f"--model {tmp_path} is not a model directory (no checksums.json" in capsys.readouterr().err


def test_embed_reaches_a_size_variant_of_a_cached_repository(tmp_path, monkeypatch, capsys):
    from _official_writer import cache_like_huggingface_hub

    root = _write_hf(tmp_path / "download", _official_tensors("gate", seed=3), mode="gate", pooling="mean")
    variant = _write_hf(root / "12l-256d", _official_tensors("sum", seed=5), mode="sum", pooling="mean")
    cache = tmp_path / "hub"
    snapshot = cache_like_huggingface_hub(cache, "mineself2016/GeneMamba", root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    adata = _adata(seed=4)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    expected = _load(variant, adata.copy(), max_genes=40).get_latent_representation()
    out = tmp_path / "out.h5ad"
    base = ["embed", "cells.h5ad", "--out", str(out), "--max-genes", "40", "--quiet", "--overwrite"]
    spellings = (
        ["--model", "mineself2016/GeneMamba", "--subfolder", "12l-256d"],
        ["--model", "mineself2016/GeneMamba/12l-256d"],
        ["--model", "mineself2016/GeneMamba", "--subfolder", "12l-256d", "--revision", snapshot.name],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for spelling in spellings:
            assert main([*base, *spelling]) == 0, spelling
            np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
        assert ad.read_h5ad(out).uns["genemamba"]["X_genemamba"]["subfolder"] == "12l-256d"
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
        assert main([*base, *spellings[0], "--cache-dir", str(cache)]) == 0
        np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
        assert main([*base, "--model", "mineself2016/GeneMamba", "--cache-dir", str(cache), "--subfolder", "6l"]) == 2
        assert "no size variant --subfolder '6l'" in capsys.readouterr().err
        blob = cache / "models--mineself2016--GeneMamba" / "snapshots" / snapshot.name / "x.h5ad"
        assert (
            main([*base[:2], "--out", str(blob), "--model", "mineself2016/GeneMamba", "--cache-dir", str(cache)]) == 2
        )
        assert "is inside the model's directory" in capsys.readouterr().err


def test_cli_errors_name_the_command_options_not_python_arguments(tmp_path, saved, capsys):
    # the library's hints read "pass ... layer=..." / "overwrite=True"; a shell user is told the command's options
    _, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad", counts_in="counts")
    assert main(["build-corpus", str(source), "--out", str(tmp_path / "corpus"), "--max-genes", "32"]) == 2
    err = capsys.readouterr().err
    assert "--layer" in err and "layer=" not in err
    assert main(["build-corpus", str(source), "--out", str(tmp_path / "corpus"), "--layer", "counts"]) == 0


def test_embed_prints_warnings_as_messages_of_the_command(tmp_path, saved, capsys):
    # a warning was printed as "<venv>/bin/genemamba:6: UserWarning: ..." followed by the source line
    _, adata, _ = saved
    counts = sp.hstack([adata.layers["counts"], sp.csr_matrix(np.ones((adata.n_obs, 1), dtype=np.float32))]).tocsr()
    user = ad.AnnData(X=counts, obs=adata.obs[[]].copy())
    user.var_names = [*adata.var_names, "NOT_A_GENE"]
    user.write_h5ad(tmp_path / "cells.h5ad")
    model_dir = saved[0]
    args = ["embed", str(tmp_path / "cells.h5ad"), "--model", str(model_dir), "--out", str(tmp_path / "o.h5ad")]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([*args, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "genemamba embed: warning: " in err and "not in the model's vocabulary" in err
    assert "UserWarning" not in err and "main()" not in err


def test_cli_numbers_are_checked_by_option_before_anything_runs(tmp_path, saved, capsys):
    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    base = ["embed", str(source), "--model", str(model_dir), "--out", str(tmp_path / "o.h5ad")]
    for extra, message in (
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--batch-size", "2.5"], "argument --batch-size: '2.5' is not a whole number"),
        (["--min-gene-overlap", "1.5"], "argument --min-gene-overlap: must be a fraction in [0, 1]"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    corpus = ["build-corpus", str(source), "--out", str(tmp_path / "c")]
    assert main([*corpus, "--shard-size", "0"]) == 2 and "argument --shard-size" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_messages_keep_python_calls_and_name_options_outside_them(tmp_path):
    import argparse

    from genemamba_scvi.cli import _cli_spelling

    parser = argparse.ArgumentParser()
    for option in ("--min-gene-overlap", "--gene-id-key", "--batch-size"):
        parser.add_argument(option)
    message = "check ids (or gene_id_key=), or lower min_gene_overlap (GeneMambaModel.load(..., min_gene_overlap=...))"
    assert _cli_spelling(message, parser) == (
        "check ids (or --gene-id-key), or lower --min-gene-overlap (GeneMambaModel.load(..., min_gene_overlap=...))"
    )
    assert _cli_spelling("batch_size must be an integer >= 1, got 0", parser).startswith("--batch-size must")
    # build_corpus's own names for --out and --min-gene-overlap (user probe: "choose a new (or empty) out_dir")
    parser.add_argument("--out")
    assert _cli_spelling("choose a new out_dir, or lower min_overlap", parser) == (
        "choose a new --out, or lower --min-gene-overlap"
    )
    # bad-input probe (session 33): the library's hint "or gene_id_key in setup_anndata" came out garbled
    from genemamba_scvi.model._genes import _gene_id_source

    assert _cli_spelling(_gene_id_source(None)[1], parser).endswith("or name that column with --gene-id-key <...>")


def test_a_mistyped_model_path_beside_saved_models_is_named_as_such(tmp_path, saved, capsys, monkeypatch):
    # "models/pbmc_v3" beside saved models was read as an official checkpoint with "size variants" pbmc_v1, ...
    import shutil

    model_dir, adata, _ = saved
    shutil.copytree(model_dir, tmp_path / "models" / "pbmc_v1")
    source = _user_file(adata, tmp_path / "cells.h5ad")
    monkeypatch.chdir(tmp_path)
    assert main(["embed", str(source), "--model", "models/pbmc_v3", "--out", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "no such directory: models/pbmc_v3 (models holds the saved models pbmc_v1" in err
    assert "size variant" not in err


def test_build_corpus_of_log_normalised_x_names_the_layer_with_the_counts(tmp_path, saved, capsys):
    _, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad", counts_in="counts")  # log1p in X, counts in a layer
    assert main(["build-corpus", str(source), "--out", str(tmp_path / "c"), "--max-genes", "32"]) == 2
    assert "layers['counts'] of this file holds them: pass --layer 'counts'" in capsys.readouterr().err


def test_embed_of_a_saved_model_without_its_manifest_or_of_scvi_tools_says_so(tmp_path, saved, capsys):
    # the CLI took any folder without checksums.json for a published checkpoint: "vocab.json: the vocabulary is not
    # a token -> integer id table" for a copy that lost its manifest, "config.json is missing" for scvi-tools' model
    import shutil

    path, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / "checksums.json").unlink()
    scvi_dir = tmp_path / "scvi_model"
    scvi_dir.mkdir()
    (scvi_dir / "model.pt").write_bytes(b"\0")
    for folder, message in ((copy, "checksums.json is missing"), (scvi_dir, "a model saved by scvi-tools")):
        assert main(["embed", str(source), "--model", str(folder), "--out", str(tmp_path / "o.h5ad")]) != 0
        err = capsys.readouterr().err
        assert message in err and "vocab.json" not in err and "config.json is missing" not in err


def test_embed_of_duplicated_var_names_says_so_once_in_the_commands_terms(tmp_path, saved, capsys):
    # anndata's "Variable names are not unique" warning came twice, then an error with Python-only advice
    path, adata, _ = saved
    user = ad.read_h5ad(_user_file(adata, tmp_path / "cells.h5ad"))
    names = list(user.var_names)
    names[1] = names[0]
    user.var_names = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        user.write_h5ad(tmp_path / "dup.h5ad")
    assert main(["embed", str(tmp_path / "dup.h5ad"), "--model", str(path), "--out", str(tmp_path / "o.h5ad")]) != 0
    err = capsys.readouterr().err
    assert "not unique" not in err and err.count("error:") == 1
    assert f"1 gene names occur in more than one column of var_names (e.g. ['{names[0]}'])" in err
    assert "--gene-id-key" in err and not (tmp_path / "o.h5ad").exists()


def test_antibody_features_of_a_cell_ranger_file_are_refused_by_the_api_and_left_out_by_the_cli(
    tmp_path, saved, capsys
):
    # an antibody feature named "CD4" took the CD4 gene's token (its direct match outranks the gene's Ensembl id)
    from genemamba_scvi import GeneMambaModel

    path, adata, z = saved
    user = ad.read_h5ad(_user_file(adata, tmp_path / "cells.h5ad"))
    antibody = ad.AnnData(X=user.X[:, :2].copy(), obs=user.obs[[]].copy())
    antibody.var_names = ["CD4_ab", "CD14_ab"]
    both = ad.concat([user, antibody], axis=1, merge="first")
    both.obs = user.obs.copy()
    both.var["feature_types"] = ["Gene Expression"] * user.n_vars + ["Antibody Capture"] * 2
    with pytest.raises(ValueError, match=r"marks 2 of \d+ features as other than 'Gene Expression'.*Antibody Capture"):
        GeneMambaModel.setup_anndata(both.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both.write_h5ad(tmp_path / "both.h5ad")
    assert main(["embed", str(tmp_path / "both.h5ad"), "--model", str(path), "--out", str(tmp_path / "o.h5ad")]) == 0
    assert "left out 2 features of var['feature_types']" in capsys.readouterr().err
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "o.h5ad").obsm["X_genemamba"], z, rtol=0, atol=1e-6)


def test_embed_reads_the_var_names_where_a_saved_models_gene_id_column_holds_other_ids(tmp_path, sample48, capsys):
    # a model set up with gene_id_key="ensembl" reads that column wherever a file has it; a file whose "ensembl"
    # column holds something else had no command-line way to the right ids (its var_names)
    from conftest import TINY_MODEL

    adata = sample48.copy()
    adata.var["ensembl"] = list(adata.var_names)
    GeneMambaModel.setup_anndata(adata, layer="counts", gene_id_key="ensembl")
    model = GeneMambaModel(adata, **TINY_MODEL)
    model.save(tmp_path / "keyed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untrained
        expected = model.get_latent_representation()
    user = ad.read_h5ad(_user_file(sample48, tmp_path / "cells.h5ad"))
    user.var["ensembl"] = [f"other{i}" for i in range(user.n_vars)]  # not the ids: the var_names are
    user.write_h5ad(tmp_path / "other.h5ad")
    out = tmp_path / "o.h5ad"
    base = ["embed", str(tmp_path / "other.h5ad"), "--model", str(tmp_path / "keyed"), "--out", str(out), "--quiet"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "adata.var['ensembl']" in err and "with this command: --gene-id-key var_names" in err
    assert main([*base, "--gene-id-key", "var_names"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
    assert list(ad.read_h5ad(out).var["ensembl"][:1]) == ["other0"]  # the file's own columns are written back


def test_embed_refuses_keys_and_outputs_it_cannot_write_before_embedding(tmp_path, saved, capsys, monkeypatch):
    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    base = ["embed", str(source), "--model", str(model_dir), "--quiet"]
    # a key with "/": anndata writes nested groups and cannot read the file back (the command said [done], rc 0)
    assert main([*base, "--out", str(tmp_path / "o.h5ad"), "--key", "genemamba/v1"]) == 2
    assert "without '/'" in capsys.readouterr().err and not (tmp_path / "o.h5ad").exists()
    # an output folder this user cannot write into: named before the model is loaded (a traceback after it)
    import genemamba_scvi.cli as cli

    real_access = cli.os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if "locked" in str(p) else real_access(p, mode))
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(GeneMambaModel, "load", lambda *a, **k: pytest.fail("loaded before the output was checked"))
    assert main([*base, "--out", str(tmp_path / "locked" / "sub" / "o.h5ad")]) == 2
    assert f"cannot write {tmp_path / 'locked' / 'sub' / 'o.h5ad'}" in capsys.readouterr().err


def test_a_permission_error_or_ctrl_c_is_a_message_not_a_traceback(tmp_path, saved, capsys, monkeypatch):
    import genemamba_scvi.cli as cli

    model_dir, adata, _ = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")
    base = ["embed", str(source), "--model", str(model_dir), "--out", str(tmp_path / "o.h5ad"), "--quiet"]

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".o.h5ad.tmp"))

    monkeypatch.setattr("genemamba_scvi.io._files._atomic_write_file", denied)
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "error: permission denied" in err and "Traceback" not in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_embed", interrupted)  # Ctrl-C: 130, one line (a 30-55 line traceback, exit 1)
    assert main(base) == 130
    err = capsys.readouterr().err
    assert err.strip() == "genemamba embed: interrupted"

    # SIGTERM (Snakemake, Nextflow, SLURM) mid-write: stopped as Ctrl-C is, the hidden temporary removed (pipeline
    # probe: a 40-70 MB .o.h5ad.tmp-* stayed behind), the previous handler back afterwards
    monkeypatch.undo()
    real_write = ad.AnnData.write_h5ad

    def write_then_terminated(self, filename, *args, **kwargs):
        real_write(self, filename, *args, **kwargs)
        assert Path(filename).name.startswith(".o.h5ad.tmp")  # the temporary, not the output
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(base) == 143
    assert capsys.readouterr().err.strip().endswith("genemamba embed: terminated")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.h5ad") or p.name == "o.h5ad"]
    assert signal.getsignal(signal.SIGTERM) is before

    def write_while_a_callback_swallows_it(self, filename, *args, **kwargs):  # review: h5py runs the handler in a
        real_write(self, filename, *args, **kwargs)  # weakref callback whose exception is only printed
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_while_a_callback_swallows_it)
    assert main(base) == 143  # it finished with exit 0 and wrote the output before
    assert capsys.readouterr().err.strip().endswith("genemamba embed: terminated")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.h5ad") or p.name == "o.h5ad"]

    def ctrl_c_swallowed(self, filename, *args, **kwargs):  # the same for Ctrl-C (pipeline probe: the write
        real_write(self, filename, *args, **kwargs)  # finished, exit 0)
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass

    monkeypatch.setattr(ad.AnnData, "write_h5ad", ctrl_c_swallowed)
    # Python's own Ctrl-C handler, as in a terminal (a job started in the background, as CI may run this, ignores
    # SIGINT, and the command leaves an ignored Ctrl-C ignored)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(base) == 130
        assert capsys.readouterr().err.strip().endswith("genemamba embed: interrupted")
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.h5ad") or p.name == "o.h5ad"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored by the caller: left so, the write goes on
        assert main(base) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        (tmp_path / "o.h5ad").unlink()
    finally:
        signal.signal(signal.SIGINT, outer)

    def training_exits(args):  # Lightning (trainer/call.py) stops training gracefully, then sys.exit(1) (our runner
        # converts it; this is the fallback for a path that does not)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setattr(cli, "_embed", training_exits)
    assert main(base) == 143
    assert capsys.readouterr().err.strip().endswith("genemamba embed: terminated")
    monkeypatch.setattr(cli, "_embed", lambda args: sys.exit(3))
    with pytest.raises(SystemExit):  # an exit without a signal: left alone
        main(base)

    def training_converts_it(args):  # Lightning turns the handler's exception into its own interrupt
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(cli, "_embed", training_converts_it)
    assert main(base) == 143
    assert capsys.readouterr().err.strip().endswith("genemamba embed: terminated")
    monkeypatch.undo()

    def disk_full(args):  # user probe: a full disk printed a 30-line traceback
        raise OSError(28, "No space left on device", str(tmp_path / ".o.h5ad.tmp"))

    monkeypatch.setattr(cli, "_embed", disk_full)  # (after the undo above)
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "error: no space left on the disk" in err and "run the same command again" in err and "Traceback" not in err


def test_a_cell_ranger_h5_is_named_with_the_conversion(tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "filtered_feature_bc_matrix.h5", "w") as f:
        f.create_group("matrix").create_dataset("shape", data=np.array([3, 2]))
    out = tmp_path / "o.h5ad"
    cmd = ["embed", str(tmp_path / "filtered_feature_bc_matrix.h5"), "--model", str(tmp_path), "--out", str(out)]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "10x Genomics (Cell Ranger) HDF5 file, not an .h5ad" in err and "sc.read_10x_h5(" in err
    with h5py.File(tmp_path / "cells.h5mu", "w") as f:  # user probe: a MuData file was a traceback of anndata's IO
        f.attrs["encoding-type"] = "MuData"
        f.create_group("mod").create_group("rna")
    cmd = ["embed", str(tmp_path / "cells.h5mu"), "--model", str(tmp_path), "--out", str(out)]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "is a MuData (.h5mu) file of modalities ['rna'], not an .h5ad" in err and "['rna'].write_h5ad(" in err
    assert main(["build-corpus", str(tmp_path / "cells.h5mu"), "--out", str(tmp_path / "c")]) == 2
    assert "MuData (.h5mu)" in capsys.readouterr().err


def test_embed_keeps_the_inputs_compression_and_reads_csc_quietly(tmp_path, saved):
    # the copy was written uncompressed (2.85x the gzip input of the shipped sample); CSC input warned about training
    import h5py

    model_dir, adata, expected = saved
    user = ad.read_h5ad(_user_file(adata, tmp_path / "cells.h5ad"))
    user.X = sp.csc_matrix(user.X)
    user.write_h5ad(tmp_path / "gz.h5ad", compression="gzip")
    out = tmp_path / "o.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="this GeneMambaModel is not trained")  # the fixture's model
        assert main(["embed", str(tmp_path / "gz.h5ad"), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as f:
        assert f["X/data"].compression == "gzip"
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)


def test_embed_reads_counts_from_raw_and_names_empty_cells_in_the_files_terms(tmp_path, saved, capsys):
    # scanpy's layout (log-normalised X, counts in .raw) had no command-line route; empty cells of X were reported
    # in "layer 'counts'" (the saved model's set-up layer) with a fix for Python users only
    import scanpy as sc

    model_dir, adata, expected = saved
    user = ad.read_h5ad(_user_file(adata, tmp_path / "cells.h5ad"))
    logged = user.copy()
    sc.pp.normalize_total(logged)
    sc.pp.log1p(logged)
    logged.raw = user
    logged.write_h5ad(tmp_path / "scanpy.h5ad")
    base = ["embed", str(tmp_path / "scanpy.h5ad"), "--model", str(model_dir), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "x.h5ad")]) == 2
    assert "the file's raw holds them: pass --layer raw" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fixture's model is untrained
        assert main([*base, "--out", str(tmp_path / "r.h5ad"), "--layer", "raw"]) == 0
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "r.h5ad").obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
    empty = user.copy()
    X = empty.X.tolil()
    X[:2] = 0
    empty.X = sp.csr_matrix(X)
    empty.write_h5ad(tmp_path / "empty.h5ad")
    cmd = ["embed", str(tmp_path / "empty.h5ad"), "--model", str(model_dir), "--out", str(tmp_path / "e.h5ad")]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"2 of {user.n_obs} cells of {tmp_path / 'empty.h5ad'} have no counts in X" in err and "'counts'" not in err
    assert "--drop-empty-cells" in err and not (tmp_path / "e.h5ad").exists()
    with warnings.catch_warnings():  # --drop-empty-cells: the other cells, embedded as they are alone
        warnings.simplefilter("ignore", UserWarning)
        assert main([*cmd, "--drop-empty-cells", "--quiet"]) == 0
    assert "2 of" in capsys.readouterr().err
    written = ad.read_h5ad(tmp_path / "e.h5ad")
    assert list(written.obs_names) == list(user.obs_names[2:])
    np.testing.assert_allclose(written.obsm["X_genemamba"], expected[2:], rtol=1e-5, atol=1e-6)


def test_embed_with_a_folder_holding_a_saved_model_names_it(tmp_path, saved, capsys):
    # repro probe (session 31): --model of a demo's output folder (its model is model/) said only "config.json is
    # missing"
    import shutil

    model_dir, adata, _ = saved
    shutil.copytree(model_dir, tmp_path / "demo_output" / "model")
    source = _user_file(adata, tmp_path / "cells.h5ad")
    args = ["embed", str(source), "--model", str(tmp_path / "demo_output"), "--out", str(tmp_path / "o.h5ad")]
    assert main([*args, "--quiet"]) == 2
    assert f"{tmp_path / 'demo_output' / 'model'} is a model saved by GeneMambaModel.save" in capsys.readouterr().err


def test_the_commands_messages_go_to_the_stderr_of_the_moment(tmp_path, capsys, monkeypatch):
    # session 31 (CI): the package's log handler kept the sys.stderr of the first command in the process, a stream
    # closed since, and a later command's warning printed a "Logging error" traceback
    import io
    import logging

    assert main(["build-corpus", str(tmp_path / "none.h5ad"), "--out", str(tmp_path / "c")]) == 2  # the handler made
    capsys.readouterr()
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logging.getLogger("genemamba_scvi").warning("one")
    first.close()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("genemamba_scvi").warning("two")
    assert later.getvalue() == "WARNING: two\n"


def test_the_top_level_help_reads_as_plain_text(capsys):
    # bad-input probe (session 33): `genemamba --help` showed the module docstring's reST literals (``genemamba demo``)
    try:
        code = main(["--help"])
    except SystemExit as stop:
        code = stop.code
    assert code == 0
    out = capsys.readouterr().out
    assert "genemamba demo" in out and "``" not in out
