"""A scvi-tools user's first hour (issue 17): each path that used to fail, on real cells with a tiny model.

Data: 64 real PBMCs of scanpy's ``pbmc68k_reduced`` with integer counts recovered
(``datasets.load_pbmc68k_counts``) and their labels; the model is 1 layer x d_model 16, untrained unless a
test trains it for one epoch.
"""

from __future__ import annotations

import logging
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_pbmc68k_counts
from genemamba_scvi.io import read_checkpoint, write_checkpoint

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 16}
_ELBO_KEYS = ("elbo", "reconstruction_loss", "kl_local", "kl_global")


@pytest.fixture(scope="module")
def cells():
    adata = load_pbmc68k_counts()
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 64, replace=False)].copy()
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str)
    return adata


@pytest.fixture(scope="module")
def model_and_data(cells):
    scvi.settings.seed = 0
    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    return GeneMambaModel(adata, **TINY), adata


@pytest.fixture(scope="module")
def trained(cells):
    """Pre-trained for one epoch, then a classifier on integer labels for one epoch."""
    scvi.settings.seed = 0
    adata = cells.copy()
    adata.obs["type_id"] = pd.factorize(adata.obs["cell_type"], sort=True)[0] + 10  # integer labels 10, 11, ...
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    model.train(max_epochs=1, gene_sets="kegg", **TRAIN)
    model.train_classifier(labels_key="type_id", max_epochs=1, lr=3e-3, **TRAIN)
    return model, adata


def _fresh(adata: ad.AnnData) -> ad.AnnData:
    """The same cells and genes as a new AnnData that was never set up."""
    return ad.AnnData(X=adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy(), layers=dict(adata.layers))


# ------------------------------------------------------------------ 2: load into a copy
def test_load_into_a_copy_and_a_permuted_copy(model_and_data, tmp_path):
    model, adata = model_and_data
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata.copy())
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)
    perm = np.random.default_rng(1).permutation(adata.n_vars)
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata[:, perm].copy())
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)
    # the original AnnData is still registered with the first model
    np.testing.assert_array_equal(model.get_latent_representation(adata), z)


# ------------------------------------------------------------------ 3: a query with a subset of the genes
def test_query_copy_with_a_subset_of_the_genes(model_and_data):
    model, adata = model_and_data
    genes = adata.var_names[::2]
    z_copy = model.get_latent_representation(adata[:, genes].copy())
    z_fresh = model.get_latent_representation(_fresh(adata[:, genes]))
    assert z_copy.shape == (adata.n_obs, 16)
    np.testing.assert_array_equal(z_copy, z_fresh)


# ------------------------------------------------------------------ 4: float16 dense and csr_array layers
@pytest.mark.parametrize(
    "convert",
    [lambda m: m.toarray().astype(np.float16), lambda m: sp.csr_array(m)],
    ids=["dense_float16", "csr_array"],
)
def test_float16_and_sparse_array_layers(model_and_data, convert):
    model, adata = model_and_data
    z = model.get_latent_representation()
    other = _fresh(adata)
    other.layers["counts"] = convert(other.layers["counts"])
    GeneMambaModel.setup_anndata(other, layer="counts")
    np.testing.assert_array_equal(model.get_latent_representation(other), z)
    own = GeneMambaModel(other, **TINY)  # medians and vocabulary computed from that layer
    np.testing.assert_array_equal(own.gene_medians_, model.gene_medians_)


# ------------------------------------------------------------------ 5: cells with no known gene
def test_cell_with_counts_only_in_unknown_genes_is_refused(model_and_data):
    model, adata = model_and_data
    extra = sp.csr_matrix(np.ones((adata.n_obs, 2), dtype=np.float32))
    counts = sp.hstack([adata.layers["counts"], extra]).tocsr().tolil()
    counts[5, : adata.n_vars] = 0  # cell 5 keeps counts only in the two unknown genes
    query = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(index=adata.obs_names),
        var=pd.DataFrame(index=[*adata.var_names, "NOT_A_GENE_1", "NOT_A_GENE_2"]),
    )
    query.layers["counts"] = query.X.copy()
    with pytest.warns(UserWarning, match="not in the model's vocabulary"):
        with pytest.raises(ValueError, match=rf"1 of {adata.n_obs} cells .*only in genes that are not in"):
            model.get_latent_representation(query)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        z = model.get_latent_representation(query, indices=[0, 1, 2])  # the other cells still embed
    assert np.abs(z).sum(axis=1).min() > 0
    assert not [w for w in again if "vocabulary" in str(w.message)]  # the genes were reported once, not each call


