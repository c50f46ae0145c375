"""End-to-end tests of GeneMambaModel on the shipped real 559-cell sample (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

from conftest import TINY_MODEL_CONFIG, settings
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_celltypist_sample, load_pbmc68k_counts

TINY = {**settings(TINY_MODEL_CONFIG.replace(d_model=32, n_layers=2, chunk_size=32, headdim=16)), "max_genes": 128}
TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32}


@pytest.fixture(scope="module")
def small_adata():
    """240 real PBMCs (scanpy's pbmc68k_reduced, integer counts recovered) with their cell-type labels."""
    adata = load_pbmc68k_counts()
    keep = adata.obs["bulk_labels"].isin(["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "Dendritic"])
    adata = adata[keep.to_numpy()].copy()
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 240, replace=False))].copy()
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str).astype("category")
    return adata


@pytest.fixture(scope="module")
def trained(small_adata):
    scvi.settings.seed = 0
    adata = small_adata.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = GeneMambaModel(adata, **TINY)
    model.train(max_epochs=2, gene_sets="kegg", gamma=0.1, **TRAIN)
    model.train_classifier(max_epochs=10, lr=3e-3, **TRAIN)
    return model, adata


def test_latent_shape_and_obsm(trained):
    model, adata = trained
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 32)
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    adata.obsm["X_genemamba"] = z
    assert adata.obsm["X_genemamba"].shape[0] == adata.n_obs
    # Embeddings are not constant across cells.
    assert z.std(axis=0).mean() > 1e-4


def test_training_history_has_losses(trained):
    model, _ = trained
    hist = model.history
    assert "train_loss" in hist
    assert "lm_loss_train" in hist and "pathway_loss_train" in hist
    assert np.isfinite(hist["train_loss"].astype(float).to_numpy()).all()


def test_embedding_independent_of_batch_size_and_order(trained):
    model, _ = trained
    full = model.get_latent_representation(batch_size=64)
    single = model.get_latent_representation(indices=[5, 3, 100], batch_size=1)
    np.testing.assert_allclose(single, full[[5, 3, 100]], atol=1e-5)


def test_predict_hard_and_soft(trained):
    model, adata = trained
    labels = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "Dendritic"]
    hard = model.predict()
    assert hard.shape == (adata.n_obs,)
    assert set(hard) <= set(labels)
    soft = model.predict(soft=True)
    assert isinstance(soft, pd.DataFrame)
    assert list(soft.columns) == labels
    assert (soft.index == adata.obs_names).all()
    np.testing.assert_allclose(soft.to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert (soft.idxmax(axis=1).to_numpy() == hard).all()
    # Real cell types: a fine-tuned tiny model must beat the majority class on its training cells.
    majority = adata.obs["cell_type"].value_counts(normalize=True).max()
    assert (hard == adata.obs["cell_type"].to_numpy()).mean() > majority
    # a module cast to bfloat16 by hand predicts as it embeds (serving probe: torch's dtype error from the head)
    import copy

    cast = copy.deepcopy(model)
    cast.module.to(torch.bfloat16)
    assert (cast.predict(indices=range(32)) == hard[:32]).mean() >= 0.9


def test_celltypist_sample_pretrains_with_go_sets():
    scvi.settings.seed = 0
    adata = load_celltypist_sample()[:64].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    model.train(max_epochs=1, gene_sets="go_bp", **TRAIN)
    assert "pathway_loss_train" in model.history
    assert model.get_latent_representation().shape == (64, 32)


def test_gene_embeddings_frame(trained):
    model, _ = trained
    genes = model.get_gene_embeddings()
    assert genes.shape == (len(model.vocab_.genes), 32)
    assert genes.index[0] == model.vocab_.genes[0]


def test_save_load_identical_embeddings(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    probs = model.predict(soft=True)
    model.save(tmp_path / "m")
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), probs)
    np.testing.assert_array_equal(loaded.gene_medians_, model.gene_medians_)


