"""Cell-type annotation: fine-tuned GeneMamba vs logistic regression on PCA vs scANVI, on a held-out split.

Data: scanpy's pbmc68k_reduced with integer counts recovered (``datasets.load_pbmc68k_counts``): 700 real
PBMCs, 765 genes, 10 ``bulk_labels`` (FACS-sorted-bulk reference labels of the 68k PBMC study). A stratified
20% split (seed ``--seed``) is held out and never seen by any method, not even unlabelled.

Methods (all trained on the same 80% training cells, in this run):

- ``GeneMamba fine-tuned``: GeneMamba pre-trained (masked-gene loss + ``gamma`` x pathway InfoNCE on the
  training KEGG sets) on the training PBMCs plus the 559 unlabelled celltypist-sample cells (on the shared
  genes; a second real data set, no labels used), then ``train_classifier`` (linear head, full fine-tuning);
- ``GeneMamba embedding + LR``: logistic regression on the frozen pre-trained cell embeddings (linear probe);
- ``GeneMamba 0-layer embedding + LR``: the same for the bag-of-genes model with zero Bi-Mamba layers,
  pre-trained identically (DESIGN.md's baseline that every Bi-Mamba result must beat);
- ``PCA + LR``: logistic regression on 50 PCs of log-normalised, scaled expression (PCA fitted on the
  training cells);
- ``scANVI``: scVI (10 latent dims) then scANVI on the training cells' counts with their labels; the test
  cells are predicted as a query (``predict(adata_test)``).

Metrics: accuracy and macro-F1 on the held-out cells; per-class F1 table (CSV) and heat map (PNG).

Usage::

    python benchmarks/annotation.py
    python benchmarks/annotation.py --unidirectional   # ablation
    python benchmarks/annotation.py --gamma 0          # ablation
    python benchmarks/annotation.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

LABEL = "bulk_labels"


def scores(y_true, y_pred, classes) -> tuple[dict, pd.Series]:
    from sklearn.metrics import accuracy_score, f1_score

    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return (
        {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        },
        pd.Series(per_class, index=classes),
    )


def bootstrap_ci(y_true, y_pred, classes, n_boot: int = 1000, seed: int = 0) -> dict:
    """95% percentile intervals of accuracy and macro-F1 over resamples of the held-out cells."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    acc, mf1 = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y_true), len(y_true))
        acc.append(float(np.mean(y_true[i] == y_pred[i])))
        mf1.append(float(f1_score(y_true[i], y_pred[i], labels=classes, average="macro", zero_division=0)))
    (a_lo, a_hi), (f_lo, f_hi) = np.percentile(acc, [2.5, 97.5]), np.percentile(mf1, [2.5, 97.5])
    return {"accuracy_ci95": [float(a_lo), float(a_hi)], "macro_f1_ci95": [float(f_lo), float(f_hi)]}


def logistic(train_x, train_y, test_x, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0, random_state=seed))
    clf.fit(train_x, train_y)
    return clf.predict(test_x)


def pca_lr(train, test, seed: int, n_comps: int = 50):
    import scanpy as sc

    tr, te = C.log_normalize(train), C.log_normalize(test)
    sc.pp.scale(tr, max_value=10)
    mean, std = tr.var["mean"].to_numpy(), tr.var["std"].to_numpy()
    X_te = np.clip((np.asarray(te.X.todense()) - mean) / np.where(std > 0, std, 1), -10, 10)
    sc.pp.pca(tr, n_comps=n_comps, random_state=seed)
    z_te = X_te @ tr.varm["PCs"]
    return logistic(tr.obsm["X_pca"], tr.obs[LABEL].astype(str), z_te, seed)


