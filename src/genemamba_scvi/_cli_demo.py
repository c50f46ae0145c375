"""``genemamba demo``: the README's main job (a tiny GeneMamba on the shipped 559-cell sample, on the CPU)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ._constants import LATENT_KEY

_DEMO_OUTPUTS = ("demo_adata.h5ad", "umap_genemamba.png", "model", "summary.json")


def run_demo(args: argparse.Namespace) -> int:
    """``genemamba demo``: train a tiny model on the shipped sample, embed, plot, score; write ``args.out``."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; the demo writes a folder of outputs: choose a folder's name")
    earlier = [name for name in _DEMO_OUTPUTS if (out / name).exists()]
    if earlier and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds {earlier} (an earlier demo's, or files of yours of those names); pass --overwrite "
            "to replace them, or choose another --out"
        )
    _check_demo_width(args.d_model)  # before anything is made (an empty --out was left behind)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".demo_partial"  # outputs land here and move into out/ together at the end, so a run stopped
    shutil.rmtree(stage, ignore_errors=True)  # half-way never mixes its files with an earlier demo's
    stage.mkdir()
    try:
        _demo_run(args, stage)
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"[done] wrote {out}/demo_adata.h5ad (obsm['X_genemamba']), umap_genemamba.png, model/, summary.json")
    return 0


def _check_demo_width(d_model: int) -> None:
    """The demo's model takes the default ``headdim`` and ``expand``: name the ``--d-model`` values that fit them.

    The model's own error advised ``headdim=``, which the demo has no option for (repro probe).
    """
    from genemamba_scvi.nn.config import GeneMambaConfig, d_model_step

    cfg = GeneMambaConfig()
    step = d_model_step(cfg.headdim, cfg.expand)
    if d_model % step:
        raise ValueError(f"--d-model {d_model}: the demo's model needs a multiple of {step} (e.g. --d-model {step})")


def _numba_cache_if_home_is_read_only() -> None:
    """Point numba's cache (scanpy's compiled functions) at a temporary folder when HOME cannot take it.

    With a read-only install and an unwritable HOME (a shared cluster), ``import scanpy`` failed in numba's cache
    ("no locator available"; HPC probe). A ``NUMBA_CACHE_DIR`` the user set is kept.
    """
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry
        home = Path("/nonexistent")
    if "NUMBA_CACHE_DIR" not in os.environ and not os.access(home if home.is_dir() else home.parent, os.W_OK):
        user = getattr(os, "getuid", lambda: "user")()
        os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"genemamba-numba-cache-{user}")