def test_save_refuses_existing_dir(trained, tmp_path):
    model, _ = trained
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="m"):
        model.save(target)
    assert (target / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_permuted_genes_same_embeddings(trained):
    model, adata = trained
    z = model.get_latent_representation()
    rng = np.random.default_rng(0)
    perm = rng.permutation(adata.n_vars)
    permuted = adata[:, perm].copy()
    z_perm = model.get_latent_representation(permuted)
    np.testing.assert_allclose(z_perm, z, atol=1e-6)


def test_load_into_permuted_adata(trained, tmp_path):
    model, adata = trained
    z = model.get_latent_representation()
    model.save(tmp_path / "m")
    perm = np.random.default_rng(1).permutation(adata.n_vars)
    other = adata[:, perm].copy()
    del other.uns["_scvi_uuid"], other.uns["_scvi_manager_uuid"]
    loaded = GeneMambaModel.load(tmp_path / "m", adata=other)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)


def test_load_mismatched_genes_fails(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m")
    other = adata.copy()
    other.var_names = [f"NOTAGENE{i}" for i in range(other.n_vars)]
    del other.uns["_scvi_uuid"], other.uns["_scvi_manager_uuid"]
    with pytest.raises(ValueError, match=r"(?i)overlap|match"):
        GeneMambaModel.load(tmp_path / "m", adata=other)


def test_same_seed_same_embeddings(small_adata):
    outs = []
    for _ in range(2):
        scvi.settings.seed = 7
        adata = small_adata[:64].copy()
        GeneMambaModel.setup_anndata(adata, layer="counts")
        model = GeneMambaModel(adata, **TINY)
        model.train(max_epochs=1, **TRAIN)
        outs.append(model.get_latent_representation())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_next_token_refused_for_bidirectional(small_adata):
    adata = small_adata[:32].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with pytest.raises(ValueError, match="leak"):
        model.train(max_epochs=1, objective="next_token", **TRAIN)


def test_unidirectional_next_token_trains(small_adata):
    scvi.settings.seed = 0
    adata = small_adata[:64].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, bidirectional=False, **TINY)
    model.train(max_epochs=1, objective="next_token", **TRAIN)
    assert np.isfinite(model.history["train_loss"].astype(float).to_numpy()).all()


def test_cls_pooling_runs(small_adata):
    adata = small_adata[:32].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, pooling="cls", **TINY)
    z = model.get_latent_representation()
    assert z.shape == (32, 32)
    z4 = model.get_latent_representation(indices=range(4))
    torch.testing.assert_close(torch.from_numpy(z[:4]), torch.from_numpy(z4))


def test_balanced_class_weights_values_and_loss(trained):
    from scvi import REGISTRY_KEYS

    from genemamba_scvi.model import _class_weights

    codes = np.array([0, 0, 0, 1])
    w = _class_weights("balanced", codes, ["a", "b"])
    np.testing.assert_allclose(w.numpy(), [4 / (2 * 3), 4 / (2 * 1)], rtol=1e-6)
    np.testing.assert_allclose(_class_weights({"b": 3.0}, codes, ["a", "b"]).numpy(), [1.0, 3.0])
    with pytest.raises(ValueError, match="not in the data"):
        _class_weights({"c": 2.0}, codes, ["a", "b"])
    with pytest.raises(ValueError, match="balanced"):
        _class_weights("inverse", codes, ["a", "b"])

    model, _ = trained
    module = model.module
    torch.manual_seed(0)
    z = torch.randn(6, module.encoder.d_model)
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    weights = torch.tensor([0.5, 2.0, 3.0, 1.0])
    module.eval()
    out = module.loss(
        {REGISTRY_KEYS.LABELS_KEY: labels}, {"hidden": z[:, None], "z": z}, {}, mode="classify", class_weights=weights
    )
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(module.classify(z), labels, weight=weights)
        unweighted = torch.nn.functional.cross_entropy(module.classify(z), labels)
    torch.testing.assert_close(out.loss, expected)
    assert not torch.isclose(out.loss, unweighted)