def scanvi(train, test, seed: int, quick: bool):
    import scvi

    scvi.settings.seed = seed
    tr = train.copy()
    scvi.model.SCVI.setup_anndata(tr, layer="counts", labels_key=LABEL)
    vae = scvi.model.SCVI(tr, n_latent=10)
    kw = {"accelerator": "cpu", "enable_progress_bar": False}
    vae.train(max_epochs=20 if quick else 200, **kw)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key=LABEL)
    lvae.train(max_epochs=5 if quick else 50, n_samples_per_label=None, **kw)
    te = test.copy()
    te.obs[LABEL] = pd.Categorical(["Unknown"] * te.n_obs)  # no test label reaches the model
    return np.asarray(lvae.predict(te)).astype(str), {
        "scvi_epochs": 20 if quick else 200,
        "scanvi_epochs": 5 if quick else 50,
        "n_latent": 10,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--finetune-epochs", type=int, default=None, help="classifier fine-tuning epochs (default 6)")
    parser.add_argument("--finetune-lr", type=float, default=5e-3)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--no-scanvi", action="store_true")
    args = parser.parse_args(argv)
    C.quiet()
    C.set_threads(args.threads)
    t_start = time.perf_counter()
    import anndata as ad

    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.datasets import load_celltypist_sample, load_pbmc68k_counts

    pb = load_pbmc68k_counts()
    pb.obs = pb.obs[[LABEL]].copy()
    pb.obs[LABEL] = pb.obs[LABEL].astype(str).astype("category")
    train_mask, test_mask = C.split_cells(pb.n_obs, args.test_fraction, args.seed, stratify=pb.obs[LABEL].to_numpy())
    train, test = pb[train_mask].copy(), pb[test_mask].copy()
    classes = sorted(pb.obs[LABEL].cat.categories)

    ct = load_celltypist_sample()
    ct = ct[:, [g for g in pb.var_names if g in set(ct.var_names)]].copy()
    ct = ct[np.asarray(ct.layers["counts"].sum(axis=1)).ravel() > 0].copy()
    ct.obs = pd.DataFrame(index="ct_" + ct.obs_names.astype(str))
    pre = ad.concat([train, ct], join="outer", fill_value=0)
    pre.obs = pd.DataFrame(index=pre.obs_names)
    pre = pre[:, pb.var_names].copy()
    pre.X = pre.layers["counts"].copy()
    data_name = (
        f"pbmc68k train split ({train.n_obs} cells, labels unused) + celltypist sample ({ct.n_obs} cells) "
        f"on the {pb.n_vars} pbmc68k genes"
    )
    name = "GeneMamba_U" if args.unidirectional else "GeneMamba"
    cfg = C.PretrainConfig.from_args(args)
    _, info = C.pretrain_genemamba(pre, cfg, data_name, args)
    cfg0 = C.PretrainConfig.from_args(args, n_layers=0)
    model0, info0 = C.pretrain_genemamba(pre.copy(), cfg0, data_name, args)

    results, per_class, preds = {}, {}, {}
    timings = {}

    # GeneMamba: fine-tune on the labelled training cells
    GeneMambaModel.setup_anndata(train, layer="counts")
    model = GeneMambaModel.load(info["saved_to"], adata=train, accelerator="cpu")
    z_train = model.get_latent_representation(train)
    z_test = model.get_latent_representation(test)
    model0 = GeneMambaModel.load(info0["saved_to"], adata=train, accelerator="cpu")
    z0_train, z0_test = model0.get_latent_representation(train), model0.get_latent_representation(test)
    ft_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if args.quick else 6)

    def finetune(m, class_weight):
        import scvi

        scvi.settings.seed = args.seed  # same shuffling whether or not the pre-training came from the cache
        m.train_classifier(
            labels_key=LABEL,
            max_epochs=ft_epochs,
            lr=args.finetune_lr,
            batch_size=args.batch_size,
            class_weight=class_weight,
            accelerator=args.accelerator,
            devices=1,
            train_size=1.0,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )

    t0 = time.perf_counter()
    finetune(model, None)
    timings["genemamba_finetune_seconds"] = round(time.perf_counter() - t0, 1)
    # the same pre-trained weights fine-tuned with balanced class weights (rare types weigh more)
    model_bal = GeneMambaModel.load(info["saved_to"], adata=train, accelerator="cpu")
    finetune(model_bal, "balanced")
    GeneMambaModel.setup_anndata(test, layer="counts")
    preds[f"{name} fine-tuned"] = np.asarray(model.predict(test)).astype(str)
    preds[f"{name} fine-tuned, balanced"] = np.asarray(model_bal.predict(test)).astype(str)
    preds[f"{name} embedding + LR"] = logistic(z_train, train.obs[LABEL].astype(str), z_test, args.seed)
    preds["GeneMamba 0-layer embedding + LR"] = logistic(z0_train, train.obs[LABEL].astype(str), z0_test, args.seed)
    t0 = time.perf_counter()
    preds["PCA (50) + LR"] = pca_lr(train, test, args.seed)
    timings["pca_lr_seconds"] = round(time.perf_counter() - t0, 1)
    scanvi_info = None
    if not args.no_scanvi:
        t0 = time.perf_counter()
        preds["scANVI"], scanvi_info = scanvi(train, test, args.seed, args.quick)
        timings["scanvi_seconds"] = round(time.perf_counter() - t0, 1)

    y = test.obs[LABEL].astype(str).to_numpy()
    for k, p in preds.items():
        results[k], per_class[k] = scores(y, p, classes)
        ci = bootstrap_ci(y, p, classes, n_boot=200 if args.quick else 1000, seed=args.seed)
        results[k]["accuracy_ci95_low"], results[k]["accuracy_ci95_high"] = ci["accuracy_ci95"]
        results[k]["macro_f1_ci95_low"], results[k]["macro_f1_ci95_high"] = ci["macro_f1_ci95"]
    summary = pd.DataFrame(results).T
    summary.index.name = "method"
    per_class_df = pd.DataFrame(per_class)
    per_class_df.index.name = "cell type"
    support = pd.Series(y).value_counts().reindex(classes).fillna(0).astype(int)
    per_class_df.insert(0, "n_test_cells", support.to_numpy())
    print(summary.round(4).to_string())
    print(per_class_df.round(3).to_string())

    suffix = C.run_suffix(args)
    out_dir = args.out_dir
    summary.to_csv(out_dir / f"annotation{suffix}.csv")
    per_class_df.to_csv(out_dir / f"annotation_per_class{suffix}.csv")
    _plot(per_class_df, summary, out_dir / f"annotation{suffix}.png")
    finetune_steps = int(np.ceil(train.n_obs / args.batch_size)) * ft_epochs
    out = {
        "benchmark": "annotation",
        "data": {
            "name": "pbmc68k_reduced with recovered integer counts (real, 700 PBMCs, 765 genes, 10 bulk_labels)",
            "n_train_cells": train.n_obs,
            "n_test_cells": test.n_obs,
            "split": f"stratified by {LABEL}, test fraction {args.test_fraction}, seed {args.seed}",
            "test_class_counts": support.to_dict(),
        },
        "model": info,
        "zero_layer_model": info0,
        "finetune": {
            "epochs": ft_epochs,
            "optimizer_steps": finetune_steps,
            "lr": args.finetune_lr,
            "head": "linear",
            "encoder": "fine-tuned (not frozen)",
            "class_weight": "None; the ', balanced' row: class_weight='balanced' (n / (n_types * n_type))",
            "cells": train.n_obs,
        },
        "scanvi": scanvi_info,
        "results": summary.reset_index().to_dict(orient="records"),
        "per_class_f1": per_class_df.reset_index().to_dict(orient="records"),
        "timings": timings,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "environment": C.environment(),
    }
    C.write_json(out_dir / f"annotation{suffix}.json", out)
    return out


def _plot(per_class: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = per_class.drop(columns="n_test_cells")
    fig, ax = plt.subplots(figsize=(1.6 * data.shape[1] + 3, 0.45 * data.shape[0] + 2))
    im = ax.imshow(data.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(data.shape[1]))
    ax.set_xticklabels(
        [f"{c}\nacc {summary.loc[c, 'accuracy']:.2f}, mF1 {summary.loc[c, 'macro_f1']:.2f}" for c in data.columns],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(data.shape[0]))
    ax.set_yticklabels([f"{i} (n={n})" for i, n in zip(data.index, per_class["n_test_cells"])], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data.iat[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, label="F1 (held-out cells)")
    ax.set_title("Per-class F1, pbmc68k held-out split")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
