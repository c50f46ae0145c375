"""Precision plumbing of the public entry points (CPU): what ``precision=`` resolves to and reaches."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

from conftest import TINY_MODEL_CONFIG, settings
from genemamba_scvi import GeneMambaModel
from genemamba_scvi._precision import inference_autocast, resolve_precision, training_on_gpu

TINY = {**settings(TINY_MODEL_CONFIG.replace(d_model=32, headdim=16)), "max_genes": 64}


def _first_linear(model) -> torch.nn.Linear:
    """The first matrix product of the encoder's first layer (its output dtype shows the autocast)."""
    return next(m for m in model.module.encoder.layers[0].modules() if isinstance(m, torch.nn.Linear))


@pytest.fixture(scope="module")
def model(_sample_adata_session):
    adata = _sample_adata_session[:96].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    scvi.settings.seed = 0
    return GeneMambaModel(adata, **TINY)


@pytest.mark.parametrize(
    ("given", "on_gpu", "expected"),
    [
        ("auto", False, "32-true"),
        (None, False, "32-true"),
        ("32", True, "32-true"),
        (32, True, "32-true"),
        ("bf16", False, "bf16-mixed"),
        ("BF16-Mixed", True, "bf16-mixed"),
        (16, True, "16-mixed"),
    ],
)
def test_precision_names_resolve_to_lightning_strings(given, on_gpu, expected):
    assert resolve_precision(given, on_gpu) == expected


def test_auto_precision_is_float32_without_a_cuda_device():
    # on this CPU machine "auto" must stay float32 even if asked for a GPU run
    if not torch.cuda.is_available():
        assert resolve_precision("auto", on_gpu=True) == "32-true"


@pytest.mark.parametrize("bad", ["64-true", "bf16-true", "half", True, 8, 1.5])
def test_unknown_precision_is_refused_with_the_accepted_names(bad):
    with pytest.raises(ValueError, match="bf16-mixed"):
        resolve_precision(bad, on_gpu=False)


def test_training_on_gpu_follows_the_accelerator_argument():
    assert training_on_gpu("gpu") and training_on_gpu("cuda")
    assert not training_on_gpu("cpu")
    assert training_on_gpu("auto") == torch.cuda.is_available()


def test_embedding_default_on_cpu_is_float32_and_unchanged(model):
    z_auto = model.get_latent_representation()
    z_32 = model.get_latent_representation(precision="32-true")
    assert z_auto.dtype == np.float32
    np.testing.assert_array_equal(z_auto, z_32)


def test_requested_bf16_reaches_the_encoder_and_embeddings_stay_float32(model):
    seen: list[torch.dtype] = []
    layer = _first_linear(model)
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        z = model.get_latent_representation(precision="bf16-mixed")
    finally:
        handle.remove()
    assert torch.bfloat16 in seen
    assert z.dtype == np.float32
    z32 = model.get_latent_representation(precision="32-true")
    cos = (z * z32).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(z32, axis=1))
    assert cos.min() > 0.99
    assert not np.array_equal(z, z32)  # bf16 was really used


def test_embedding_precision_keyword_is_validated(model):
    with pytest.raises(ValueError, match="precision"):
        model.get_latent_representation(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        model.get_latent_representation(batch_size=0)


def test_training_precision_reaches_the_trainer_and_the_module(model):
    seen: list[torch.dtype] = []
    layer = _first_linear(model)
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype) if mod.training else None)
    try:
        model.train(max_epochs=1, max_steps=1, batch_size=16, accelerator="cpu", enable_progress_bar=False)
        assert str(model.trainer.precision) == "32-true"  # auto on CPU
        assert set(seen) == {torch.float32}
        seen.clear()
        model.train(
            max_epochs=1, max_steps=1, batch_size=16, accelerator="cpu", precision="bf16", enable_progress_bar=False
        )
        assert str(model.trainer.precision) == "bf16-mixed"
        assert torch.bfloat16 in seen
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="precision"):
        model.train(max_epochs=1, accelerator="cpu", precision="64-true")


def test_progress_bar_keyword_shows_and_hides_the_bar(model, capsys):
    model.get_latent_representation(progress_bar=True)
    assert "Embedding cells" in capsys.readouterr().err
    model.get_latent_representation(progress_bar=False)
    assert "Embedding cells" not in capsys.readouterr().err
    model.get_latent_representation()  # 96 cells: below the automatic threshold
    assert "Embedding cells" not in capsys.readouterr().err


def test_inference_autocast_is_a_no_op_for_float32():
    with inference_autocast("32-true", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with inference_autocast("bf16-mixed", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")


def test_a_fused_adamw_is_clipped_by_the_plan_itself():
    # session 34: the plan's AdamW is fused on a GPU, and Lightning's mixed-precision plugin refuses to clip the
    # gradients of a fused optimiser (a guard for fp16's scaler); the plan clips them itself, as Lightning would
    from genemamba_scvi.module import GeneMambaModule
    from genemamba_scvi.train import GeneMambaTrainingPlan

    torch.manual_seed(0)
    module = GeneMambaModule(40, config=TINY_MODEL_CONFIG)
    plan = GeneMambaTrainingPlan(module)
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    fused = torch.optim.AdamW(params, fused=True)
    plan.configure_gradient_clipping(fused, 1.0, "norm")
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)
    plan.configure_gradient_clipping(fused, 0.5, "value")
    assert max(float(p.grad.abs().max()) for p in params) <= 0.5
