"""GPU tests of the public API path (bf16 by default, shipped kernel configurations); via the device tool.

Skipped cleanly without CUDA and the mamba-ssm kernels. Run with ``pytest -m gpu tests/test_model_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

from genemamba_scvi.nn import mamba_ssm_available


def _first_linear(model) -> torch.nn.Linear:
    """The first matrix product of the encoder's first layer (its output dtype shows the autocast)."""
    return next(m for m in model.module.encoder.layers[0].modules() if isinstance(m, torch.nn.Linear))


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs mamba-ssm kernels"),
]


@pytest.fixture(scope="module")
def gpu_model(_sample_adata_session):
    from genemamba_scvi import GeneMambaModel

    adata = _sample_adata_session[:256].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    scvi.settings.seed = 0
    model = GeneMambaModel(adata, d_model=256, n_layers=2, max_genes=1024)
    model.to_device("cuda")
    return model


def test_gpu_embedding_defaults_to_bf16_and_returns_float32(gpu_model):
    seen: list[torch.dtype] = []
    handle = _first_linear(gpu_model).register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        z = gpu_model.get_latent_representation()
    finally:
        handle.remove()
    assert torch.bfloat16 in seen
    assert z.dtype == np.float32
    z32 = gpu_model.get_latent_representation(precision="32-true")
    cos = (z * z32).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(z32, axis=1))
    assert cos.min() > 0.999


def test_in_silico_perturbation_on_the_gpu(gpu_model):
    # session 30: the perturbed tokens reach the mamba-ssm kernels (packed cells of new lengths); bf16 by default
    # against float32 on the same GPU: the same cells perturbed, shifts within bf16 noise of each other
    genes = ["LYZ", "CD74"]
    fast = gpu_model.in_silico_perturb(genes, indices=np.arange(64))
    exact = gpu_model.in_silico_perturb(genes, indices=np.arange(64), precision="32-true")
    assert fast.notna().equals(exact.notna()) and exact.notna().to_numpy().sum() > 10
    assert ((exact < 1) | exact.isna()).all().all()
    np.testing.assert_allclose(fast.to_numpy(), exact.to_numpy(), atol=2e-3)
    over = gpu_model.in_silico_perturb("LYZ", indices=np.arange(64), perturb_type="overexpress")
    assert over["LYZ"].notna().all()


def test_gpu_training_defaults_to_bf16_mixed(gpu_model):
    gpu_model.train(max_epochs=1, max_steps=2, batch_size=16, enable_progress_bar=False)
    assert str(gpu_model.trainer.precision) == "bf16-mixed"
    run = gpu_model.train_runs[-1]  # what a methods section reads: the run on the GPU, in bf16
    assert run["device"].startswith("cuda") and run["precision"] == "bf16-mixed"
    assert run["steps"] == gpu_model.trainer.global_step > 0


