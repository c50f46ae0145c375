"""GPU tests of corpus pre-training through the public API (bf16 by default, mamba-ssm kernels); via the device tool.

Pre-training is what a GPU is bought for, and before session 34 it had only run on CPUs. Skipped cleanly without
CUDA and the mamba-ssm kernels. Run with ``pytest -m gpu tests/test_pretrain_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_sample_corpus, crash_callback
from genemamba_scvi.nn import mamba_ssm_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs mamba-ssm kernels"),
]

SMALL = {"d_model": 128, "n_layers": 2}  # mamba-ssm's kernels at their usual head size (64), two layers


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.mktemp("pretrain_gpu") / "corpus", max_genes=512, shard_size=128)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_gpu_pretraining_runs_in_bf16_on_the_kernels_and_its_model_embeds_on_the_gpu_and_a_cpu(corpus_dir, tmp_path):
    """``GeneMambaModel.pretrain`` on a GPU with the pathway loss: bf16-mixed by default, the mamba-ssm path,
    finite losses that fall, a run record naming the GPU; the saved model loads onto the GPU and onto a CPU (the
    torch backend in float32) and embeds the same cells alike (cosine > 0.99)."""
    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.pretrain import StepLossHistory

    history = StepLossHistory()
    result = GeneMambaModel.pretrain(
        corpus_dir,
        tmp_path / "model",
        max_steps=16,
        batch_size=64,
        lr=2e-3,
        gene_sets="go_bp",
        callbacks=[history],
        enable_progress_bar=False,
        **SMALL,
    )
    assert str(result.trainer.precision) == "bf16-mixed"
    assert result.module.encoder.resolved_backend(torch.device("cuda")) != "torch"
    losses = np.array(history.losses)
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert losses[-4:].mean() < losses[:4].mean(), losses  # 16 steps of masked-gene + pathway loss learn something
    assert "pathway_loss_train" in result.trainer.logger.history, sorted(result.trainer.logger.history)

    adata = load_celltypist_sample()[:200].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel.load(tmp_path / "model", adata=adata)
    assert model.device.type == "cuda"
    (run,) = model.train_runs
    assert run["method"] == "pretrain" and run["status"] == "completed" and run["steps"] == 16
    assert run["device"].startswith("cuda") and run["precision"] == "bf16-mixed"
    z = model.get_latent_representation()
    assert z.shape == (200, SMALL["d_model"]) and np.isfinite(z).all()
    on_cpu = GeneMambaModel.load(tmp_path / "model", adata=adata.copy(), accelerator="cpu")
    cos = _cosine_rows(z, on_cpu.get_latent_representation())
    assert cos.min() > 0.99, cos.min()


def test_gpu_pretraining_resumes_from_a_step_checkpoint_where_it_stopped(corpus_dir, tmp_path):
    """A run stopped after step 3 and resumed from its step-3 checkpoint trains steps 4-8 on the same batches with
    the same masks as the uninterrupted run: same steps, losses within the GPU's bf16 run-to-run spread (exact on a
    CPU, ``tests/test_pretrain.py``; the GPU's kernels add in a varying order)."""
    from genemamba_scvi.pretrain import StepLossHistory, pretrain_from_corpus

    def run(**kwargs):
        history = StepLossHistory()
        callbacks = [history, *kwargs.pop("callbacks", [])]
        common = {"max_steps": 8, "batch_size": 64, "lr": 2e-3, "seed": 5, "gene_sets": "go_bp"}
        result = pretrain_from_corpus(
            corpus_dir,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            **common,
            **SMALL,
            **kwargs,
        )
        return history, result

    ref, _ = run(checkpoint_dir=tmp_path / "ref", checkpoint_every_n_steps=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every_n_steps=3, callbacks=[crash_callback(3)])
    resumed, result = run(
        checkpoint_dir=tmp_path / "ckpt", checkpoint_every_n_steps=3, ckpt_path=tmp_path / "ckpt" / "step000000003.ckpt"
    )
    assert result.trainer.global_step == 8
    done = next(i for i, r in enumerate(ref.records) if r["step"] > 3)
    assert [r["step"] for r in resumed.records] == [r["step"] for r in ref.records[done:]]
    assert [r["n_tokens"] for r in resumed.records] == [r["n_tokens"] for r in ref.records[done:]]  # same batches
    np.testing.assert_allclose(resumed.losses, ref.losses[done:], rtol=2e-2)
