"""GeneMambaModel(tie_break=...): the setting reaches the tokenizer, is saved, and old saves load as "median"."""

from __future__ import annotations

import numpy as np
import pytest

from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_celltypist_sample

TINY = {"d_model": 16, "n_layers": 1, "max_genes": 64, "backend": "torch", "chunk_size": 16, "headdim": 8}


@pytest.fixture(scope="module")
def adata():
    a = load_celltypist_sample()[:40].copy()
    GeneMambaModel.setup_anndata(a, layer="counts")
    return a


def _tokens(model, adata):
    spec = model._tokenizer_for(adata)
    return spec(adata.layers["counts"])[0]


def test_tie_break_is_saved_and_reaches_the_tokenizer(adata, tmp_path):
    median = GeneMambaModel(adata, **TINY)
    rand = GeneMambaModel(adata, tie_break="random", **TINY)
    assert median._tokenizer_for(adata).tie_break == "median"
    assert not np.array_equal(_tokens(median, adata), _tokens(rand, adata))
    rand.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata, accelerator="cpu")
    assert loaded._config["tie_break"] == "random"
    np.testing.assert_array_equal(_tokens(loaded, adata), _tokens(rand, adata))


def test_model_saved_without_tie_break_loads_with_the_old_ranking(adata, tmp_path):
    old = GeneMambaModel(adata, **TINY)
    del old._config["tie_break"]  # what a model saved before the option existed holds
    old.save(tmp_path / "old")
    loaded = GeneMambaModel.load(tmp_path / "old", adata=adata, accelerator="cpu")
    assert loaded._config["tie_break"] == "median"
    np.testing.assert_array_equal(_tokens(loaded, adata), _tokens(GeneMambaModel(adata, **TINY), adata))


def test_unknown_tie_break_is_refused(adata):
    with pytest.raises(ValueError, match="tie_break"):
        GeneMambaModel(adata, tie_break="alphabetical", **TINY)