def _demo_run(args: argparse.Namespace, out: Path) -> None:
    """The demo's work: every output written into ``out``."""
    import numpy as np

    _numba_cache_if_home_is_read_only()
    import scanpy as sc
    import scvi
    import torch

    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.metrics import benchmark_integration

    scvi.settings.seed = args.seed
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()

    adata = load_celltypist_sample()
    n_genes = adata.n_vars
    # genes seen in fewer than 3 cells cannot be learned from 559 cells; dropping them shrinks the vocabulary
    # (and the LM softmax) from 32,786 to 9,810 genes
    sc.pp.filter_genes(adata, min_cells=3)
    print(
        f"[data] celltypist sample: {adata.n_obs} cells x {adata.n_vars} genes detected in >= 3 cells "
        f"(of {n_genes}; raw UMI counts)"
    )
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(
        adata, d_model=args.d_model, n_layers=args.n_layers, max_genes=args.max_genes, backend="torch"
    )
    print(f"[model] {model._model_summary_string}")
    model.train(
        max_epochs=args.epochs,
        lr=args.lr,
        gene_sets="kegg",
        gamma=0.1,
        batch_size=args.batch_size,
        accelerator="cpu",
        enable_progress_bar=not args.quiet,
    )
    history = model.history
    train_loss = history["train_loss"]["train_loss"].to_numpy() if history else np.array([])
    adata.obsm[LATENT_KEY] = model.get_latent_representation()
    print(f"[train] {args.epochs} epochs; train loss {train_loss[0]:.3f} -> {train_loss[-1]:.3f}")

    # Reference structure: no cell-type labels ship with this sample, so Leiden clusters of a standard
    # log-normalised PCA serve as reference labels. The scores measure agreement with that structure.
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=2000)
    sc.pp.pca(ref, n_comps=30, mask_var="highly_variable")
    sc.pp.neighbors(ref, use_rep="X_pca")
    # scanpy's igraph flavour: needs python-igraph only (plain sc.tl.leiden needs leidenalg)
    sc.tl.leiden(ref, resolution=0.5, key_added="leiden_pca", flavor="igraph", n_iterations=2, directed=False)
    adata.obsm["X_pca"] = ref.obsm["X_pca"]
    adata.obs["leiden_pca"] = ref.obs["leiden_pca"].values
    adata.obs["batch"] = "sample"

    sc.pp.neighbors(adata, use_rep=LATENT_KEY)
    sc.tl.umap(adata)
    import matplotlib

    matplotlib.use("Agg")
    fig = sc.pl.umap(
        adata,
        color="leiden_pca",
        return_fig=True,
        show=False,
        title="UMAP of the GeneMamba embedding, coloured by Leiden clusters of a PCA",
    )
    fig.axes[0].get_legend().set_title("Leiden cluster\n(log-normalised PCA)")
    fig.savefig(out / "umap_genemamba.png", dpi=100, bbox_inches="tight")

    from scib_metrics.benchmark import BioConservation

    results = benchmark_integration(
        adata,
        [LATENT_KEY, "X_pca"],
        batch_key="batch",
        label_key="leiden_pca",
        pre_integrated_key="X_pca",  # the PCA above (scib-metrics would otherwise run its own, deprecated call)
        bio_conservation_metrics=BioConservation(isolated_labels=False),
        batch_correction_metrics=False,
        progress_bar=not args.quiet,
    )
    cols = [c for c in ["Leiden NMI", "Leiden ARI", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]]
    cols = [c for c in cols if c in results.columns]
    table = results.loc[[LATENT_KEY, "X_pca"], cols].astype(float)
    print("[scib] reference labels = Leiden clusters of log-normalised PCA (no ground-truth labels shipped)")
    print(table.round(3).to_string())
    from genemamba_scvi import __version__

    # what made these numbers (repro probe: the summary held scores without the settings behind them)
    settings = {k: getattr(args, k) for k in ("seed", "epochs", "lr", "d_model", "n_layers", "max_genes", "batch_size")}
    settings.update(gene_sets="kegg", gamma=0.1, accelerator="cpu", torch_threads=torch.get_num_threads())
    adata.uns["genemamba"] = {LATENT_KEY: {"model": "model/", **settings, "genemamba_scvi_version": __version__}}
    adata.write_h5ad(out / "demo_adata.h5ad")
    model.save(out / "model", overwrite=True)
    summary = {
        "settings": settings,
        "genemamba_scvi_version": __version__,
        "scored": "on the training cells, against Leiden clusters (resolution 0.5) of a log-normalised PCA of 2,000 "
        "highly variable genes (no ground-truth labels ship with the sample); one seed and one k-means draw "
        "(metrics.kmeans_nmi_ari gives the spread over k-means initialisations)",
        "n_cells": int(adata.n_obs),
        "embedding_shape": list(adata.obsm[LATENT_KEY].shape),
        "train_loss_first_epoch": float(train_loss[0]),
        "train_loss_last_epoch": float(train_loss[-1]),
        "scib": {k: {c: float(v) for c, v in row.items()} for k, row in table.iterrows()},
        "seconds": time.perf_counter() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[time] {summary['seconds']:.0f} s")


def _swap_in(stage: Path, out: Path) -> None:
    """Move the new outputs from ``stage`` into ``out``; the earlier ones (--overwrite) go back if that is stopped."""
    earlier = stage / ".earlier"
    earlier.mkdir()
    try:
        for name in _DEMO_OUTPUTS:  # the earlier outputs (or files of the user's of those names) aside first
            if os.path.lexists(out / name):
                os.replace(out / name, earlier / name)
        for name in _DEMO_OUTPUTS:
            os.replace(stage / name, out / name)
    except BaseException:
        for name in (n for n in _DEMO_OUTPUTS if os.path.lexists(earlier / n)):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
            os.replace(earlier / name, target)
        raise
