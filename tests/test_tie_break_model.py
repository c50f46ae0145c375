"""GeneMambaModel(tie_break=...): the setting reaches the tokenizer, is saved, and old saves load as "median"."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.data.tokenize import TOKENIZER_SETTINGS, TokenizerSettings
from genemamba_scvi.datasets import load_celltypist_sample


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


def test_every_tokenizer_setting_is_saved_and_read_back(adata, tmp_path):
    """Each field of TokenizerSettings (the settings' one owner) set away from its default reaches config.json and
    comes back at load: a setting added there but not saved would fail here."""
    others = {"max_genes": 48, "tie_break": "random"}  # tokenization / unk_token: the published path, tested apart
    model = GeneMambaModel(adata, **{**TINY, **others})
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata, accelerator="cpu")
    saved = TokenizerSettings.from_config(loaded._config)
    assert set(TOKENIZER_SETTINGS) <= set(model._config)
    assert saved == TokenizerSettings.from_config(model._config) == TokenizerSettings(**others)
    np.testing.assert_array_equal(_tokens(loaded, adata), _tokens(model, adata))


def test_tokenizer_settings_name_what_is_wrong():
    assert TokenizerSettings.from_config({"d_model": 8}) == TokenizerSettings()  # older saves: the defaults
    for bad, match in (({"max_genes": 0}, "max_genes"), ({"max_genes": True}, "max_genes"),
                       ({"tokenization": "log1p"}, "tokenization"), ({"unk_token": 3}, "unk_token")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TokenizerSettings(**bad)


def test_settings_set_on_a_model_are_what_it_uses_and_saves(adata, tmp_path):
    """max_genes and min_gene_overlap have one copy, the configuration: setting them on a model changes its tokens
    and what it saves (the attribute and config.json disagreed before: a saved model forgot the new max_genes)."""
    model = GeneMambaModel(adata, **TINY)
    model.max_genes, model.min_gene_overlap = 24, 0.2
    assert model.tokenizer_settings == TokenizerSettings(max_genes=24)
    assert _tokens(model, adata).shape[1] == 24
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata, accelerator="cpu")
    assert (loaded.max_genes, loaded.min_gene_overlap) == (24, 0.2)
    np.testing.assert_array_equal(_tokens(loaded, adata), _tokens(model, adata))
    for name, bad in (("max_genes", 0), ("max_genes", 2.5), ("min_gene_overlap", 1.5), ("min_gene_overlap", True)):
        with pytest.raises(ValueError, match=name):
            setattr(model, name, bad)
    assert (model.max_genes, model.min_gene_overlap) == (24, 0.2)  # a refused value changes nothing
    assert "top-24 genes" in model._model_summary_string  # what repr(model) prints
    variant = copy.copy(model)  # review: a shallow copy shared the settings with its original
    variant.max_genes, variant.min_gene_overlap = 32, 0.9
    assert (model.max_genes, model.min_gene_overlap) == (24, 0.2) and "top-24 genes" in model._model_summary_string
    # session 30: a panel (fewer genes than max_genes) is read whole, and the summary says so
    n_genes = len(model.vocab_.genes)
    model.max_genes = n_genes + 1000
    assert f"all expressed genes of {n_genes}," in model._model_summary_string and "top-" not in repr(model)
    model.max_genes = 24
    assert "top-24 genes," in model._model_summary_string
    # scvi-habits probe (session 33): the summary said "backend auto"; it now says what runs where
    assert model._model_summary_string.endswith(", backend torch")  # as configured
    from genemamba_scvi.model._model import _backend_summary

    assert _backend_summary("auto").startswith("backend auto (torch on a CPU, ")
