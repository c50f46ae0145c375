"""What scvi-tools users type, run against GeneMamba (session 16): each of these failed or misled before.

Data: 64 real PBMCs of scanpy's ``pbmc68k_reduced`` with integer counts recovered (``datasets.load_pbmc68k_counts``);
the model is the tests' tiny one, untrained unless a test trains it for a step or two.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_pbmc68k_counts
from genemamba_scvi.io import ANNDATA_FILE, read_checkpoint
from genemamba_scvi.train import GeneMambaTrainingPlan

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 16, "max_steps": 2}


@pytest.fixture(scope="module")
def cells():
    adata = load_pbmc68k_counts()
    adata = adata[np.random.default_rng(1).choice(adata.n_obs, 64, replace=False)].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    return adata


@pytest.fixture(scope="module")
def model_and_data(cells):
    scvi.settings.seed = 0
    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", batch_key="batch")
    return GeneMambaModel(adata, **TINY), adata


class _Capture(Exception):
    pass


_CONFIGURE = GeneMambaTrainingPlan.configure_optimizers


def _optimizer_of(model, monkeypatch, **train_kwargs):
    """The AdamW that ``model.train(**train_kwargs)`` builds (training stops right after it is configured)."""
    seen = {}

    def capture(plan):
        seen["opt"] = _CONFIGURE(plan)["optimizer"]
        raise _Capture

    monkeypatch.setattr(GeneMambaTrainingPlan, "configure_optimizers", capture)
    with pytest.raises(_Capture):
        model.train(max_epochs=1, **TRAIN, **train_kwargs)
    return seen["opt"]


# ------------------------------------------------------------------ plan_kwargs as scvi users pass them
def test_lr_in_plan_kwargs_wins_as_in_scvi(model_and_data, monkeypatch):
    model, _ = model_and_data
    opt = _optimizer_of(model, monkeypatch, lr=1e-3, plan_kwargs={"lr": 3e-4})
    assert opt.defaults["lr"] == pytest.approx(3e-4)


def test_adamw_epsilon_is_torchs_default_not_scvis(model_and_data, monkeypatch):
    model, _ = model_and_data
    assert {g["eps"] for g in _optimizer_of(model, monkeypatch).param_groups} == {1e-8}
    assert {g["eps"] for g in _optimizer_of(model, monkeypatch, plan_kwargs={"eps": 1e-6}).param_groups} == {1e-6}


def test_unknown_plan_setting_and_other_optimizers_are_named(model_and_data):
    model, _ = model_and_data
    with pytest.raises(TypeError, match=r"unknown training-plan setting\(s\) \['learning_rate'\]"):
        model.train(max_epochs=1, plan_kwargs={"learning_rate": 1e-3}, **TRAIN)
    with pytest.raises(ValueError, match=r"AdamW .*optimizer='Adam'"):
        model.train(max_epochs=1, plan_kwargs={"optimizer": "Adam"}, **TRAIN)


def test_a_step_with_plan_kwargs_trains(model_and_data):
    model, _ = model_and_data
    before = model.module.encoder.embedding.weight.detach().clone()
    model.train(max_epochs=1, plan_kwargs={"lr": 1e-2, "weight_decay": 0.0, "warmup_fraction": 0.0}, **TRAIN)
    assert not torch.equal(before, model.module.encoder.embedding.weight.detach())


# ------------------------------------------------------------------ save_anndata / load without adata
def test_save_anndata_lets_load_run_without_adata(model_and_data, tmp_path):
    model, adata = model_and_data
    model.save(tmp_path / "m", save_anndata=True)
    assert ANNDATA_FILE in read_checkpoint(tmp_path / "m").files  # checksummed with the model
    loaded = GeneMambaModel.load(tmp_path / "m")
    assert loaded.adata.n_obs == adata.n_obs
    assert list(loaded.adata.obs_names) == list(adata.obs_names)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_save_anndata_passes_write_options_and_refuses_stray_keywords(model_and_data, tmp_path):
    model, _ = model_and_data
    model.save(tmp_path / "m", save_anndata=True, compression="gzip")
    assert GeneMambaModel.load(tmp_path / "m").adata.n_obs == 64
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['compression'\]"):
        model.save(tmp_path / "n", compression="gzip")
    assert not (tmp_path / "n").exists()


def test_overwrite_without_anndata_keeps_the_old_file_but_load_does_not_trust_it(model_and_data, tmp_path):
    model, adata = model_and_data
    target = tmp_path / "m"
    model.save(target, save_anndata=True)
    old = (target / ANNDATA_FILE).read_bytes()
    model.save(target, overwrite=True)  # a user's file is never lost ...
    assert (target / ANNDATA_FILE).read_bytes() == old
    with pytest.raises(ValueError, match=r"saved without its AnnData.*earlier save"):  # ... nor silently reused
        GeneMambaModel.load(target)
    assert GeneMambaModel.load(target, adata=adata) is not None


def test_load_without_adata_of_a_model_saved_without_it_says_what_to_do(model_and_data, tmp_path):
    model, _ = model_and_data
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"saved without its AnnData: pass the AnnData.*save_anndata=True"):
        GeneMambaModel.load(tmp_path / "m")


# ------------------------------------------------------------------ latent representation and queries
def test_give_mean_is_accepted_and_return_dist_refused(model_and_data):
    model, _ = model_and_data
    z = model.get_latent_representation()
    np.testing.assert_array_equal(model.get_latent_representation(give_mean=False, mc_samples=10), z)
    with pytest.raises(ValueError, match="deterministic"):
        model.get_latent_representation(return_dist=True)


def test_query_without_the_batch_column_is_embedded_quietly(model_and_data, recwarn):
    model, adata = model_and_data
    query = adata[:5].copy()
    del query.obs["batch"]
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(indices=range(5)), atol=1e-6
    )
    assert not [w for w in recwarn if "fewer than 3 cells" in str(w.message)]


def test_d_model_that_does_not_fit_the_heads_says_what_would(model_and_data):
    _, adata = model_and_data
    with pytest.raises(ValueError, match=r"expand\*d_model \(2 x 16 = 32\).*multiple of 32.*headdim=32"):
        GeneMambaModel(adata, n_layers=1, d_model=16, headdim=64, max_genes=32)


def test_query_without_the_count_layer_says_where_the_model_reads(model_and_data):
    model, adata = model_and_data
    query = adata[:5].copy()
    query.X = query.layers.pop("counts")
    with pytest.raises(ValueError, match=r"read raw counts from adata\.layers\['counts'\]; this AnnData has no such"):
        model.get_latent_representation(query)
    query.layers["counts"] = query.X.copy()
    assert model.get_latent_representation(query).shape == (5, model.module.encoder.d_model)


@pytest.mark.parametrize(
    "extra", [{"categorical_covariate_keys": ["batch"]}, {"size_factor_key": "n_counts"}, {"unlabeled_category": "x"}]
)
def test_scvi_setup_arguments_genemamba_does_not_take_are_named(cells, extra):
    adata = cells.copy()
    with pytest.raises(TypeError, match=rf"unexpected keyword arguments \['{next(iter(extra))}'\].*layer, batch_key"):
        GeneMambaModel.setup_anndata(adata, layer="counts", **extra)


def test_load_registry_and_view_setup_args_read_our_files(model_and_data, tmp_path, capsys):
    model, _ = model_and_data
    model.save(tmp_path / "m", prefix="pbmc_")
    registry = GeneMambaModel.load_registry(tmp_path / "m", prefix="pbmc_")
    assert registry["model_name"] == "GeneMambaModel"
    assert registry["setup_args"]["layer"] == "counts" and registry["setup_args"]["batch_key"] == "batch"
    GeneMambaModel.view_setup_args(tmp_path / "m", prefix="pbmc_")
    assert "GeneMambaModel.setup_anndata" in capsys.readouterr().out
    # scvi-habits probe (session 33): without the prefix, load and view_setup_args said only "checksums.json is
    # missing"; they now name the prefixed folder and the argument
    for call in (GeneMambaModel.load, GeneMambaModel.view_setup_args):
        with pytest.raises(FileNotFoundError, match=r"holds pbmc_model/, saved with a prefix.*prefix='pbmc_'"):
            call(tmp_path / "m")


# ------------------------------------------------------------------ session 18: what a probe of scvi habits found
def test_scvi_schedule_and_kl_settings_are_refused_not_ignored(model_and_data):
    model, _ = model_and_data
    with pytest.raises(TypeError, match=r"\['lr_patience', 'reduce_lr_on_plateau'\] are scvi-tools' settings"):
        model.train(max_epochs=1, plan_kwargs={"reduce_lr_on_plateau": True, "lr_patience": 1}, **TRAIN)
    with pytest.raises(TypeError, match=r"\['n_epochs_kl_warmup'\].*not a VAE"):
        model.train(max_epochs=1, plan_kwargs={"n_epochs_kl_warmup": 50}, **TRAIN)


def test_shuffle_set_split_as_a_train_argument_reaches_the_splitter(model_and_data, monkeypatch):
    from genemamba_scvi.dataloader import TokenDataSplitter

    model, _ = model_and_data
    seen = {}
    init = TokenDataSplitter.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(TokenDataSplitter, "__init__", spy)
    model.train(max_epochs=1, shuffle_set_split=False, load_sparse_tensor=False, **TRAIN)
    assert seen["shuffle_set_split"] is False and seen["load_sparse_tensor"] is False


def test_history_of_repeated_runs_is_indexed_by_epoch(cells):
    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    model = GeneMambaModel(adata, **TINY)
    run = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}
    model.train(max_epochs=1, train_size=1.0, **run)  # epoch 0: no validation cells
    model.train(max_epochs=2, **run)  # epochs 1, 2
    model.train_classifier(max_epochs=1, **run)  # epoch 3
    adata.obsm["X_genemamba"] = model.get_latent_representation()
    # notebook probe: train() after a head moved the encoder under it silently (predict() 0.57 -> 0.27 correct)
    with pytest.warns(UserWarning, match=r"cell-type head \(of 'bulk_labels'\) was trained on the encoder") as told:
        model.train(max_epochs=1, **run)  # epoch 4
    assert any("adata.obsm['X_genemamba'], computed before, is no longer" in str(w.message) for w in told)
    history = model.history
    assert history["train_loss"].index.tolist() == [0, 1, 2, 3, 4]
    assert history["validation_loss"].index.tolist() == [1, 2, 3, 4]
    assert history["lm_loss_train"].index.tolist() == [0, 1, 2, 4]
    assert history["accuracy_train"].index.tolist() == [3]
    assert all(frame.index.is_unique for frame in history.values())
    assert all(frame.dtypes.eq("float64").all() for frame in history.values())  # as after load, not object


def test_load_sets_an_anndata_up_again_with_the_saved_arguments(model_and_data, tmp_path):
    model, adata = model_and_data
    model.save(tmp_path / "m")
    other = adata.copy()
    other.X = other.layers["counts"].copy()
    other.X.data = np.random.default_rng(0).integers(1, 50, other.X.data.size).astype(np.float32)  # other counts
    GeneMambaModel.setup_anndata(other, layer=None)  # the user's own earlier set-up
    with pytest.warns(UserWarning, match=r"set up with \{'layer': None\}; the saved model .*'layer': 'counts'"):
        loaded = GeneMambaModel.load(tmp_path / "m", adata=other, accelerator="cpu")
    assert loaded.adata_manager.registry["setup_args"]["layer"] == "counts"
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_load_onto_cells_without_labels_as_scvi_allows_missing_labels(cells, tmp_path):
    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    model = GeneMambaModel(adata, **TINY)
    model.train_classifier(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=32)
    model.save(tmp_path / "m")
    query = cells[:20].copy()
    query.obs["bulk_labels"] = np.nan  # unlabelled cells to predict
    loaded = GeneMambaModel.load(tmp_path / "m", adata=query, accelerator="cpu")
    np.testing.assert_array_equal(loaded.predict(), model.predict(cells[:20].copy()))


def test_empty_indices_give_empty_results_of_every_kind(model_and_data, tmp_path):
    model, adata = model_and_data
    assert model.get_latent_representation(indices=[]).shape == (0, model.module.encoder.d_model)
    labelled = adata.copy()
    labelled.obs["half"] = np.where(np.arange(adata.n_obs) < 32, "x", "y")
    GeneMambaModel.setup_anndata(labelled, layer="counts", labels_key="half")
    clf = GeneMambaModel(labelled, **TINY)
    clf.train_classifier(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=32)
    soft = clf.predict(indices=[], soft=True)
    assert soft.shape == (0, 2) and list(soft.columns) == ["x", "y"]
    assert clf.predict(indices=[]).shape == (0,)


def test_save_with_the_anndata_leaves_its_string_columns_alone(model_and_data, tmp_path):
    model, adata = model_and_data
    adata.obs["note"] = np.where(np.arange(adata.n_obs) % 3, "kept", "other").astype(object)
    # a partial annotation (object strings with NaN, as from .map(dict) or an outer concat) and pandas "string"
    # columns: anndata writes them only as categoricals, which scvi-tools' save does in place (user probe)
    adata.obs["partial"] = pd.Series(np.where(np.arange(adata.n_obs) % 2, "T cell", None), index=adata.obs_names)
    adata.var["symbol"] = pd.array(adata.var_names.str.upper(), dtype="string")
    dtypes = (adata.obs.dtypes.to_dict(), adata.var.dtypes.to_dict())
    try:
        model.save(tmp_path / "m", save_anndata=True)  # anndata's write would make "note" categorical in memory
        assert (adata.obs.dtypes.to_dict(), adata.var.dtypes.to_dict()) == dtypes
        loaded = GeneMambaModel.load(tmp_path / "m").adata
        assert loaded.obs["note"].tolist() == adata.obs["note"].tolist()
        assert loaded.obs["partial"].isna().tolist() == adata.obs["partial"].isna().tolist()
        assert loaded.var["symbol"].astype(str).tolist() == adata.var["symbol"].astype(str).tolist()
    finally:
        del adata.obs["note"], adata.obs["partial"], adata.var["symbol"]


def test_load_keeps_the_users_set_up_where_the_saved_layer_holds_no_counts(cells, tmp_path):
    adata = cells.copy()
    adata.X = adata.layers["counts"].copy()
    GeneMambaModel.setup_anndata(adata)  # the model reads adata.X
    model = GeneMambaModel(adata, **TINY)
    model.save(tmp_path / "m")
    query = cells[:16].copy()  # log-normalised X, counts in layers["counts"]
    query.X = query.layers["counts"].log1p()
    # the advice when nothing was set up (bad-input probe, session 33: it said "set up with layer=", no load argument)
    with pytest.raises(ValueError, match=r"run GeneMambaModel\.setup_anndata\(adata, layer='counts'\) before load"):
        GeneMambaModel.load(tmp_path / "m", adata=query.copy(), accelerator="cpu")
    GeneMambaModel.setup_anndata(query, layer="counts")  # ... followed
    with pytest.warns(UserWarning, match=r"layer=None, which holds none in this AnnData; .* set up: layer='counts'"):
        loaded = GeneMambaModel.load(tmp_path / "m", adata=query, accelerator="cpu")
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation(indices=range(16))
    )
    # backed probe (session 28): an X of zeros (a placeholder beside the counts layer) passed as counts, and every
    # cell was refused as empty, with the advice to filter them all
    zeros = cells[:16].copy()
    zeros.X = sp.csr_matrix(zeros.shape, dtype=np.float32)
    GeneMambaModel.setup_anndata(zeros, layer="counts")
    with pytest.warns(UserWarning, match=r"layer=None, which holds none in this AnnData; .* set up: layer='counts'"):
        loaded = GeneMambaModel.load(tmp_path / "m", adata=zeros, accelerator="cpu")
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation(indices=range(16))
    )


def test_train_classifier_again_trains_the_same_head_further_and_a_trained_model_pickles(cells, tmp_path):
    import pickle

    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    model = GeneMambaModel(adata, **TINY)
    run = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}
    model.train_classifier(max_epochs=1, **run)
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata.copy(), accelerator="cpu")
    head = {k: v.clone() for k, v in loaded.module.classifier.state_dict().items()}
    loaded.train_classifier(max_epochs=1, lr=1e-12, **run)  # continue: a step this small changes nothing visible
    for key, value in loaded.module.classifier.state_dict().items():
        torch.testing.assert_close(value, head[key], rtol=0, atol=1e-6)
    loaded.train_classifier(max_epochs=1, hidden=8, **run)  # another width: a new head
    assert loaded.module.classifier.state_dict().keys() != head.keys()
    again = pickle.loads(pickle.dumps(loaded))  # with its Lightning trainer and schedule
    np.testing.assert_array_equal(again.predict(), loaded.predict())


def test_load_takes_a_torch_device_name_and_a_backed_query_is_named(model_and_data, tmp_path):
    import anndata as ad

    model, adata = model_and_data
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata.copy(), accelerator="cpu", device="cpu")
    assert loaded.device.type == "cpu"
    query = adata[:8].copy()
    query.write_h5ad(tmp_path / "q.h5ad")
    with pytest.raises(ValueError, match=r"backed AnnData is not supported.*to_memory"):
        model.get_latent_representation(ad.read_h5ad(tmp_path / "q.h5ad", backed="r"))


def test_embeddings_of_a_diverged_model_are_refused_not_returned_as_nan(model_and_data):
    import copy

    model, _ = model_and_data
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.module.encoder.norm_f.weight.fill_(float("nan"))
    with pytest.raises(
        RuntimeError, match=r"embeddings of 64 of 64 cells are not finite \(the model's weights are not"
    ):
        broken.get_latent_representation()


def test_load_keeps_the_users_labels_where_the_saved_model_has_none(model_and_data, tmp_path):
    model, adata = model_and_data  # set up without labels
    model.save(tmp_path / "m")
    mine = adata.copy()
    GeneMambaModel.setup_anndata(mine, layer="counts", labels_key="bulk_labels")  # to fine-tune on my labels
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = GeneMambaModel.load(tmp_path / "m", adata=mine, accelerator="cpu")
    assert loaded.adata_manager.registry["setup_args"]["labels_key"] == "bulk_labels"
    assert not [w for w in seen if "set up with" in str(w.message)]
    loaded.train_classifier(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=32)
    assert len(loaded.predict()) == mine.n_obs


def test_a_torch_device_name_with_an_index_asks_lightning_for_that_gpu(monkeypatch):
    import scvi.model._utils as scvi_utils

    from genemamba_scvi.model._utils import _torch_device

    seen = {}

    def fake(accelerator, devices, return_device):
        seen.update(accelerator=accelerator, devices=devices)
        return accelerator, devices, torch.device("cpu")

    monkeypatch.setattr(scvi_utils, "parse_device_args", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the translation, also on a CPU machine
    _torch_device("auto", "cuda:1")
    assert seen == {"accelerator": "gpu", "devices": [1]}  # a list: an int would be a number of GPUs
    _torch_device("auto", "cuda")
    assert seen == {"accelerator": "gpu", "devices": "auto"}
    assert _torch_device("gpu", "cpu") == torch.device("cpu")


def test_training_refuses_counts_normalised_in_place_after_setup(cells):
    # sc.pp.normalize_total / log1p on X after set-up: train() and train_classifier() trained on the log values
    # silently; embedding refused them with set-up advice (layer=...) it does not take
    import scanpy as sc

    adata = cells.copy()
    adata.X = adata.layers.pop("counts")
    GeneMambaModel.setup_anndata(adata, labels_key="bulk_labels")
    model = GeneMambaModel(adata, **TINY)
    counts = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    message = r"non-integer.*this model reads adata.X, which no longer holds them.*normalize_total"
    with pytest.raises(ValueError, match=message):
        model.train(max_epochs=1, **TRAIN)
    with pytest.raises(ValueError, match=message):
        model.train_classifier(max_epochs=1, **TRAIN)
    assert not model.is_trained and model.history is None
    with pytest.raises(ValueError, match=message):
        model.get_latent_representation()
    adata.layers["counts"] = counts  # the fix the message names: the counts back where the model reads them
    with pytest.raises(ValueError, match=r"put them back \(adata.X = adata.layers\['counts'\].copy\(\)\)"):
        model.train(max_epochs=1, **TRAIN)
    adata.X = adata.layers["counts"].copy()
    model.train(max_epochs=1, **TRAIN)


def test_no_small_last_batch_warning_from_scvi_tools(cells):
    # scvi-tools warns of a 1-cell last minibatch "to avoid errors" (its BatchNorm); GeneMamba trains on it
    adata = cells[:61].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=27, train_size=0.9)
    assert model.is_trained  # 55 training cells (scvi: ceil(0.9 x 61)): 27 + 27 + a last batch of 1
    assert not [w for w in caught if "Last batch" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=53, train_size=0.9)  # 53 + 2
    assert not [w for w in caught if "Last batch" in str(w.message)]


def test_saving_inside_a_file_is_named(model_and_data, tmp_path):
    # bad-input probe (session 33): model.save("notes.txt/sub") gave only "[Errno 17] File exists"
    model, _ = model_and_data
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"'.*notes\.txt' is a file, not a folder"):
        model.save(tmp_path / "notes.txt" / "sub")
    with pytest.raises(ValueError, match="dir_path is empty"):  # "" was the working directory
        model.save("", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_convert_legacy_save_says_no_conversion_is_needed(model_and_data, tmp_path):
    model, _ = model_and_data
    model.save(tmp_path / "m")
    with pytest.raises(NotImplementedError, match=r"need no conversion.*GeneMambaModel.load"):
        GeneMambaModel.convert_legacy_save(tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_scarches_query_habits_say_what_to_do_instead():
    # user probe: the scArches habit failed with "type object 'GeneMambaModel' has no attribute 'load_query_data'"
    with pytest.raises(NotImplementedError, match=r"no load_query_data .*get_latent_representation\(query\)"):
        GeneMambaModel.load_query_data(object(), "reference/")
    with pytest.raises(NotImplementedError, match=r"needs no prepare_query_anndata: pass the query as it is"):
        GeneMambaModel.prepare_query_anndata(object(), "reference/")


def test_scvi_generative_methods_say_what_to_use_instead(model_and_data):
    # scvi-habits probe (session 33): get_normalized_expression raised scvi-tools' bare "not implemented", and
    # differential_expression an AttributeError; each now names what to do instead
    model, _ = model_and_data
    expected = {
        "get_normalized_expression": r"no decoder.*sc\.pp\.normalize_total.*in_silico_perturb",
        "differential_expression": r"use_rep='X_genemamba'.*rank_genes_groups",
        "differential_abundance": r"deterministic.*Milo",
        "get_elbo": r"not a VAE.*model\.history",
        "get_marginal_ll": r"not a VAE",
        "get_reconstruction_error": r"not a VAE.*lm_loss_train",
        "posterior_predictive_sample": r"no count distribution",
    }
    for name, message in expected.items():
        with pytest.raises(NotImplementedError, match=message):
            getattr(model, name)(groupby="bulk_labels")


def test_history_continues_with_lightning_habits_on_later_runs(cells, tmp_path, monkeypatch):
    """Lifecycle probe (session 24): ``enable_checkpointing=True`` (scvi's SaveCheckpoint marks the model untrained
    at each save) used to wipe the earlier runs' history, ``learning_rate_monitor=True`` (a step-indexed key) to drop
    the new run's keys and mislabel epochs; both now continue it."""
    monkeypatch.chdir(tmp_path)  # (scvi's SaveCheckpoint writes under ./scvi_log)
    adata = cells.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    model = GeneMambaModel(adata, **TINY)
    run = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}
    model.train(max_epochs=2, **run)  # epochs 0, 1
    model.train(max_epochs=1, enable_checkpointing=True, **run)  # epoch 2
    model.train_classifier(max_epochs=1, learning_rate_monitor=True, **run)  # epoch 3
    model.train(max_epochs=2, check_val_every_n_epoch=2, learning_rate_monitor=True, **run)  # epochs 4, 5
    h = model.history
    assert h["train_loss"].index.tolist() == [0, 1, 2, 3, 4, 5]
    assert h["lm_loss_train"].index.tolist() == [0, 1, 2, 4, 5]
    assert h["accuracy_validation"].index.tolist() == [3]
    assert h["validation_loss"].index.tolist() == [0, 1, 2, 3, 5]
    lr = [k for k in h if k.startswith("lr-")]
    assert lr and all(h[k].index.is_monotonic_increasing and h[k].index.is_unique for k in lr)  # steps, counted on
    assert all(frame.index.is_unique for frame in h.values())