# ------------------------------------------------------------------ 6: integer labels
def test_integer_labels_predict_integers(trained, tmp_path):
    model, adata = trained
    pred = model.predict()
    assert np.issubdtype(pred.dtype, np.integer)
    assert set(pred) <= set(adata.obs["type_id"])
    assert (pred == adata.obs["type_id"].to_numpy()).mean() > 0  # comparable with the obs column
    soft = model.predict(soft=True)
    assert list(soft.columns) == sorted(adata.obs["type_id"].unique())
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.predict(), pred)


def test_string_labels_still_predict_strings(model_and_data):
    from genemamba_scvi.model import _label_codes

    codes, names = _label_codes(pd.Series(["b", "a", "b"], dtype="category"))
    assert names == ["a", "b"] and codes.tolist() == [1, 0, 1]
    codes, names = _label_codes(pd.Series([3, 1, 3]))
    assert names == [1, 3] and isinstance(names[0], int)


# ------------------------------------------------------------------ 7: save(overwrite=True) keeps user files
def test_overwrite_keeps_the_users_other_files(model_and_data, tmp_path):
    model, adata = model_and_data
    target = tmp_path / "m"
    model.save(target)
    (target / "notes.txt").write_text("precious")
    (target / "figures").mkdir()
    (target / "figures" / "umap.png").write_bytes(b"\x89PNG user figure")
    model.save(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "precious"
    assert (target / "figures" / "umap.png").read_bytes() == b"\x89PNG user figure"
    np.testing.assert_array_equal(
        GeneMambaModel.load(target, adata=adata).get_latent_representation(), model.get_latent_representation()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left behind


def test_overwrite_into_a_plain_directory_keeps_it_and_refuses_name_clashes(model_and_data, tmp_path):
    model, adata = model_and_data
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.csv").write_text("a,b\n1,2\n")
    model.save(results, overwrite=True)  # scvi-tools writes into an existing directory as well
    assert (results / "table.csv").read_text() == "a,b\n1,2\n"
    assert GeneMambaModel.load(results, adata=adata) is not None

    other = tmp_path / "project"
    other.mkdir()
    (other / "config.json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match=r"refusing to overwrite config\.json"):
        model.save(other, overwrite=True)
    assert (other / "config.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


# ------------------------------------------------------------------ 8: near-integer values shown exactly
def test_near_integer_value_is_shown_with_its_digits(cells):
    adata = cells.copy()
    adata.layers["counts"] = adata.layers["counts"].copy()
    adata.layers["counts"].data[0] = np.float32(1.0000001)
    with pytest.raises(ValueError, match=r"non-integer values \(e\.g\. 1\.0000001, 1\.2e-07 from the nearest"):
        GeneMambaModel.setup_anndata(adata, layer="counts")


# ------------------------------------------------------------------ 9: view_anndata_setup and history
def test_view_anndata_setup_runs(model_and_data, capsys):
    model, adata = model_and_data
    model.view_anndata_setup()
    model.view_anndata_setup(adata)
    assert "Data Registry" in capsys.readouterr().out


def test_history_logs_what_the_model_optimises(trained):
    model, _ = trained
    keys = set(model.history)
    assert {"train_loss", "lm_loss_train", "mlm_accuracy_train", "pathway_loss_train"} <= keys
    assert {"classification_loss_train", "accuracy_train"} <= keys  # added by train_classifier
    assert not [k for k in keys if k.startswith(_ELBO_KEYS)]
    assert len(model.history["train_loss"]) == 2  # one epoch of each run
    acc = model.history["mlm_accuracy_train"].to_numpy()
    assert ((acc >= 0) & (acc <= 1)).all()


def test_history_survives_save_and_load(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    assert set(loaded.history) == set(model.history)
    for key, frame in model.history.items():
        pd.testing.assert_frame_equal(loaded.history[key], frame.astype(np.float64), check_index_type=False)


def test_model_saved_without_history_still_loads(model_and_data, tmp_path):
    model, adata = model_and_data
    model.save(tmp_path / "m")
    ckpt = read_checkpoint(tmp_path / "m")
    extra = {k: v for k, v in ckpt.extra.items() if k != "history"}  # as written before history was kept
    write_checkpoint(tmp_path / "old", ckpt.state_dict, ckpt.config, ckpt.vocab, ckpt.gene_medians, extra)
    loaded = GeneMambaModel.load(tmp_path / "old", adata=adata)
    assert loaded.history is None
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


# ------------------------------------------------------------------ console: progress within the epoch, logs once
def test_progress_bar_moves_every_step_and_lightning_logs_once(cells, monkeypatch, capsys):
    adata = cells[:48].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    # the state Lightning is in when the root logger had a handler at import (logging.basicConfig, notebooks)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "handlers", [])
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handlers = [(logging.getLogger("lightning"), Collect()), (logging.getLogger(), Collect())]
    for lg, h in handlers:
        lg.addHandler(h)
    try:
        model.train(max_epochs=2, accelerator="cpu", batch_size=16, train_size=1.0)
    finally:
        for lg, h in handlers:
            lg.removeHandler(h)
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and "6/6" in out  # 3 minibatches per epoch, counted step by step
    assert sum("GPU available" in m for m in seen) == 1
    assert not [m for m in seen if "Tip: " in m]


# ------------------------------------------------------------------ session 11 audit: queries' genes, load and save
def test_query_with_more_genes_than_the_model_is_embedded_as_the_filtered_cells(cells, tmp_path):
    """A model set up on filtered genes takes the full matrix (the extra genes are ignored, not a poor overlap)."""
    scvi.settings.seed = 0
    full = cells.copy()
    counts = full.layers["counts"]
    keep = np.asarray((counts > 0).sum(axis=0)).ravel() >= 32  # as sc.pp.filter_genes(min_cells=32)
    assert 0.1 < keep.mean() < 0.5  # most genes dropped: the full matrix has under half its genes in the vocab
    filtered = full[:, keep].copy()
    GeneMambaModel.setup_anndata(filtered, layer="counts")
    model = GeneMambaModel(filtered, **TINY)
    with pytest.warns(UserWarning, match="not in the model's vocabulary") as rec:  # the extra genes, named
        z_full = model.get_latent_representation(_fresh(full))
    np.testing.assert_array_equal(z_full, model.get_latent_representation())
    assert {w.filename for w in rec} == {__file__}  # the warning points at the user's call
    model.save(tmp_path / "m")
    with pytest.warns(UserWarning, match="not in the model's vocabulary"):
        loaded = GeneMambaModel.load(tmp_path / "m", adata=_fresh(full))  # loading onto the full matrix too
    np.testing.assert_array_equal(loaded.get_latent_representation(), z_full)


def test_query_missing_most_of_the_models_genes_is_warned_and_wrong_ids_refused(model_and_data):
    model, adata = model_and_data
    few = _fresh(adata[:, : adata.n_vars // 20])
    with pytest.warns(UserWarning, match=r"holds \d+ of the \d+ genes the model was set up with"):
        z = model.get_latent_representation(few)
    assert np.isfinite(z).all()
    with warnings.catch_warnings(record=True) as caught:  # once per model and gene list (was at every call)
        warnings.simplefilter("always")
        model.get_latent_representation(_fresh(few))
    assert not [w for w in caught if "genes the model was set up with" in str(w.message)]
    wrong = _fresh(adata)
    wrong.var_names = [f"{g}_x{i}" if i % 10 else g for i, g in enumerate(adata.var_names)]  # 90% unknown ids
    with pytest.raises(ValueError, match=r"do not fit the model.*min_gene_overlap"):
        model.get_latent_representation(wrong)
    wrong.var_names = [f"{g}_x" for g in adata.var_names]  # none known: the ids are wrong, not the threshold
    with pytest.raises(ValueError, match=r"0 of \d+ var_names of this AnnData match the model's vocabulary") as err:
        model.get_latent_representation(wrong)
    assert "min_overlap" not in str(err.value)


def test_load_takes_min_gene_overlap_and_refuses_unknown_keywords(model_and_data, tmp_path):
    model, adata = model_and_data
    model.save(tmp_path / "nested" / "dirs" / "m")  # missing parents are created, as scvi-tools does
    model.save(tmp_path / "p", prefix="pre_")
    assert (tmp_path / "p" / "pre_model" / "config.json").is_file()
    loaded = GeneMambaModel.load(tmp_path / "nested" / "dirs" / "m", adata=adata.copy(), min_gene_overlap=0.1)
    assert loaded.min_gene_overlap == 0.1
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['min_overlap'\\]"):
        GeneMambaModel.load(tmp_path / "p", adata=adata.copy(), prefix="pre_", min_overlap=0.1)
    GeneMambaModel.load(tmp_path / "p", adata=adata.copy(), prefix="pre_", allowed_classes_names_list=None)  # scvi's

    def few():  # 20% of the model's genes, 80% unknown ids: both shares below 50% -> refused, unless lowered
        out = _fresh(adata)
        out.var_names = [g if i % 5 == 0 else f"{g}_x" for i, g in enumerate(adata.var_names)]
        return out

    with pytest.raises(ValueError, match="do not fit the model"):
        GeneMambaModel.load(tmp_path / "p", adata=few(), prefix="pre_")
    with pytest.warns(UserWarning, match="genes the model was set up with"):
        GeneMambaModel.load(tmp_path / "p", adata=few(), prefix="pre_", min_gene_overlap=0.1)


def test_query_without_counts_where_the_model_reads_them_says_where_to_put_them(model_and_data):
    model, adata = model_and_data
    query = _fresh(adata)
    query.layers["counts"] = query.layers["counts"].astype(np.float32) * 0.5  # halves: not counts
    with pytest.raises(ValueError, match=r"set up to read adata\.layers\['counts'\], so a query AnnData") as err:
        model.get_latent_representation(query)
    assert "layer=..." not in str(err.value)  # no advice the query path cannot take


def test_query_error_shows_the_copy_from_where_the_query_holds_counts(model_and_data):
    model, adata = model_and_data
    query = _fresh(adata)
    query.layers["raw"] = query.layers.pop("counts")  # the counts under another layer name
    query.X = query.layers["raw"].astype(np.float32) * 0.5
    with pytest.raises(
        ValueError, match=r"no such layer.*e\.g\. adata\.layers\['counts'\] = adata\.layers\['raw'\]\.copy\(\)"
    ):
        model.get_latent_representation(query)
    query.layers["counts"] = query.X.copy()  # the layer exists but holds no counts
    with pytest.raises(
        ValueError, match=r"so a query AnnData.*e\.g\. adata\.layers\['counts'\] = adata\.layers\['raw'\]"
    ):
        model.get_latent_representation(query)
    query.layers["counts"] = query.layers["raw"].copy()  # the advice followed
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(adata), atol=1e-6
    )


def test_small_run_has_no_logging_interval_or_empty_validation_warning(cells):
    """Lightning's "smaller than the logging interval" warning is not shown for an epoch of a few minibatches."""
    adata = cells[:48].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, **TRAIN)
    assert not [w for w in caught if "logging interval" in str(w.message)]
    assert model.trainer.log_every_n_steps == 3  # 48 cells x 0.9 -> 43 training cells, 16 a minibatch
    with warnings.catch_warnings(record=True) as caught:  # all cells in training: no validation loop, no warning
        warnings.simplefilter("always")
        model.train(max_epochs=1, **{**TRAIN, "train_size": 1.0})
    assert not [w for w in caught if "logging interval" in str(w.message) or "Total length" in str(w.message)]
    assert "train_loss" in model.history
    with pytest.raises(ValueError, match="early_stopping=True monitors the validation loss"):
        model.train(max_epochs=1, early_stopping=True, **{**TRAIN, "train_size": 1.0})
    # 5 cells at the default 0.9 keep all 5 for training: the advice names a train_size that holds one out
    few = adata[:5].copy()
    GeneMambaModel.setup_anndata(few, layer="counts")
    small = GeneMambaModel(few, **TINY)
    with pytest.raises(ValueError, match=r"split of 5 cells .* pass train_size=0.8 or less") as err:
        small.train(max_epochs=1, early_stopping=True, **TRAIN)
    small.train(max_epochs=1, early_stopping=True, **{**TRAIN, "train_size": 0.8})  # the advice works
    assert "e.g. 0.9" not in str(err.value)


def test_indices_outside_the_cells_are_named(model_and_data):
    model, adata = model_and_data
    with pytest.raises(IndexError, match=rf"outside the AnnData's {adata.n_obs} cells.*\[{adata.n_obs + 5}\]"):
        model.get_latent_representation(indices=[0, adata.n_obs + 5])
    with pytest.raises(TypeError, match="integer positions"):
        model.get_latent_representation(indices=[0.5, 1.0])
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[1, 3]] = True  # a boolean mask, as scvi-tools takes
    np.testing.assert_array_equal(model.get_latent_representation(indices=mask),
                                  model.get_latent_representation(indices=[1, 3]))  # fmt: skip
    np.testing.assert_array_equal(model.get_latent_representation(indices=[-1]),
                                  model.get_latent_representation(indices=[adata.n_obs - 1]))  # fmt: skip
    with pytest.raises(IndexError, match="one entry per cell"):
        model.get_latent_representation(indices=mask[:-1])
    np.testing.assert_array_equal(model.get_latent_representation(indices=[3, 1]),
                                  model.get_latent_representation()[[3, 1]])  # fmt: skip


def test_model_set_up_with_a_gene_id_column_embeds_queries_by_their_var_names(cells, tmp_path):
    """10x-style data: symbols in var_names, Ensembl ids in var["gene_ids"]; a query without that column (symbols
    or versioned Ensembl ids as var_names) is matched through its var_names instead of failing."""
    from genemamba_scvi.datasets import load_gene_id_table

    table = load_gene_id_table()
    one_to_one = table[~table["symbol"].duplicated(keep=False) & ~table["ensembl_id"].duplicated(keep=False)]
    ensembl = dict(zip(one_to_one["symbol"], one_to_one["ensembl_id"], strict=True))
    adata = cells[:, [g in ensembl for g in cells.var_names]].copy()
    assert adata.n_vars > 600  # most of the 765 genes
    adata.var["gene_ids"] = [ensembl[g] for g in adata.var_names]
    scvi.settings.seed = 0
    GeneMambaModel.setup_anndata(adata, layer="counts", gene_id_key="gene_ids")
    model = GeneMambaModel(adata, **TINY)
    assert model.vocab_.genes[0].startswith("ENSG")  # the vocabulary holds the Ensembl ids
    expected = model.get_latent_representation()

    by_symbol = _fresh(adata)  # the column dropped: symbols in var_names
    np.testing.assert_allclose(model.get_latent_representation(by_symbol), expected, atol=1e-6)
    by_versioned_id = _fresh(adata)
    by_versioned_id.var_names = [f"{e}.7" for e in adata.var["gene_ids"]]
    np.testing.assert_allclose(model.get_latent_representation(by_versioned_id), expected, atol=1e-6)
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=_fresh(adata))
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-6)


def test_load_and_from_pretrained_take_a_view_as_queries_do(model_and_data, tmp_path):
    # docs/api.md: "a view (query[:100]) becomes an AnnData of its own"; load / from_pretrained raised scvi's
    # "Please run adata = adata.copy()"
    model, adata = model_and_data
    model.save(tmp_path / "m")
    view = adata[:10]
    loaded = GeneMambaModel.load(tmp_path / "m", adata=view)
    assert not view.is_view and loaded.adata is view
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(adata[:10].copy()))


def test_embedding_one_cell_gives_no_training_warning(model_and_data):
    model, adata = model_and_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_latent_representation(adata[[5]].copy())
    assert not [w for w in caught if "fewer than 3 cells" in str(w.message)]


def test_embedding_with_an_untrained_model_warns(cells):
    # scvi-tools raises "Trying to query inferred values from an untrained model"; a notebook whose train cell was
    # skipped got random-weight embeddings silently
    adata = cells[:20].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with pytest.warns(UserWarning, match=r"not trained \(model.is_trained is False\)"):
        model.get_latent_representation()
    model.train(max_epochs=1, **TRAIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_latent_representation()
    assert not [w for w in caught if "not trained" in str(w.message)]


def test_a_head_on_a_never_trained_frozen_encoder_still_warns_and_survives_a_reload(cells, tmp_path):
    # train_classifier(freeze_encoder=True) first set is_trained, so random-weight embeddings (and gene embeddings)
    # came without the warning; a fine-tuned encoder or a train() afterwards makes it go away
    adata = cells[:40].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    model.train_classifier("cell_type", max_epochs=1, freeze_encoder=True, **TRAIN)
    assert model.is_trained
    with pytest.warns(UserWarning, match=r"only this GeneMambaModel's cell-type head is trained"):
        model.get_latent_representation()
    with pytest.warns(UserWarning, match=r"cell-type head is trained"):
        model.get_gene_embeddings()
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    with pytest.warns(UserWarning, match=r"cell-type head is trained"):
        loaded.get_latent_representation()
    loaded.train(max_epochs=1, **TRAIN)
    loaded.train_classifier("cell_type", max_epochs=1, freeze_encoder=True, **TRAIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.get_latent_representation()
    assert not [w for w in caught if "randomly initialised" in str(w.message)]


def test_a_failed_run_raises_its_error_without_scvi_tools_nameerror_line(cells, capsys):
    import lightning.pytorch as pl

    class Crash(pl.Callback):
        def on_train_batch_start(self, *args):
            raise RuntimeError("crash for the test")

    adata = cells[:20].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with pytest.raises(RuntimeError, match="crash for the test"):
        model.train(max_epochs=1, callbacks=[Crash()], **TRAIN)
    out = capsys.readouterr()
    assert "Exception raised during training" not in out.out + out.err  # scvi-tools printed "<class 'NameError'>"
    assert not model.is_trained
    model.train(max_epochs=1, **TRAIN)
    assert model.is_trained and model.train_indices is not None


def test_training_under_ddp_as_the_error_for_several_devices_advises(tmp_path):
    # devices=2 asks for strategy="ddp"; with it, Lightning rebuilt TokenDataLoader to add its own sampler and failed;
    # and with a head, DDP failed on parameters without gradient
    # ("more than one __init__ argument ... batch_sampler"). A subprocess: the process group stays out of this one.
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(
        "import warnings; warnings.filterwarnings('ignore')\n"
        "from genemamba_scvi import GeneMambaModel, datasets\n"
        "if __name__ == '__main__':\n"
        "    adata = datasets.load_pbmc68k_counts()[:64].copy()\n"
        "    GeneMambaModel.setup_anndata(adata, layer='counts', labels_key='bulk_labels')\n"
        "    model = GeneMambaModel(adata, n_layers=1, d_model=32, max_genes=64)\n"
        "    run = dict(max_epochs=1, accelerator='cpu', devices=2, strategy='ddp', enable_progress_bar=False)\n"
        "    model.train(**run)\n"
        "    model.train_classifier('bulk_labels', freeze_encoder=True, **run)  # an unused encoder under DDP\n"
        "    model.train(**run)  # an unused head\n"
        "    print(f'rank {model.trainer.global_rank} trained {model.is_trained}', flush=True)\n"
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(  # in tmp_path: scvi-tools' Trainer keeps a DDP run's history in ./lightning_logs
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # the two processes write to one pipe: each line goes in one write (flush=True of a block-buffered pipe), as
    # print's pieces interleaved once ("rankrank 1 trained True\n 0 trained True")
    lines = sorted(line for line in run.stdout.splitlines() if "trained" in line)
    assert lines == ["rank 0 trained True", "rank 1 trained True"], run.stdout


def test_a_home_relative_path_is_the_home_directory_not_a_folder_named_tilde(model_and_data, tmp_path, monkeypatch):
    # save("~/m") wrote ./~/m in the working directory (a later "rm -rf ~" away from disaster)
    model, adata = model_and_data
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model.save("~/models/m")
    assert (tmp_path / "home" / "models" / "m" / "config.json").is_file() and not (tmp_path / "~").exists()
    loaded = GeneMambaModel.load("~/models/m", adata=adata.copy())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(adata.copy()))


def test_a_file_name_instead_of_an_anndata_is_named(model_and_data):
    model, _ = model_and_data
    with pytest.raises(TypeError, match=r"adata must be an AnnData, got str 'cells.h5ad'; read the file with"):
        model.get_latent_representation("cells.h5ad")


def test_saving_onto_a_file_says_a_directory_is_needed(model_and_data, tmp_path):
    # "already exists; pass overwrite=True", then with it "refusing to overwrite ...: it is not a directory"
    model, _ = model_and_data
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"notes.txt is a file; a .* is a directory"):
            model.save(tmp_path / "notes.txt", overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_save_with_the_anndata_refuses_an_anndata_that_lost_its_counts(cells, tmp_path):
    # normalize_total + log1p in place after setup: save(save_anndata=True) wrote a directory load refused
    import scanpy as sc

    adata = cells[:24].copy()
    adata.X = adata.layers["counts"].copy()
    del adata.layers["counts"]
    GeneMambaModel.setup_anndata(adata)
    model = GeneMambaModel(adata, **TINY)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(ValueError, match=r"no longer holds raw counts in adata.X .* save without save_anndata"):
        model.save(tmp_path / "m", save_anndata=True)
    assert not (tmp_path / "m").exists()
    model.save(tmp_path / "m")  # the weights alone are fine


def test_csc_counts_are_read_as_csr_once_per_loader_with_the_same_embeddings(model_and_data):
    # rows of a CSC matrix cost a pass over all of it: every minibatch was O(nnz), an epoch O(cells x nnz)
    model, adata = model_and_data
    query = _fresh(adata)
    query.layers["counts"] = sp.csc_matrix(query.layers["counts"])
    loader = model._token_loader(query, [5, 1, 5, 3], batch_size=4)
    assert loader._local_rows is not None and loader._local_rows.format == "csr"
    batch = next(iter(loader))
    assert batch["ind_x"].tolist() == [5, 1, 5, 3]
    csr = model._token_loader(adata, [5, 1, 5, 3], batch_size=4)
    assert csr._local_rows is None
    assert torch.equal(batch["tokens"], next(iter(csr))["tokens"])
    perm = np.random.default_rng(0).permutation(query.n_obs)
    np.testing.assert_array_equal(
        model.get_latent_representation(query, indices=perm), model.get_latent_representation(adata, indices=perm)
    )


def test_power_user_settings_that_would_train_nothing_or_the_wrong_thing_are_refused():
    # user probe: pooling='cls' of a causal, 0-layer or identity-layer model embedded every cell identically; a
    # ranked model's unk_token took a real gene out of the targets; one usable gene set made the pathway loss 0;
    # gene_sets as a list or with strings failed inside or letter by letter; numpy bools were refused; gamma=inf
    # passed the check and stopped at step 0 with advice about the learning rate
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.nn import GeneMambaConfig

    for kw, why in (
        ({"bidirectional": False}, "a causal scan"),
        ({"n_layers": 0}, "no layer"),
        ({"block": "official_identity"}, "layers that return their input"),
    ):
        with pytest.raises(ValueError, match=rf"pooling='cls' takes the state of the <cls> token .*{why}"):
            GeneMambaConfig(pooling="cls", **kw)
    assert GeneMambaConfig(bidirectional=np.False_).bidirectional is False
    adata = load_celltypist_sample()[:48].copy()
    del adata.layers["counts"]
    GeneMambaModel.setup_anndata(adata)
    with pytest.raises(ValueError, match=r"unk_token='CD3E' applies to tokenization='published' only"):
        GeneMambaModel(adata, n_layers=1, d_model=32, max_genes=64, unk_token="CD3E")
    model = GeneMambaModel(adata, n_layers=1, d_model=32, max_genes=64)
    run = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}
    with pytest.raises(ValueError, match=r"only one gene set \('T'\) has two or more genes .*needs two or more"):
        model.train(gene_sets={"T": ["CD3E", "CD3D", "LCK"], "typo": ["CD3EE", "NOTAGENE"]}, **run)
    with pytest.raises(TypeError, match=r"gene_sets must be 'go_bp', 'kegg', a .gmt path or .*got a list"):
        model.train(gene_sets=[["CD3E", "CD3D"], ["CD19", "MS4A1"]], **run)
    with pytest.raises(TypeError, match=r"gene_sets\['t'\] must be a list of genes, got 'CD3E'"):
        model.train(gene_sets={"t": "CD3E", "b": "CD19"}, **run)
    with pytest.raises(ValueError, match=r"gene_sets is an empty mapping"):
        model.train(gene_sets={}, **run)
    with pytest.raises(ValueError, match=r"must be a finite number >= 0, got inf"):
        model.train(gene_sets="kegg", gamma=float("inf"), **run)
    with pytest.warns(UserWarning, match=r"1 of the 3 gene sets have fewer than two genes .*\['typo'\]"):
        model.train(gene_sets={"T": ["CD3E", "CD3D"], "B": ["CD79A", "MS4A1"], "typo": ["CD3EE"]}, **run)
    # gene probe (session 24): generators as members; most of a large collection unmatched (e.g. Entrez ids) is told
    model.train(gene_sets={"T": (g for g in ["CD3E", "CD3D"]), "B": (g for g in ["CD79A", "MS4A1"])}, **run)
    entrez = {f"S{i}": [str(1000 + i), str(2000 + i)] for i in range(148)}
    many = {"T": ["CD3E", "CD3D"], "B": ["CD79A", "MS4A1"], **entrez}
    with pytest.warns(UserWarning, match=r"148 of the 150 gene sets .*\(2 used; are the sets' gene ids"):
        model.train(gene_sets=many, **run)
    assert model.module.pathway_loss is not None and model.history["pathway_loss_train"].to_numpy().min() > 0


def test_saving_an_anndata_onto_a_disk_without_room_is_refused_before_writing(
    sample48_model, tmp_path, monkeypatch, capsys
):
    # user probe: a full disk during save(save_anndata=True) or `genemamba embed` crashed Python (h5py segfault),
    # killing a notebook's kernel with the trained model, and left a hidden temporary folder filling the disk
    import collections
    import shutil

    from genemamba_scvi.cli import main

    model, adata = sample48_model
    model.save(tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"not enough free space in .* to write the model's AnnData .* MB needed"):
        model.save(tmp_path / "m", save_anndata=True, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = tmp_path / "out.h5ad"
    embedded = []  # backed probe (session 28): the check came after the whole embedding, and its numbers were lost
    monkeypatch.setattr(type(model), "get_latent_representation", lambda *a, **k: embedded.append(1))
    assert main(["embed", str(tmp_path / "cells.h5ad"), "--model", str(tmp_path / "m"), "--layer", "counts",
                 "--out", str(out), "--quiet"]) == 1  # fmt: skip
    assert not out.exists() and not embedded
    assert re.search(r"not enough free space in .* MB needed, 0 MB free", capsys.readouterr().err)


def test_the_free_space_check_does_not_underestimate_a_compressed_file(tmp_path):
    # pipeline probe: the estimate (an eighth of the matrices in memory) was 1 MB for a 3.5 MB file, so a disk with
    # 1.5 MB free passed the check and h5py then crashed the process on the full disk
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.io._files import anndata_write_bytes

    full = load_celltypist_sample()  # X and a counts layer
    logged = full.copy()  # review: scanpy's convention, counts in .raw and log values in X (.raw was not counted)
    logged.raw = logged
    logged.X = np.log1p(logged.X)
    for adata, compression in ((full, "gzip"), (ad.AnnData(full.X), "gzip"), (logged, "gzip"), (full, "lzf"),
                               (full, None)):  # fmt: skip
        adata.write_h5ad(tmp_path / "a.h5ad", compression=compression)
        written = (tmp_path / "a.h5ad").stat().st_size
        assert written <= anndata_write_bytes(adata, compression) <= 2 * written, compression  # high side, not absurd


def test_queries_are_not_kept_alive_by_the_model(sample48_model):
    # serving probe: scvi-tools' stores kept every query AnnData a model embedded (30 requests of 50 cells: +247 MB,
    # growing without end); now the latest query stays registered (scvi-tools' lookups work on it), earlier ones go,
    # a query shared by threads is never dropped under a running call, and the user's own set-up is kept (review)
    import gc
    import threading
    import weakref

    import anndata as ad

    from genemamba_scvi import GeneMambaModel

    model, adata = sample48_model
    full = model.get_latent_representation()
    stores = (GeneMambaModel._setup_adata_manager_store, GeneMambaModel._per_instance_manager_store[model.id])
    sizes = [len(s) for s in stores]
    gone = []
    for i in range(4):
        query = ad.AnnData(adata.layers["counts"][i : i + 3].copy(), var=adata.var.copy())
        query.layers["counts"] = query.X
        np.testing.assert_allclose(model.get_latent_representation(query), full[i : i + 3], atol=1e-5)
        gone.append(weakref.ref(query))
        del query
        model.get_latent_representation(adata[i : i + 2])  # a view of the model's own cells
    gc.collect()
    assert [len(s) for s in stores] <= [n + 1 for n in sizes]  # the latest query (a view's copy) at most
    assert all(ref() is None for ref in gone)
    last = adata[:6].copy()
    z = model.get_latent_representation(last)
    assert model.get_anndata_manager(last) is not None  # scvi-tools' lookups work on the latest query
    np.testing.assert_array_equal(model.get_latent_representation(last), z)
    errors = []

    def embed(rows):
        try:
            for _ in range(5):
                model.get_latent_representation(shared, indices=rows)
        except Exception as err:  # any error of a thread is the failure
            errors.append(err)

    for _ in range(3):  # threads sharing one new query: a call ending never drops it under another
        shared = adata[10:22].copy()
        threads = [threading.Thread(target=embed, args=([j, j + 4],)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:1]
    mine = adata[:5].copy()  # set up by the user with labels: kept as the user set it up
    mine.obs["lab"] = "a"
    GeneMambaModel.setup_anndata(mine, layer="counts", labels_key="lab")
    uuid = mine.uns["_scvi_uuid"]
    model.get_latent_representation(mine)
    assert GeneMambaModel._setup_adata_manager_store[uuid].registry["setup_args"]["labels_key"] == "lab"
    assert model.adata is adata and model.get_latent_representation().shape == full.shape


def test_a_served_gene_list_is_matched_once_and_its_settings_still_count(sample48_model):
    # serving probe: each 1-cell request matched its 32k genes afresh (most of its time); the model now keeps the
    # match of its last gene lists, keyed by what decides it
    import warnings

    import anndata as ad

    from genemamba_scvi.model import _genes

    model, adata = sample48_model
    model.__dict__.pop("_gene_match_cache", None)  # (the fixture's model is shared: earlier tests matched these genes)
    query = ad.AnnData(adata.layers["counts"][:3].copy(), var=adata.var[[]].copy())
    query.layers["counts"] = query.X
    calls = []
    real = _genes._match_query_genes

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    _genes._match_query_genes, saved = counted, _genes._match_query_genes
    try:
        first = model.get_latent_representation(query)
        again = model.get_latent_representation(query.copy())
        assert len(calls) == 1
        np.testing.assert_array_equal(first, again)
        overlap = model.min_gene_overlap
        model.min_gene_overlap = 1.0  # a setting of the match: matched again, and refused by it
        sub = query.copy()  # half of its genes unknown to the model, half of the model's genes missing
        sub.var_names = [f"NOT_A_GENE{i}" if i % 2 else g for i, g in enumerate(query.var_names)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="do not fit the model"):
                model.get_latent_representation(sub)
        model.min_gene_overlap = overlap
        assert len(calls) == 2
        medians = model.gene_medians_.copy()
        model.gene_medians_[:] = np.nan  # edited in place (review): the coverage check must see it
        model.gene_medians_[0] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match="do not fit the model"):
                model.min_gene_overlap = 1.0
                model.get_latent_representation(sub)
        model.gene_medians_[:] = medians
        model.min_gene_overlap = overlap
        calls.clear()
        for i in range(10):  # the hot list stays matched among eight others (least recently used goes first)
            model.get_latent_representation(query)
            other = query.copy()
            other.var_names = [f"{g}_x{i}" if j == 0 else g for j, g in enumerate(query.var_names)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.get_latent_representation(other)
        assert len(calls) == 10  # the ten other lists only
    finally:
        _genes._match_query_genes = saved
