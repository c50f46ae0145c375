"""Cell-type annotation: fine-tuned GeneMamba vs logistic regression on PCA vs scANVI, on a held-out split.

Data: scanpy's pbmc68k_reduced with integer counts recovered (``datasets.load_pbmc68k_counts``): 700 real
PBMCs, 765 genes, 10 ``bulk_labels`` (FACS-sorted-bulk reference labels of the 68k PBMC study). A stratified
20% split (seed ``--seed``) is held out and never seen by any method, not even unlabelled.

Model selection (the same procedure for every method): a stratified 20% of the training cells is a validation
split; each setting of a method's grid is fitted on the other 80% and scored on the validation cells (macro-F1
over the classes present there); the best setting (the first on ties) is refitted on all training cells and
scored once on the test cells. Grids: logistic regression C in {0.01, 0.1, 1, 10} x class weight {none,
balanced}; GeneMamba fine-tuning class weight {none, balanced} (lr 5e-3, 6 epochs: fixed, see docs); scANVI
latent size {10, 30}.

Methods (all trained on the same training cells, in this run):

- ``GeneMamba fine-tuned``: GeneMamba pre-trained (masked-gene loss + ``gamma`` x pathway InfoNCE on the
  training KEGG sets) on the training PBMCs plus the 559 unlabelled celltypist-sample cells (on the shared
  genes; a second real data set, no labels used), then ``train_classifier`` (linear head, full fine-tuning);
- ``... embedding + LR``: logistic regression on frozen cell embeddings (linear probe) of GeneMamba, of the
  0-layer bag-of-genes model (pre-trained identically), and of both models untrained (random init);
- ``PCA (50) + LR``: logistic regression on 50 PCs of log-normalised, scaled expression (PCA fitted on the
  training cells);
- ``scANVI``: scVI then scANVI on the training cells' counts with their labels; the test cells are predicted as
  a query (``predict(adata_test)``).

Metrics: accuracy; macro-F1 over the classes with >= 5 test cells (``macro_f1``; the stratified split gives the
same test counts for every seed: 7 of 10 classes) and over all classes (``macro_f1_all_classes``); per-class F1.
Each run writes ``results/seeds/annotation[...]_seed<n>.json`` (with every prediction); ``aggregate.py``
summarises the seeds. ``--seed`` changes the split, the validation split, every initialisation and shuffle.

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
MIN_TEST_CELLS = 5  # macro-F1 rule: the headline macro-F1 averages classes with >= 5 test cells
LR_GRID = [{"C": c, "class_weight": w} for c in (0.01, 0.1, 1.0, 10.0) for w in (None, "balanced")]
FINETUNE_GRID = [{"lr": 5e-3, "class_weight": w} for w in (None, "balanced")]
SCANVI_GRID = [{"n_latent": n} for n in (10, 30)]


def scores(y_true, y_pred, classes, major: list[str]) -> tuple[dict, pd.Series]:
    """Accuracy, macro-F1 over ``major`` classes (>= MIN_TEST_CELLS test cells) and over all, weighted F1."""
    from sklearn.metrics import accuracy_score, f1_score

    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return (
        {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=major, average="macro", zero_division=0)),
            "macro_f1_all_classes": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        },
        pd.Series(per_class, index=classes),
    )


def validation_score(y_true, y_pred) -> float:
    """Model-selection score on the validation cells: macro-F1 over the classes present there."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))


def select(grid: list[dict], fit_predict, y_val) -> tuple[dict, list[dict]]:
    """The setting of ``grid`` with the best validation score (first on ties), and every setting's score."""
    trials = []
    for setting in grid:
        trials.append({**setting, "validation_macro_f1": validation_score(y_val, fit_predict(setting))})
    best = max(range(len(grid)), key=lambda i: (trials[i]["validation_macro_f1"], -i))
    return grid[best], trials


def logistic(train_x, train_y, test_x, seed: int, C: float = 1.0, class_weight=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, C=C, class_weight=class_weight, random_state=seed)
    )
    clf.fit(train_x, train_y)
    return clf.predict(test_x)