def test_gpu_inference_batch_fits_the_memory_it_is_given(gpu_model):
    # session 32: the default batch takes 40% of the free memory at a measured cost per token; check what one
    # default-batch embedding really holds at its peak against that share (review: not the formula again)
    device = torch.device("cuda", torch.cuda.current_device())
    free, _ = torch.cuda.mem_get_info(device)
    bs = gpu_model._inference_batch_size(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    gpu_model.get_latent_representation(indices=np.arange(min(bs, gpu_model.adata.n_obs)), batch_size=bs)
    assert torch.cuda.max_memory_allocated(device) - base <= 0.4 * free


def test_gpu_training_and_embedding_tokenize_in_a_background_thread(gpu_model):
    # session 31: on a GPU the loader makes the next minibatches in a thread while the device computes (embedding by
    # default; training when asked)
    import threading

    import lightning.pytorch as pl

    seen = []

    class Threads(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append((trainer.train_dataloader.background, any(t.name == "genemamba-prefetch"
                                                                   for t in threading.enumerate())))  # fmt: skip

    gpu_model.train(max_epochs=1, max_steps=3, batch_size=16, enable_progress_bar=False, callbacks=[Threads()],
                    datasplitter_kwargs={"background": True})  # fmt: skip
    assert seen[0] == (True, False) and seen[-1] == (True, True)  # the first minibatch made in the caller's thread
    assert not any(t.name == "genemamba-prefetch" for t in threading.enumerate())  # stopped after max_steps
    during = []  # embedding: the thread by default (review: the default was untested)
    hook = gpu_model.module.encoder.register_forward_hook(
        lambda *a: during.append(any(t.name == "genemamba-prefetch" for t in threading.enumerate()))
    )
    try:
        z = gpu_model.get_latent_representation(batch_size=32)
    finally:
        hook.remove()
    assert during and during[0]
    assert np.isfinite(z).all() and not any(t.name == "genemamba-prefetch" for t in threading.enumerate())


def test_shipped_configurations_are_installed_on_hopper(gpu_model):
    from genemamba_scvi.nn.kernel_configs import install_tuned_configs

    stats = install_tuned_configs()
    if torch.cuda.get_device_capability() == (9, 0):
        assert stats["shipped"] is not None and stats["installed"] >= 16


def test_official_checkpoint_is_placed_on_the_gpu_by_default(tmp_path, _sample_adata_session):
    """``from_pretrained`` puts the model where ``load`` would (it stayed on the CPU before session 17)."""
    from _official_writer import write_official_checkpoint
    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.data.vocab import GeneVocab
    from genemamba_scvi.nn import GeneMambaEncoder, MaskedLMHead

    adata = _sample_adata_session[:64].copy()
    vocab = GeneVocab.from_var_names(list(adata.var_names))
    kwargs = {"d_model": 64, "n_layers": 2, "d_state": 16, "headdim": 32, "chunk_size": 64}
    enc = GeneMambaEncoder(len(vocab), merge="gate", shared_merge=True, block="official", backend="torch", **kwargs)
    path = write_official_checkpoint(
        tmp_path / "GeneMamba",
        {**kwargs, "vocab_size": len(vocab), "merge": "gate", "shared_merge": True, "block": "official"},
        enc.state_dict(),
        MaskedLMHead(64, len(vocab)).state_dict(),
        vocab,
    )
    GeneMambaModel.setup_anndata(adata, layer="counts")
    on_gpu = GeneMambaModel.from_pretrained(path, adata, pooling="mean", max_genes=256)
    assert on_gpu.device.type == "cuda"
    on_cpu = GeneMambaModel.from_pretrained(path, adata, pooling="mean", max_genes=256, accelerator="cpu")
    assert on_cpu.device.type == "cpu"
    z_gpu = on_gpu.get_latent_representation(precision="32-true")
    z_cpu = on_cpu.get_latent_representation()
    np.testing.assert_allclose(z_gpu, z_cpu, rtol=1e-3, atol=1e-3)


def test_a_users_gpu_session_round_trips_to_the_cpu(tmp_path):
    """A notebook's GPU path through the public API: train, fine-tune a head, predict, save, then load on the GPU
    (the same embeddings and labels) and on a CPU (the torch backend in float32: the same labels for nearly every
    cell, embeddings at cosine > 0.99 from the GPU's bf16)."""
    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.datasets import load_pbmc68k_counts

    adata = load_pbmc68k_counts()  # 700 real PBMCs with their labels
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    scvi.settings.seed = 0
    model = GeneMambaModel(adata, d_model=128, n_layers=2, max_genes=512)  # built on the CPU, as scvi-tools' models
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    assert model.device.type == "cuda"  # train put it on the GPU, and it stays there
    model.train_classifier(max_epochs=2, batch_size=32, enable_progress_bar=False)
    z, labels = model.get_latent_representation(), model.predict()
    assert np.isfinite(z).all() and len(labels) == adata.n_obs
    model.save(tmp_path / "m")
    again = GeneMambaModel.load(tmp_path / "m", adata=adata.copy())
    assert again.device.type == "cuda"
    np.testing.assert_allclose(again.get_latent_representation(), z, rtol=0, atol=0)
    assert (again.predict() == labels).all()
    on_cpu = GeneMambaModel.load(tmp_path / "m", adata=adata.copy(), accelerator="cpu")
    z_cpu = on_cpu.get_latent_representation()
    cos = (z * z_cpu).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(z_cpu, axis=1))
    assert cos.min() > 0.99, cos.min()
    assert (on_cpu.predict() == labels).mean() >= 0.95