def test_loss_settings_are_keyword_arguments(trained):
    """mode / gamma / class_weights reach module.loss as loss_kwargs (scvi's training plan), not as state."""
    from scvi import REGISTRY_KEYS

    from genemamba_scvi.train import GeneMambaTrainingPlan

    model, _ = trained
    module = model.module
    plan = GeneMambaTrainingPlan(module, mode="classify", class_weights=None)
    assert plan.loss_kwargs == {"mode": "classify", "class_weights": None}
    tokens = torch.randint(3, module.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    tensors = {"tokens": tokens, "lengths": torch.full((4,), 12), REGISTRY_KEYS.LABELS_KEY: torch.zeros(4, 1)}
    assert module.pathway_loss is not None  # trained with gene_sets="kegg"
    try:
        module.train()
        inference, _, out = module(tensors, loss_kwargs={"mode": "classify"})
        assert inference["mlm_labels"] is None  # the classifier reads unmasked cells
        assert "accuracy" in out.extra_metrics
        inference, _, with_pathways = module(tensors, loss_kwargs={"gamma": 0.5})
        assert inference["mlm_labels"] is not None
        _, _, without = module(tensors, loss_kwargs={"gamma": 0.0})
        assert "pathway_loss" in with_pathways.extra_metrics and "pathway_loss" not in without.extra_metrics
        with pytest.raises(ValueError, match="mode"):
            module(tensors, loss_kwargs={"mode": "finetune"})
    finally:
        module.eval()


def test_train_classifier_balanced_runs_and_resets(small_adata):
    scvi.settings.seed = 0
    adata = small_adata[:96].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = GeneMambaModel(adata, **TINY)
    model.train_classifier(max_epochs=1, class_weight="balanced", **TRAIN)
    assert not hasattr(model.module, "class_weights")  # a loss argument, not module state
    assert np.isfinite(model.history["train_loss"].astype(float).to_numpy()).all()
    probs = model.predict(soft=True)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _fresh_tiny(small_adata, n_cells: int = 64, seed: int = 3) -> GeneMambaModel:
    """A tiny untrained model on the first ``n_cells`` cells, scvi's seed set first (same weights every call)."""
    scvi.settings.seed = seed
    adata = small_adata[:n_cells].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    return GeneMambaModel(adata, **TINY)


def test_gradient_checkpointing_same_training(small_adata):
    outs = []
    for ckpt in (False, True):
        model = _fresh_tiny(small_adata)
        model.train(max_epochs=1, gradient_checkpointing=ckpt, **TRAIN)
        assert model.module.encoder.gradient_checkpointing is False  # switched off again after training
        outs.append(model.get_latent_representation())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_cuda_graphs_switch_is_set_for_the_run_only_and_ignored_on_cpu(small_adata):
    outs = []
    for graphs in (None, True):
        model = _fresh_tiny(small_adata)
        seen = []
        enc = model.module.encoder
        original = enc.forward

        def spy(*args, _orig=original, _enc=enc, _seen=seen, **kwargs):
            _seen.append(_enc.cuda_graphs)
            return _orig(*args, **kwargs)

        enc.forward = spy
        if graphs:  # a switch that cannot act says so, at the user's line
            with pytest.warns(UserWarning, match="cuda_graphs=True is ignored: this run trains on the CPU") as rec:
                model.train(max_epochs=1, cuda_graphs=graphs, **TRAIN)
            assert [w.filename for w in rec if "cuda_graphs" in str(w.message)] == [__file__]
        else:
            model.train(max_epochs=1, cuda_graphs=graphs, **TRAIN)
        assert seen and set(seen) == {graphs}  # the encoder's switch during the run
        assert enc.cuda_graphs is None  # restored after training
        outs.append(model.get_latent_representation())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)  # on CPU the switch changes nothing


def test_train_without_validation_cells(small_adata):
    adata = small_adata[:32].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    model.train(max_epochs=1, train_size=1.0, **TRAIN)  # no validation split: validation is skipped
    assert "validation_loss" not in model.history
    assert np.isfinite(model.history["train_loss"].astype(float).to_numpy()).all()


def test_cpu_batches_are_packed(sample48_model, monkeypatch):
    """A CPU batch computes only the real tokens of its cells (as the mamba-ssm path does)."""
    import genemamba_scvi.module as module

    model, _ = sample48_model
    enc = model.module.encoder
    seen, real_forward = [], enc.forward
    monkeypatch.setattr(enc, "forward", lambda *a, **k: seen.append(k.get("packed")) or real_forward(*a, **k))
    packed = model.get_latent_representation(indices=range(8))
    monkeypatch.setattr(module, "_PACK_ON_CPU", False)
    padded = model.get_latent_representation(indices=range(8))
    assert seen == [True, False]
    np.testing.assert_allclose(packed, padded, atol=1e-5)