def test_early_stopping_direction_patience_and_own_checkpoint_callbacks_are_told(model_and_data):
    """An accuracy monitored with mode 'min' stopped the run as it improved; scvi's patience of 45 never stops a
    10-epoch run; Lightning's ModelCheckpoint failed with an error naming a setting the user never passed."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    model, _ = model_and_data
    run = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}
    with pytest.raises(ValueError, match="early_stopping_mode='max'"):
        model.train(max_epochs=2, early_stopping=True, early_stopping_monitor="mlm_accuracy_validation", **run)
    with pytest.raises(ValueError, match="early_stopping_mode='min'"):
        model.train(max_epochs=2, early_stopping=True, early_stopping_mode="max", **run)
    with pytest.warns(UserWarning, match="early stopping cannot end this run"):
        model.train(max_epochs=1, early_stopping=True, **run)
    with warnings.catch_warnings(record=True) as told:  # a refused run gets the refusal only (notebook probe)
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="leaves no validation cells"):
            model.train(max_epochs=1, early_stopping=True, train_size=1.0, **run)
    assert not [w for w in told if "early_stopping_patience" in str(w.message)]
    with pytest.raises(ValueError, match="checkpoint_dir="):
        model.train(max_epochs=1, callbacks=[ModelCheckpoint(monitor="validation_loss")], **run)


def test_a_seeded_resume_goes_on_with_the_random_streams_of_the_interrupted_run(cells, tmp_path):
    """Lifecycle probe (session 24): a new process that seeds, builds the model and resumes from ``last.ckpt``
    replayed the first epochs' batches and masks (the streams restarted at epoch 0). The checkpoint now carries the
    streams: the resumed epochs' losses are the uninterrupted run's."""
    from lightning.pytorch.callbacks import Callback

    class Crash(Callback):  # a dead kernel at the start of epoch 2
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise KeyboardInterrupt

    run = {"max_epochs": 4, "accelerator": "cpu", "enable_progress_bar": False, "batch_size": 16}

    def fresh():
        scvi.settings.seed = 0
        adata = cells.copy()
        GeneMambaModel.setup_anndata(adata, layer="counts")
        return GeneMambaModel(adata, **TINY)

    straight = fresh()
    straight.train(**run)
    first = fresh()
    with pytest.raises(KeyboardInterrupt):
        first.train(checkpoint_dir=tmp_path / "ck", callbacks=[Crash()], **run)
    resumed = fresh()  # (as a new process would: seeded again)
    resumed.train(ckpt_path=tmp_path / "ck" / "last.ckpt", **run)
    want = straight.history["train_loss"]["train_loss"]
    got = resumed.history["train_loss"]["train_loss"]
    assert got.index.tolist() == [2, 3]
    np.testing.assert_allclose(got.to_numpy(), want.loc[[2, 3]].to_numpy(), rtol=1e-5)
    assert not np.allclose(got.to_numpy(), want.loc[[0, 1]].to_numpy(), rtol=1e-3)  # not a replay of epochs 0-1


def test_embedding_an_anndata_set_up_for_scvi_leaves_scvis_columns_alone(model_and_data, cells):
    # sweep probe (session 28): GeneMamba embedding the AnnData an scVI model was set up on (the usual comparison)
    # rewrote obs["_scvi_batch"] / obs["_scvi_labels"] to 0 and the manager id; scVI's training reads those columns
    # without checking the id, so it would have trained with one batch and no labels without a word
    model, _ = model_and_data
    other = cells[:40].copy()
    scvi.model.SCVI.setup_anndata(other, layer="counts", batch_key="batch", labels_key="bulk_labels")
    reference = scvi.model.SCVI(other, n_latent=4)
    kept = other.obs[["_scvi_batch", "_scvi_labels"]].copy()
    manager_id = other.uns["_scvi_manager_uuid"]
    z = model.get_latent_representation(other)
    pd.testing.assert_frame_equal(other.obs[["_scvi_batch", "_scvi_labels"]], kept)
    assert other.uns["_scvi_manager_uuid"] == manager_id
    loader = reference._make_data_loader(other, batch_size=40, shuffle=False)
    assert len(np.unique(next(iter(loader))["batch"].numpy())) == 2  # both of scVI's batches
    np.testing.assert_array_equal(model.get_latent_representation(other), z)  # a second call: set up again, same
    assert model.get_anndata_manager(other) is not None  # the latest query stays registered with GeneMamba
    # review: calls of two models overlapping on it (threads) put the columns back when the last one ends
    from genemamba_scvi.model._utils import _query_for_this_call

    second = GeneMambaModel(model.adata, **TINY)
    first_call, second_call = _query_for_this_call(model, other), _query_for_this_call(second, other)
    first_call.__enter__()
    second_call.__enter__()  # starts while the first runs ...
    second.get_latent_representation(other)
    first_call.__exit__(None, None, None)  # ... and ends after it
    assert (other.obs["_scvi_batch"] == 0).all()  # still the running call's set-up
    second_call.__exit__(None, None, None)
    pd.testing.assert_frame_equal(other.obs[["_scvi_batch", "_scvi_labels"]], kept)
    assert other.uns["_scvi_manager_uuid"] == manager_id


def _scvi_set_up(adata):
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    return adata


def test_setting_up_genemamba_on_an_anndata_set_up_for_scvi_warns_that_scvi_would_see_its_columns(cells):
    # scvi-habits probe (session 33): SCVI then GeneMamba's setup_anndata (without the batch) set obs["_scvi_batch"]
    # to 0 and scVI then trained on one batch without a word; it now warns, naming the columns and the way out
    both = cells[:40].copy()
    scvi.model.SCVI.setup_anndata(both, layer="counts", batch_key="batch")
    with pytest.warns(UserWarning, match=r"rewrote obs\['_scvi_batch'\], which another model set up .*adata\.copy"):
        GeneMambaModel.setup_anndata(both, layer="counts")
    with warnings.catch_warnings():  # GeneMamba's own set-up again, or with the same columns: nothing to say
        warnings.filterwarnings("error", message="setup_anndata rewrote")
        GeneMambaModel.setup_anndata(both, layer="counts", labels_key="bulk_labels")
        same = cells[:40].copy()
        scvi.model.SCVI.setup_anndata(same, layer="counts", batch_key="batch")
        GeneMambaModel.setup_anndata(same, layer="counts", batch_key="batch")
        # tutorial probe (session 33): copies and views of GeneMamba's own AnnData were warned about "another model"
        model = GeneMambaModel(both, **TINY)
        model.get_latent_representation(both[:10].copy())
        model.get_latent_representation(both[10:20])
        GeneMambaModel.setup_anndata(both[:10].copy(), layer="counts")
        # and a query call on an AnnData scVI was set up on puts scVI's columns back: nothing to warn about
        model.get_latent_representation(_scvi_set_up(cells[:40].copy()))


def test_a_deleted_model_lets_its_queries_go(model_and_data, cells):
    # sweep probe (session 28): models built, used on a query and deleted in a loop kept every query alive in
    # scvi-tools' class-level stores (2 AnnData a model); the AnnData set up for them stays usable for a new model
    import gc
    import weakref

    _, adata = model_and_data
    gone, ids = [], []
    for i in range(3):
        model = GeneMambaModel(adata, **TINY)
        query = cells[i * 8 : (i + 1) * 8].copy()
        model.get_latent_representation(query)
        gone.append(weakref.ref(query))
        ids.append(model.id)
        del model, query
        gc.collect()
    last = GeneMambaModel(adata, **TINY)  # (deleted models are let go at the next model or query call)
    assert all(ref() is None for ref in gone)
    assert not set(ids) & set(GeneMambaModel._per_instance_manager_store)
    assert last.get_latent_representation().shape[0] == adata.n_obs
    # review: a query the user set up after the call keeps that set-up when the model is deleted
    query = cells[:8].copy()
    last.get_latent_representation(query)
    GeneMambaModel.setup_anndata(query, layer="counts", batch_key="batch")
    del last
    gc.collect()
    assert GeneMambaModel(query, **TINY).summary_stats["n_batch"] == 2
    # review: the finalizer runs wherever the garbage collector does, also under the bookkeeping's lock: it must not
    # wait for that lock (a deadlock)
    import threading

    from genemamba_scvi.model import _utils

    holder = [GeneMambaModel(adata, **TINY)]
    holder[0].get_latent_representation(cells[:4].copy())
    with _utils._QUERY_LOCK:  # the model is let go (and collected) in another thread, which must not hang
        collector = threading.Thread(target=lambda: (holder.clear(), gc.collect()), daemon=True)
        collector.start()
        collector.join(timeout=20)
        assert not collector.is_alive()


def test_setting_up_a_copy_leaves_the_original_set_up(model_and_data):
    # sweep probe (session 28): setup_anndata on a copy of a set-up AnnData took over its scvi id, and a model on the
    # original was then refused ("Did you make a copy?"); the copy now gets an id of its own
    model, adata = model_and_data
    copy = adata.copy()
    GeneMambaModel.setup_anndata(copy, layer="counts")
    assert copy.uns["_scvi_uuid"] != adata.uns["_scvi_uuid"]
    assert GeneMambaModel(adata, **TINY).adata is adata
    assert GeneMambaModel(copy, **TINY).adata is copy
    np.testing.assert_array_equal(model.get_latent_representation(copy), model.get_latent_representation())


def test_embedding_leaves_the_global_random_stream_alone(model_and_data):
    # sweep probe (session 28): get_latent_representation() drew from torch's global generator (the loader's base
    # seed), so a model trained after it depended on whether earlier ones were embedded, with one seed set up front
    model, _ = model_and_data
    state = torch.get_rng_state()
    model.get_latent_representation()
    model.get_latent_representation(indices=[0, 1, 2])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("size", [0, 0.0, False])
def test_a_train_size_of_zero_is_refused_not_read_as_the_default(model_and_data, size):
    # bad-input probe (session 33): scvi-tools' splitter reads a falsy train_size as 0.9; train(train_size=0.0)
    # trained on 90% of the cells without a word
    model, _ = model_and_data
    with pytest.raises(ValueError, match=r"train_size=.* would train on no cell"):
        model.train(max_epochs=1, train_size=size, accelerator="cpu")
