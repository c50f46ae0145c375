"""AdamW's epsilon: scvi-tools' 0.01 (what GeneMamba trained with until session 16) against 1e-8 (the new default).

scvi-tools' ``TrainingPlan`` defaults to ``eps=0.01``, a value for its VAEs. Adam divides each step by
``sqrt(v) + eps``; when the gradients' root mean square is far below 0.01, ``eps`` dominates the denominator
and every step shrinks with it. This script measures what that did to GeneMamba's pre-training, on real cells,
in one run: the same tiny model as the biology benchmarks (``docs/biology.md``: d_model 64, 2 Bi-Mamba layers,
top-256 genes, masked genes + 0.1 x pathway InfoNCE on the training KEGG sets, 600 steps of 16 cells), with
``eps`` 0.01 and 1e-8, at the benchmarks' peak lr 1e-2 and at the API's default 1e-3, over seeds.

Data: the 700 pbmc68k cells (``datasets.load_pbmc68k_counts``). Each seed draws a stratified 80/20 split of the
cells by ``bulk_labels``; the model is pre-trained on the 80% (labels unused) and the 20% are held out:

- ``val_lm_loss`` / ``val_mlm_accuracy``: the masked-gene loss and accuracy on the held-out cells (the same
  masks for every arm of a seed);
- ``knn_accuracy`` / ``knn_macro_f1``: a 15-nearest-neighbour classifier of ``bulk_labels`` fitted on the training
  cells' embeddings and scored on the held-out cells' (fixed protocol, nothing tuned);
- ``grad_rms``: the root mean square of all parameters' gradients over the last 20 steps, next to ``eps``.

Differences ``eps=1e-8`` minus ``eps=0.01`` are paired by seed (same split, initialisation and batches), with a
95% t-interval over the seeds.

Usage::

    python benchmarks/optimizer_eps.py                  # 3 seeds x 2 lr x 2 eps -> results/optimizer_eps.json
    python benchmarks/optimizer_eps.py --quick --out /tmp/eps.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from _common import RESULTS, environment, pathway_split, quiet, set_threads, split_cells, write_json

EPS_OLD, EPS_NEW = 1e-2, 1e-8


class GradRMS(Callback):
    """Root mean square of all gradients before each optimiser step; ``value``: the mean of the last ``n`` steps."""

    def __init__(self, n: int = 20):
        self.n = n
        self.values: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().float().ravel() for p in pl_module.parameters() if p.grad is not None]
        self.values.append(float(torch.cat(grads).pow(2).mean().sqrt()))
        del self.values[: -self.n]

    @property
    def value(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")


def _masked_eval(model, adata, cells: np.ndarray, seed: int) -> tuple[float, float]:
    """Masked-gene cross-entropy and accuracy on ``cells`` (15% masks drawn with ``seed``, the same for every arm)."""
    from _common import iter_tokens

    module = model.module.eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    loss_sum, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for tokens, lengths in iter_tokens(model, adata, np.flatnonzero(cells), batch_size=64):
            inputs, labels = module._mask(tokens, lengths, generator=gen)  # the training masks, seeded
            hidden = module.encoder(inputs, lengths)
            selected = labels != -100
            logits = module.lm_head(hidden[selected]).float()
            target = labels[selected]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            hits += int((logits.argmax(-1) == target).sum())
            n += int(selected.sum())
    return loss_sum / max(n, 1), hits / max(n, 1)


def run_arm(adata, train, test, labels, *, eps: float, lr: float, seed: int, steps: int, args) -> dict:
    import scvi
    from sklearn.metrics import f1_score
    from sklearn.neighbors import KNeighborsClassifier

    from genemamba_scvi import GeneMambaModel

    train_ad = adata[train].copy()
    GeneMambaModel.setup_anndata(train_ad, layer="counts")
    scvi.settings.seed = seed
    model = GeneMambaModel(
        train_ad,
        d_model=args.d_model,
        n_layers=args.n_layers,
        max_genes=args.max_genes,
        d_state=16,
        headdim=32,
        chunk_size=64,
        backend="torch",
    )
    train_sets, _ = pathway_split("kegg", 0.2)
    rms = GradRMS()
    epochs = int(np.ceil(steps / np.ceil(train.sum() / args.batch_size)))  # train: a boolean mask of all cells
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        max_steps=steps,
        gene_sets=train_sets,
        gamma=0.1,
        lr=lr,
        batch_size=args.batch_size,
        accelerator="cpu",
        train_size=1.0,
        plan_kwargs={"eps": eps},
        callbacks=[rms],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    wall = time.perf_counter() - t0
    history = model.history
    lm_curve = np.asarray(history["lm_loss_train"], dtype=np.float64).ravel()
    z_train = model.get_latent_representation(train_ad)
    z_test = model.get_latent_representation(adata[test].copy())
    knn = KNeighborsClassifier(n_neighbors=15).fit(z_train, labels[train])
    pred = knn.predict(z_test)
    val_loss, val_acc = _masked_eval(model, adata, test, seed)
    return {
        "eps": eps,
        "lr": lr,
        "seed": seed,
        "train_lm_loss_per_epoch": lm_curve.round(4).tolist(),
        "val_lm_loss": val_loss,
        "val_mlm_accuracy": val_acc,
        "knn_accuracy": float((pred == labels[test]).mean()),
        "knn_macro_f1": float(f1_score(labels[test], pred, average="macro")),
        "grad_rms": rms.value,
        "optimizer_steps": int(model.trainer.global_step),
        "wall_seconds": round(wall, 1),
    }


def paired(rows: list[dict], metric: str, lr: float) -> dict:
    """``eps=1e-8`` minus ``eps=0.01`` per seed at ``lr``: mean and 95% t-interval over seeds."""
    from scipy import stats

    by = {(r["eps"], r["seed"]): r[metric] for r in rows if r["lr"] == lr}
    seeds = sorted({s for (_, s) in by if (EPS_OLD, s) in by and (EPS_NEW, s) in by})
    diff = np.array([by[(EPS_NEW, s)] - by[(EPS_OLD, s)] for s in seeds])
    out = {
        "metric": metric,
        "lr": lr,
        "seeds": seeds,
        "eps_0.01": [by[(EPS_OLD, s)] for s in seeds],
        "eps_1e-8": [by[(EPS_NEW, s)] for s in seeds],
        "mean_difference": float(diff.mean()) if len(diff) else float("nan"),
    }
    if len(diff) > 1:
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        out["ci95"] = [float(diff.mean() - half), float(diff.mean() + half)]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--max-genes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 steps, one seed, one lr (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "optimizer_eps.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.lrs = 4, args.seeds[:1], args.lrs[:1]
    quiet()
    set_threads(args.threads)
    from genemamba_scvi import datasets

    adata = datasets.load_pbmc68k_counts()
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        train, test = split_cells(adata.n_obs, 0.2, seed, stratify=labels)
        for lr in args.lrs:
            for eps in (EPS_OLD, EPS_NEW):
                row = run_arm(adata, train, test, labels, eps=eps, lr=lr, seed=seed, steps=args.steps, args=args)
                print(json.dumps({k: v for k, v in row.items() if k != "train_lm_loss_per_epoch"}), flush=True)
                rows.append(row)
    metrics = ("val_lm_loss", "val_mlm_accuracy", "knn_accuracy", "knn_macro_f1")
    result = {
        "benchmark": "optimizer_eps",
        "data": "pbmc68k (700 cells, 765 genes), stratified 80/20 split per seed",
        "config": {k: getattr(args, k) for k in ("steps", "batch_size", "d_model", "n_layers", "max_genes")},
        "runs": rows,
        "paired_new_minus_old": [paired(rows, m, lr) for lr in args.lrs for m in metrics],
        "total_seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
