"""End-to-end GeneMambaModel on a GPU: train on the shipped real sample, embed, and check that the
mamba-ssm backend (packed varlen path) and the pure-torch backend give the same cell embeddings for the
same weights. Writes JSON.

Run on the device machine (see shared/gpu/README.md for the kernels and scverse wheels):

    python benchmarks/gpu_model_e2e.py --out $OUT/gpu_model_e2e.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import scvi
import torch

from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_celltypist_sample, load_pbmc68k_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/gpu_model_e2e.json")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run to check the script itself")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if not smoke:
        assert torch.cuda.is_available(), "needs a CUDA GPU"
    acc = "cpu" if smoke else "gpu"
    size = {"d_model": 32, "n_layers": 1, "max_genes": 128} if smoke else {"d_model": 256, "n_layers": 8}
    scvi.settings.seed = 0
    device_name = "cpu" if smoke else torch.cuda.get_device_name(0)
    result: dict = {"gpu": device_name, "torch": torch.__version__, "python": platform.python_version()}

    adata = load_celltypist_sample()
    if smoke:
        adata = adata[:64].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **{"max_genes": 2048, **size}, backend="auto")
    result["model"] = model._model_summary_string
    result["backend_on_gpu"] = model.module.encoder.resolved_backend(torch.device("cpu" if smoke else "cuda"))
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        gene_sets="kegg",
        batch_size=32,
        accelerator=acc,
        precision="32" if smoke else "bf16-mixed",
        enable_progress_bar=False,
    )
    if not smoke:
        torch.cuda.synchronize()
    result["train_seconds"] = time.perf_counter() - t0
    result["train_loss"] = model.history["train_loss"]["train_loss"].astype(float).tolist()
    result["device_after_train"] = str(next(model.module.parameters()).device)

    t0 = time.perf_counter()
    z_gpu = model.get_latent_representation(batch_size=128)
    if not smoke:
        torch.cuda.synchronize()
    result["embed_seconds"] = time.perf_counter() - t0
    result["embed_cells_per_s"] = adata.n_obs / result["embed_seconds"]

    # same weights, pure-torch backend (padded path), fp32 on the GPU
    enc = model.module.encoder
    for module in enc.modules():
        if hasattr(module, "backend") and isinstance(module.backend, str):
            module.backend = "torch"
    z_torch = model.get_latent_representation(batch_size=128)
    diff = np.abs(z_gpu - z_torch)
    result["embedding_max_abs_diff_mamba_ssm_vs_torch_fp32"] = float(diff.max())
    result["embedding_max_rel_diff"] = float(diff.max() / np.abs(z_torch).max())
    result["embedding_mean_cosine"] = float(
        np.mean((z_gpu * z_torch).sum(1) / (np.linalg.norm(z_gpu, axis=1) * np.linalg.norm(z_torch, axis=1) + 1e-12))
    )

    # annotation on real labels, GPU
    pbmc = load_pbmc68k_counts()
    if smoke:
        pbmc = pbmc[:96].copy()
    pbmc.obs["cell_type"] = pbmc.obs["bulk_labels"].astype(str)
    GeneMambaModel.setup_anndata(pbmc, layer="counts", labels_key="cell_type")
    clf = GeneMambaModel(pbmc, **({"d_model": 32, "n_layers": 1} if smoke else {"d_model": 128, "n_layers": 4}))
    clf.train(max_epochs=1 if smoke else 5, accelerator=acc, enable_progress_bar=False)
    clf.train_classifier(max_epochs=1 if smoke else 10, lr=3e-3, accelerator=acc, enable_progress_bar=False)
    probs = clf.predict(soft=True)
    result["predict_soft_rows_sum_to_1"] = bool(np.allclose(probs.to_numpy().sum(1), 1, atol=1e-5))
    result["train_accuracy_pbmc"] = float((clf.predict() == pbmc.obs["cell_type"].to_numpy()).mean())

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