def pca_embed(train, test, seed: int, n_comps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """50 PCs of log-normalised, scaled expression, fitted on ``train`` only; ``test`` projected."""
    import scanpy as sc

    tr, te = C.log_normalize(train), C.log_normalize(test)
    sc.pp.scale(tr, max_value=10)
    mean, std = tr.var["mean"].to_numpy(), tr.var["std"].to_numpy()
    X_te = np.clip((np.asarray(te.X.todense()) - mean) / np.where(std > 0, std, 1), -10, 10)
    sc.pp.pca(tr, n_comps=n_comps, random_state=seed)
    return tr.obsm["X_pca"], X_te @ tr.varm["PCs"]


def scanvi(train, test, seed: int, quick: bool, n_latent: int = 10, accelerator: str = "cpu"):
    import scvi

    scvi.settings.seed = seed
    tr = train.copy()
    scvi.model.SCVI.setup_anndata(tr, layer="counts", labels_key=LABEL)
    vae = scvi.model.SCVI(tr, n_latent=n_latent)
    kw = {"accelerator": accelerator, "devices": 1, "enable_progress_bar": False}
    vae.train(max_epochs=20 if quick else 200, **kw)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown", labels_key=LABEL)
    lvae.train(max_epochs=5 if quick else 50, n_samples_per_label=None, **kw)
    te = test.copy()
    te.obs[LABEL] = pd.Categorical(["Unknown"] * te.n_obs)  # no test label reaches the model
    return np.asarray(lvae.predict(te)).astype(str), {
        "scvi_epochs": 20 if quick else 200,
        "scanvi_epochs": 5 if quick else 50,
        "n_latent": n_latent,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--finetune-epochs", type=int, default=None, help="classifier fine-tuning epochs (default 6)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="of the training cells")
    parser.add_argument("--no-scanvi", action="store_true")
    parser.add_argument("--no-figures", action="store_true", help="seed 0: write the tables but not the figure")
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
    # validation cells: a stratified part of the training cells, for choosing every method's settings
    fit_mask, _ = C.split_cells(train.n_obs, args.validation_fraction, args.seed, stratify=train.obs[LABEL].to_numpy())
    fit_idx, val_idx = np.nonzero(fit_mask)[0], np.nonzero(~fit_mask)[0]
    classes = sorted(pb.obs[LABEL].cat.categories)
    y_train = train.obs[LABEL].astype(str).to_numpy()
    y_fit, y_val = y_train[fit_idx], y_train[val_idx]
    y = test.obs[LABEL].astype(str).to_numpy()
    support = pd.Series(y).value_counts().reindex(classes).fillna(0).astype(int)
    major = [c for c in classes if support[c] >= MIN_TEST_CELLS]

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
    configs = {
        name: C.PretrainConfig.from_args(args),
        "GeneMamba 0-layer": C.PretrainConfig.from_args(args, n_layers=0),
        f"{name} random init": C.PretrainConfig.from_args(args, steps=0),
        "GeneMamba 0-layer random init": C.PretrainConfig.from_args(args, n_layers=0, steps=0),
    }
    infos = {k: C.pretrain_genemamba(pre.copy(), cfg, data_name, args)[1] for k, cfg in configs.items()}

    preds, chosen, timings = {}, {}, {}
    GeneMambaModel.setup_anndata(train, layer="counts")
    GeneMambaModel.setup_anndata(test, layer="counts")

    def probe(label: str, z_train: np.ndarray, z_test: np.ndarray) -> None:
        """Logistic regression on frozen features, its C and class weight chosen on the validation cells."""
        best, trials = select(
            LR_GRID,
            lambda s: logistic(z_train[fit_idx], y_fit, z_train[val_idx], args.seed, **s),
            y_val,
        )
        preds[label] = logistic(z_train, y_train, z_test, args.seed, **best)
        chosen[label] = {"chosen": best, "validation": trials}

    for key, info in infos.items():
        m = GeneMambaModel.load(info["saved_to"], adata=train, accelerator=args.accelerator)
        probe(
            f"{key} embedding + LR",
            m.get_latent_representation(train, precision=args.precision),
            m.get_latent_representation(test, precision=args.precision),
        )
    t0 = time.perf_counter()
    probe("PCA (50) + LR", *pca_embed(train, test, args.seed))
    timings["pca_lr_seconds"] = round(time.perf_counter() - t0, 1)

    ft_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if args.quick else 6)

    def finetune(setting: dict, cells: np.ndarray | None):
        import scvi

        a = train if cells is None else train[cells].copy()
        GeneMambaModel.setup_anndata(a, layer="counts")
        m = GeneMambaModel.load(infos[name]["saved_to"], adata=a, accelerator=args.accelerator)
        scvi.settings.seed = args.seed  # same shuffling whether or not the pre-training came from the cache
        m.train_classifier(
            labels_key=LABEL,
            max_epochs=ft_epochs,
            lr=setting["lr"],
            batch_size=args.batch_size,
            class_weight=setting["class_weight"],
            accelerator=args.accelerator,
            devices=1,
            precision=args.precision,
            train_size=1.0,
            plan_kwargs={"eps": args.adam_eps} if args.adam_eps is not None else None,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        return m

    t0 = time.perf_counter()
    val_ad = train[val_idx].copy()
    GeneMambaModel.setup_anndata(val_ad, layer="counts")
    best, trials = select(
        FINETUNE_GRID,
        lambda s: np.asarray(finetune(s, fit_idx).predict(val_ad, precision=args.precision)).astype(str),
        y_val,
    )
    preds[f"{name} fine-tuned"] = np.asarray(finetune(best, None).predict(test, precision=args.precision)).astype(str)
    chosen[f"{name} fine-tuned"] = {"chosen": best, "validation": trials}
    timings["genemamba_finetune_seconds_incl_selection"] = round(time.perf_counter() - t0, 1)

    scanvi_info = None
    if not args.no_scanvi:
        t0 = time.perf_counter()
        fit_ad = train[fit_idx].copy()
        acc = args.accelerator
        best, trials = select(
            SCANVI_GRID, lambda s: scanvi(fit_ad, val_ad, args.seed, args.quick, accelerator=acc, **s)[0], y_val
        )
        preds["scANVI"], scanvi_info = scanvi(train, test, args.seed, args.quick, accelerator=acc, **best)
        chosen["scANVI"] = {"chosen": best, "validation": trials}
        timings["scanvi_seconds_incl_selection"] = round(time.perf_counter() - t0, 1)

    results, per_class = {}, {}
    for k, p in preds.items():
        results[k], per_class[k] = scores(y, p, classes, major)
    summary = pd.DataFrame(results).T
    summary.index.name = "method"
    per_class_df = pd.DataFrame(per_class)
    per_class_df.index.name = "cell type"
    per_class_df.insert(0, "n_test_cells", support.to_numpy())
    print(summary.round(4).to_string())
    print(per_class_df.round(3).to_string())

    suffix = C.run_suffix(args)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.seed == 0:
        summary.to_csv(out_dir / f"annotation{suffix}.csv")
        per_class_df.to_csv(out_dir / f"annotation_per_class{suffix}.csv")
        if not args.no_figures:
            _plot(per_class_df, summary, out_dir / f"annotation{suffix}.png")
    out = {
        "benchmark": "annotation",
        "seed": args.seed,
        "data": {
            "name": "pbmc68k_reduced with recovered integer counts (real, 700 PBMCs, 765 genes, 10 bulk_labels)",
            "n_train_cells": train.n_obs,
            "n_fit_cells": len(fit_idx),
            "n_validation_cells": len(val_idx),
            "n_test_cells": test.n_obs,
            "split": (
                f"test: stratified by {LABEL}, fraction {args.test_fraction}, seed {args.seed}; validation: "
                f"stratified {args.validation_fraction} of the training cells, seed {args.seed}"
            ),
            "test_class_counts": support.to_dict(),
            "macro_f1_classes": major,
            "macro_f1_rule": (
                f"macro_f1 averages the per-class F1 of the classes with >= {MIN_TEST_CELLS} test cells "
                f"({len(major)} of {len(classes)}); macro_f1_all_classes averages all, a class with 1-4 test cells "
                "moving it by up to 1/10 per cell"
            ),
        },
        "model_selection": {
            "rule": (
                "every method: each setting of its grid fitted on the fit cells and scored on the validation cells "
                "(macro-F1 over the classes present there); the best (first on ties) refitted on all training cells "
                "and scored once on the test cells"
            ),
            "grids": {"logistic regression": LR_GRID, "GeneMamba fine-tuning": FINETUNE_GRID, "scANVI": SCANVI_GRID},
            "chosen": chosen,
        },
        "models": infos,
        "finetune": {
            "epochs": ft_epochs,
            "optimizer_steps": int(np.ceil(train.n_obs / args.batch_size)) * ft_epochs,
            "head": "linear",
            "encoder": "fine-tuned (not frozen)",
        },
        "scanvi": scanvi_info,
        "results": summary.reset_index().to_dict(orient="records"),
        "per_class_f1": per_class_df.reset_index().to_dict(orient="records"),
        "predictions": {k: list(map(str, v)) for k, v in preds.items()},
        "y_test": list(map(str, y)),
        "timings": timings,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "args": C.run_args(args),
        "environment": C.environment(),
    }
    C.write_json(out_dir / "seeds" / f"annotation{suffix}_seed{args.seed}.json", out)
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
