"""The cell-type head: what would make its numbers mean less than they seem is named before or while training.

From session 20's annotation user probe: a rare type with no training cells got an untrained output silently;
a continued head validated on cells it was trained on; an unknown ``early_stopping_monitor`` failed after an epoch
of training (the head already changed); "Unknown" / "nan" labels and per-cell columns became cell types silently.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_pbmc68k_counts

FIT = {"accelerator": "cpu", "enable_progress_bar": False}


def _model(labels: np.ndarray | None = None, n: int = 96) -> GeneMambaModel:
    scvi.settings.seed = 0
    adata = load_pbmc68k_counts()[:n].copy()
    if labels is not None:
        adata.obs["ct"] = pd.Categorical(labels)
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="ct" if labels is not None else "bulk_labels")
    return GeneMambaModel(adata, **TINY)


def _messages(record) -> list[str]:
    return [str(w.message) for w in record]


def test_a_cell_type_without_training_cells_is_named():
    labels = np.array(["A"] * 48 + ["B"] * 48, dtype=object)
    scvi.settings.seed = 0
    model = _model(labels)
    # a type of one cell, which scvi's split (seed 0) puts among the validation cells
    from genemamba_scvi.dataloader import TokenDataSplitter

    splitter = TokenDataSplitter(model.adata_manager, train_size=0.9, tokenizer=None)
    splitter.setup()
    val_cell = int(splitter.val_idx[0])
    model.adata.obs["ct"] = model.adata.obs["ct"].cat.add_categories("rare")
    model.adata.obs.iloc[val_cell, model.adata.obs.columns.get_loc("ct")] = "rare"
    with pytest.warns(UserWarning, match=r"no training cells in this split: 'rare' \(1 cell\)"):
        model.train_classifier("ct", max_epochs=1, **FIT)
    assert val_cell in set(model.validation_indices.tolist())


def test_continuing_a_head_on_another_split_names_the_leaked_validation_cells():
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.train_classifier(max_epochs=1, **FIT)  # same seed, same split: clean
    assert not any("trained this head" in m for m in _messages(record))
    with pytest.warns(UserWarning, match=r"validation cells of this run trained this head"):
        model.train_classifier(max_epochs=1, train_size=0.8, **FIT)
    # the test cells too (user probe: 53 of 70 test cells had trained the head, and only validation was named)
    trained = set(model.adata.obs_names[model.train_indices])
    with pytest.warns(UserWarning, match=r"\d+ of the \d+ test cells of this run trained this head") as record:
        model.train_classifier(max_epochs=1, train_size=0.6, validation_size=0.1, **FIT)
    n_test = int(re.search(r"(\d+) of the \d+ test cells", _messages(record)[-1]).group(1))
    assert n_test == len(trained & set(model.adata.obs_names[model.test_indices])) > 0
    with warnings.catch_warnings(record=True) as record:  # a new head (another width) starts clean
        warnings.simplefilter("always")
        model.train_classifier(max_epochs=1, train_size=0.7, hidden=8, **FIT)
    assert not any("trained this head" in m for m in _messages(record))


def test_an_unknown_early_stopping_monitor_is_refused_before_training():
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    head = [p.detach().clone() for p in model.module.classifier.parameters()]
    epochs = {k: len(v) for k, v in model.history.items()}
    with pytest.raises(ValueError, match=r"monitor 'val_accuracy' is not logged.*accuracy_validation"):
        model.train_classifier(max_epochs=3, early_stopping=True, early_stopping_monitor="val_accuracy", **FIT)
    assert all(torch.equal(a, b) for a, b in zip(head, model.module.classifier.parameters()))
    assert {k: len(v) for k, v in model.history.items()} == epochs
    stop = {"early_stopping": True, "early_stopping_monitor": "accuracy_validation", "early_stopping_mode": "max"}
    model.train_classifier(max_epochs=1, **stop, **FIT)
    with pytest.raises(ValueError, match=r"'mlm_accuracy_validation'"):
        model.train(max_epochs=1, early_stopping=True, early_stopping_monitor="accuracy_validation", **FIT)
    # a user's own EarlyStopping callback is checked the same way (Lightning failed after an epoch, weights changed)
    from lightning.pytorch.callbacks import EarlyStopping

    with pytest.raises(ValueError, match=r"monitor 'val_loss' is not logged.*'validation_loss'"):
        model.train(max_epochs=2, callbacks=[EarlyStopping("val_loss")], **FIT)
    model.train(max_epochs=1, callbacks=[EarlyStopping("val_loss", strict=False)], **FIT)  # not strict: allowed


@pytest.mark.parametrize("placeholder", ["Unknown", "nan", ""])
def test_placeholder_labels_are_named_as_such(placeholder):
    labels = np.array(["A", "B", placeholder] * 32, dtype=object)
    model = _model(labels)
    with pytest.warns(UserWarning, match=r"read as 'no label'.*ref = adata\[adata.obs\['ct'\] != "):
        model.train_classifier("ct", max_epochs=1, **FIT)


def test_a_per_cell_column_as_labels_is_questioned():
    model = _model(np.arange(96).astype(float))
    with pytest.warns(UserWarning, match=r"96 labels for 96 cells.*is it the cell-type column"):
        model.train_classifier("ct", max_epochs=1, **FIT)


def test_the_split_checked_is_the_split_trained_and_a_continued_head_keeps_it_without_a_seed():
    model = _model()
    scvi.settings.seed = None  # scvi-tools' default: every split drawn afresh
    try:
        from genemamba_scvi.model import _classifier

        checked = []
        original = _classifier.check_classifier_split

        def spy(codes, names, train_idx, val_idx, *args):
            checked.append(np.sort(val_idx))
            return original(codes, names, train_idx, val_idx, *args)

        import genemamba_scvi.model._training as training

        training.check_classifier_split = spy
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                model.train_classifier(max_epochs=1, **FIT)
                first = np.sort(model.validation_indices)
                model.train_classifier(max_epochs=1, **FIT)  # trained further: the same validation cells
        finally:
            training.check_classifier_split = original
    finally:
        scvi.settings.seed = 0
    assert np.array_equal(checked[0], first) and np.array_equal(checked[1], first)
    assert np.array_equal(np.sort(model.validation_indices), first)
    assert not any("trained this head" in m for m in _messages(record))


def test_save_and_load_keep_the_split_and_a_continued_head_keeps_it(tmp_path):
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    split = [np.asarray(i).copy() for i in (model.train_indices, model.validation_indices, model.test_indices)]
    model.save(tmp_path / "m", save_anndata=True)
    loaded = GeneMambaModel.load(tmp_path / "m")
    for a, b in zip(split, (loaded.train_indices, loaded.validation_indices, loaded.test_indices)):
        assert np.array_equal(a, b)
    scvi.settings.seed = 1  # another seed would draw another split; a continued head keeps its own
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            loaded.train_classifier(max_epochs=1, **FIT)
        assert np.array_equal(np.sort(loaded.validation_indices), np.sort(split[1]))
        assert not any("trained this head" in m for m in _messages(record))
        with pytest.warns(UserWarning, match=r"trained this head in an earlier train_classifier call"):
            loaded.train_classifier(max_epochs=1, train_size=0.8, **FIT)
    finally:
        scvi.settings.seed = 0
    # loaded with other cells, the saved positions would name the wrong cells: no split then
    other = load_pbmc68k_counts()[96:160].copy()
    assert GeneMambaModel.load(tmp_path / "m", adata=other).train_indices is None


def test_a_pathway_monitor_without_gene_sets_is_refused_before_training():
    model = _model()
    with pytest.raises(ValueError, match=r"'pathway_loss_validation' is not logged"):
        model.train(max_epochs=2, early_stopping=True, early_stopping_monitor="pathway_loss_validation", **FIT)
    assert not model.is_trained and model.history is None


def test_the_head_keeps_every_cell_it_trained_on_through_save_and_load(tmp_path):
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    with pytest.warns(UserWarning, match="trained this head"):
        model.train_classifier(max_epochs=1, train_size=0.8, **FIT)
    model.save(tmp_path / "m", save_anndata=True)
    with pytest.warns(UserWarning, match="trained this head"):  # the 90 / 10 call's cells are remembered
        GeneMambaModel.load(tmp_path / "m").train_classifier(max_epochs=1, train_size=0.7, **FIT)
    # the same cells in another order: the saved positions would name other cells; not restored, and said when the
    # head is trained further (not on every query load, where it is expected)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = GeneMambaModel.load(tmp_path / "m", adata=model.adata[::-1].copy())
    assert loaded.validation_indices is None and not any("split" in m for m in _messages(record))
    with pytest.warns(UserWarning, match=r"split that is not known any more"):
        loaded.train_classifier(max_epochs=1, **FIT)


def test_cells_filtered_in_place_after_training_do_not_get_stale_split_positions(tmp_path):
    # positions of the 96-cell split were saved for the 60 cells left, and load restored them (up to 95)
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    model.adata._inplace_subset_obs(np.arange(60))
    model.save(tmp_path / "m", save_anndata=True)
    loaded = GeneMambaModel.load(tmp_path / "m")
    assert loaded.adata.n_obs == 60 and loaded.validation_indices is None
    with pytest.warns(UserWarning, match=r"split that is not known any more"):
        loaded.train_classifier(max_epochs=1, **FIT)


def test_the_same_split_asked_for_in_other_words_keeps_a_continued_head_on_it():
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)  # train_size 0.9: 87 / 9 of 96 cells
    first = np.sort(model.validation_indices)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scvi.settings.seed = 5
        model.train_classifier(max_epochs=1, train_size=0.9, validation_size=1 - np.ceil(0.9 * 96) / 96, **FIT)
        scvi.settings.seed = 0
    assert np.array_equal(np.sort(model.validation_indices), first)
    assert not any("trained this head" in m for m in _messages(record))


def test_a_run_that_fails_before_training_keeps_the_earlier_head():
    # a failed call left a new, untrained head with the new label names, and predict() used it silently
    model = _model()
    model.train_classifier(max_epochs=1, **FIT)
    names, predicted = list(model.label_names_), model.predict()
    model.adata.obs["phase"] = np.where(np.arange(model.adata.n_obs) % 2, "G1", "S")
    with pytest.raises(ValueError):
        model.train_classifier("phase", max_epochs=1, datasplitter_kwargs={"num_wokers": 2}, **FIT)
    assert list(model.label_names_) == names and np.array_equal(model.predict(), predicted)
    fresh = _model()
    with pytest.raises(ValueError):
        fresh.train_classifier(max_epochs=1, lr="3e-3", **FIT)
    with pytest.raises(RuntimeError, match="No classifier has been trained"):
        fresh.predict()


def test_an_embedding_stored_before_fine_tuning_is_said_to_be_stale():
    # the README stored obsm["X_genemamba"], then fine-tuned (the encoder too) and saved: the saved embedding was
    # another model's (max difference 1.7, Leiden ARI 0.04 in the probe)
    model = _model()
    model.adata.obsm["X_genemamba"] = model.get_latent_representation()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.train_classifier(max_epochs=1, freeze_encoder=True, **FIT)
    assert not any("no longer this model's embedding" in m for m in _messages(record))
    with pytest.warns(UserWarning, match=r"obsm\['X_genemamba'\], computed before, is no longer this model's"):
        model.train_classifier(max_epochs=1, hidden=8, **FIT)
    # sweep probe (session 28): another model on the same AnnData, its own embedding computed (or none, at another
    # width), is not told that the stored embedding, not its own, is stale
    other = GeneMambaModel(model.adata, **TINY)
    other.get_latent_representation()
    third = GeneMambaModel(model.adata, **{**TINY, "d_model": 2 * TINY["d_model"]})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        other.train_classifier(max_epochs=1, **FIT)
        third.train_classifier(max_epochs=1, **FIT)
    assert not any("no longer this model's embedding" in m for m in _messages(record))
    model.adata.obsm["X_genemamba"] = other.get_latent_representation()  # now it is other's embedding
    with pytest.warns(UserWarning, match="no longer this model's embedding"):
        other.train_classifier(max_epochs=1, **FIT)


def test_a_new_head_on_a_frozen_encoder_that_fails_mid_run_gives_the_earlier_head_back():
    import lightning.pytorch as pl

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= 1:
                raise RuntimeError("crash after a step")

    model = _model()
    model.train_classifier(max_epochs=1, freeze_encoder=True, **FIT)
    predicted, head = model.predict(), model.module.classifier
    with pytest.raises(RuntimeError, match="crash after a step"):
        model.train_classifier(max_epochs=1, hidden=16, freeze_encoder=True, callbacks=[Crash()], **FIT)
    assert model.module.classifier is head and np.array_equal(model.predict(), predicted)


def test_a_pathway_weight_without_gene_sets_is_said_to_do_nothing():
    model = _model()
    with pytest.warns(UserWarning, match=r"gamma=0.5 weighs the pathway loss, which needs gene_sets"):
        model.train(max_epochs=1, gamma=0.5, **FIT)
    for kwargs in ({}, {"gamma": 0.0}, {"gamma": 0.1, "gene_sets": "kegg"}):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            model.train(max_epochs=1, **kwargs, **FIT)
        assert not any("weighs the pathway loss" in m for m in _messages(record))
    assert "pathway_loss_train" in model.history


@pytest.mark.parametrize("kwargs", [{"gene_sets": "kegg"}, {"objective": "mlm"}, {"gamma": 0.1}])
def test_pretraining_settings_given_to_fine_tuning_are_named(kwargs):
    # they reached Lightning's Trainer: "Trainer.__init__() got an unexpected keyword argument 'gene_sets'"
    model = _model()
    with pytest.raises(TypeError, match=rf"train_classifier got \['{next(iter(kwargs))}'\]: .*which train\(\) takes"):
        model.train_classifier("label", max_epochs=1, **kwargs)
    assert model.module.classifier is None


def test_cells_sharing_a_name_do_not_count_as_seen_by_the_head():
    # user probe: lanes concatenated without index_unique share their barcodes; a second call on the same split
    # warned that 16 of 20 validation cells had trained the head (their namesakes in the other lane had)
    import pandas as pd

    from genemamba_scvi.model._classifier import check_classifier_split

    obs_names = pd.Index([f"BC{i}" for i in range(10)] * 2)  # two lanes, the same 10 barcodes
    codes = np.zeros(20, dtype=np.int64)
    train, val = np.arange(10), np.arange(10, 20)
    head = set(obs_names[train])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_classifier_split(codes, ["T"], train, val, obs_names, head)
    with pytest.warns(UserWarning, match=r"4 of the 10 validation cells of this run trained this head"):
        # known by position while the split names the same cells: a real leak among namesakes is still told
        check_classifier_split(codes, ["T"], np.arange(16), np.arange(10, 20), obs_names, head, None, np.arange(14))
    unique = pd.Index([f"BC{i}" for i in range(20)])  # with names of their own, a leak is still told
    with pytest.warns(UserWarning, match=r"3 of the 10 validation cells of this run trained this head"):
        check_classifier_split(codes, ["T"], train, val, unique, set(unique[:13]))


def test_a_pathway_weight_of_zero_leaves_the_gene_sets_unread():
    # panel probe (session 29): gamma=0 (the loss off) still mapped the sets: refused sets that fit no gene of the
    # model, and warned about sets left out of a loss that was off
    model = _model()
    mouse_sets = {"A": ["Ly6a", "H2-K1"], "B": ["Lyz2", "Cd8b1"]}
    with pytest.raises(ValueError, match=r"none of the gene sets has two or more genes"):
        model.train(max_epochs=1, gene_sets=mouse_sets, **FIT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.train(max_epochs=1, gene_sets=mouse_sets, gamma=0, **FIT)
    assert model.module.pathway_loss is None and "pathway_loss_train" not in model.history
    # session 30: ... but a path that is no file is still named (a mistyped path was silent with gamma=0)
    with pytest.raises(ValueError, match=r"gene_sets='kegg.gmt' is neither a shipped collection"):
        model.train(max_epochs=1, gene_sets="kegg.gmt", gamma=0, **FIT)
    with pytest.raises(ValueError, match=r"must be a finite number >= 0, got -1"):  # plan_kwargs' weight wins: checked
        model.train(max_epochs=1, gene_sets=mouse_sets, plan_kwargs={"gamma": -1}, **FIT)


def test_the_advice_after_train_goes_on_with_the_head_it_names():
    # annotation probe (session 29): a head on another column than set-up's labels_key, then train(): the advised
    # train_classifier() trained a new head on set-up's column (or, set up without labels, failed)
    model = _model()  # set up with labels_key="bulk_labels"
    model.adata.obs["coarse"] = np.where(model.adata.obs["bulk_labels"].astype(str).str.contains("CD"), "T", "other")
    model.train_classifier("coarse", max_epochs=1, hidden=16, **FIT)
    head = model.module.classifier
    with pytest.warns(UserWarning, match=r"Run train_classifier\(labels_key='coarse', hidden=16\) again") as record:
        model.train(max_epochs=1, **FIT)
    advice = re.search(r"Run (train_classifier\(.*?\)) again", next(m for m in _messages(record) if "Run" in m))
    eval(f"model.{advice.group(1).replace(')', ', max_epochs=1, **FIT)')}")  # the advice, as written
    assert model.module.classifier is head and model.label_names_ == ["T", "other"]


def test_labels_of_fewer_than_three_cells_are_named_at_set_up():
    # annotation probe (session 29): scvi-tools' warning named a rare label by its code ("Category 4 in
    # adata.obs['_scvi_labels']"); a query (nothing trained on it) gets no such warning
    labels = np.array(["A"] * 46 + ["rare B"] * 2 + ["C"] * 48, dtype=object)
    with pytest.warns(
        UserWarning, match=r"fewer than 3 cells hold 1 of the 3 labels of adata.obs\['ct'\]: 'rare B' \(2\)"
    ):
        model = _model(labels)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.get_latent_representation(model.adata[:50].copy())
    assert not any("Category" in m or "fewer than 3" in m for m in _messages(record))
    # review: another column given to train_classifier is told too; a column of one label a cell is cut short
    model.adata.obs["cell"] = model.adata.obs_names.astype(str)
    with pytest.warns(UserWarning, match=r"hold 96 of the 96 labels .*: '[^']+' \(1\)(, '[^']+' \(1\)){9}, \.\.\.; a"):
        model.train_classifier("cell", max_epochs=1, **FIT)
