"""``genemamba embed``: an .h5ad file in, a copy with ``obsm["X_genemamba"]`` out, with a saved or a published model.

Real cells (``sample48`` of the shipped celltypist sample), a tiny untrained model; the embedding written must be
the one the Python API gives, and no input or existing file may be changed.
"""

from __future__ import annotations

import hashlib
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

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


def test_embed_with_a_saved_model_writes_the_api_embedding_and_keeps_the_input(tmp_path, saved):
    model_dir, adata, expected = saved
    source = _user_file(adata, tmp_path / "cells.h5ad")  # counts in X, the model reads layer "counts"
    before = _digest(source)
    out = tmp_path / "results" / "cells_embedded.h5ad"  # the parent directory is created
    assert main(["embed", str(source), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    written = ad.read_h5ad(out)
    np.testing.assert_allclose(written.obsm["X_genemamba"], expected, rtol=1e-5, atol=1e-6)
    assert written.uns["genemamba"]["X_genemamba"]["model"] == str(model_dir)
    assert list(written.obs.columns) == ["donor"]  # no scvi set-up columns
    assert not [k for k in written.uns if k.startswith("_scvi")]
    assert (written.X != ad.read_h5ad(source).X).nnz == 0
    assert _digest(source) == before
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind


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
