"""Shared pieces of the biology benchmarks: real data, GeneMamba pre-training (cached), result files.

Every benchmark script imports this module (``benchmarks/`` is put on ``sys.path`` by the scripts) and
writes its numbers to ``benchmarks/results/`` together with the model size, the optimiser steps and the
data they came from. Nothing here downloads anything: the data are the real sets shipped with the
package (see ``docs/biology.md`` for what they are and what they are not).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genemamba-scvi-benchmarks"

# pbmc68k_reduced bulk labels -> coarse lineage shared with the celltypist sample annotation
PBMC_LINEAGE = {
    "CD4+/CD25 T Reg": "T",
    "CD4+/CD45RA+/CD25- Naive T": "T",
    "CD4+/CD45RO+ Memory": "T",
    "CD8+ Cytotoxic T": "T",
    "CD8+/CD45RA+ Naive Cytotoxic": "T",
    "CD56+ NK": "NK",
    "CD19+ B": "B",
    "CD14+ Monocyte": "Monocyte",
    "Dendritic": "DC",
    "CD34+": "Progenitor",
}

UNRESOLVED = "unresolved"

# marker panel used to name the clusters of the (unlabelled) celltypist sample, on its full transcriptome
LINEAGE_MARKERS = {
    "T": ["CD3D", "CD3E", "CD2", "TRAC"],
    "NK": ["NKG7", "GNLY", "KLRD1", "KLRF1"],
    "B": ["MS4A1", "CD79A", "CD79B", "BANK1"],
    "Monocyte": ["CD14", "FCN1", "S100A8", "S100A9", "VCAN"],
    "DC": ["FCER1A", "CD1C", "CLEC10A", "CLEC9A"],
    "Macrophage": ["APOE", "APOC1", "C1QA", "C1QB"],
    "Progenitor": ["CD34"],
}


# ----------------------------------------------------------------------------- run set-up
def quiet() -> None:
    """Silence the chatty libraries (Lightning, scvi-tools, anndata, jax) so the scripts print results."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi", "jax", "absl", "genemamba_scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def set_threads(n: int) -> None:
    """Torch's CPU threads, and numba's: scanpy's first numba call (``normalize_total``, ``log1p``) otherwise sets
    torch's thread count back to all cores."""
    n = max(1, n)
    if "numba" not in sys.modules:  # read when numba loads; once its threads run, numba refuses another value at
        os.environ["NUMBA_NUM_THREADS"] = str(n)  # the next compile (a crash with --threads 1 on 2 cores)
    import numba
    import torch

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


DEFAULT_STEPS = 600
QUICK_STEPS = 8


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every biology benchmark (model size, ablations, speed)."""
    g = parser.add_argument_group("GeneMamba model and pre-training")
    g.add_argument("--quick", action="store_true", help="tiny CI-speed configuration (numbers meaningless)")
    g.add_argument("--unidirectional", action="store_true", help="ablation: causal (GeneMamba_U) instead of Bi-Mamba")
    g.add_argument("--gamma", type=float, default=0.1, help="weight of the pathway InfoNCE (ablation: 0)")
    g.add_argument("--gene-sets", default="kegg", choices=["kegg", "go_bp"], help="gene sets of the pathway loss")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--n-layers", type=int, default=2)
    g.add_argument("--max-genes", type=int, default=256)
    g.add_argument(
        "--steps", type=int, default=None, help=f"pre-training steps (default {DEFAULT_STEPS}, quick {QUICK_STEPS})"
    )
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate (5%% warm-up, cosine decay)")
    g.add_argument(
        "--adam-eps",
        type=float,
        default=None,
        help="AdamW epsilon of GeneMamba pre-training and fine-tuning (default: the package's, 1e-8 since "
        "session 16; the runs before it trained with scvi-tools' 0.01)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--tie-break",
        default="median",
        choices=["median", "random"],
        help="order of genes of equal count within a cell (GeneMambaModel(tie_break=...))",
    )
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    g.add_argument(
        "--accelerator",
        default="cpu",
        help="Lightning accelerator of every trained model (GeneMamba, scVI, scANVI) and of GeneMamba inference: "
        "cpu or gpu",
    )
    g.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "auto", "mamba_ssm"],
        help="Mamba-2 backend of the GeneMamba models. torch (default) runs the same code on CPU and GPU and needs "
        "no Triton autotuning (mamba-ssm ships no tuned kernels for these small sizes); auto = mamba_ssm on CUDA",
    )
    g.add_argument(
        "--precision",
        default="auto",
        help="GeneMamba training / inference precision: auto (bf16-mixed on a GPU, float32 on CPU), 32, bf16",
    )
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="pre-trained models are reused from here")
    g.add_argument("--no-cache", action="store_true", help="always pre-train afresh")
    g.add_argument("--out-dir", type=Path, default=RESULTS)


def resolve_steps(args: argparse.Namespace) -> int:
    if args.steps is not None:
        return args.steps
    return QUICK_STEPS if args.quick else DEFAULT_STEPS


#: ``(file-name tag, argument, default)`` of the settings of model size and pre-training in ``run_suffix``.
_SIZE_FLAGS = (
    ("d", "d_model", 64),
    ("L", "n_layers", 2),
    ("k", "max_genes", 256),
    ("steps", "steps", DEFAULT_STEPS),
    ("bs", "batch_size", 16),
    ("lr", "lr", 1e-2),
)

#: The arguments that define a run's configuration (what seeds pooled by ``aggregate.py`` must share).
CONFIG_ARGS = (
    "unidirectional",
    "gamma",
    "gene_sets",
    "tie_break",
    "adam_eps",
    "quick",
    *(name for _, name, _ in _SIZE_FLAGS),
)


def run_args(args: argparse.Namespace) -> dict:
    """A result's ``args``: the script's arguments, and the AdamW ``eps`` the runs trained with (``adam_eps_used``).

    ``adam_eps`` is None for the training plan's default, which changed (0.01 until session 16, then 1e-8), so the
    value itself is recorded too: the H200 and H100 seed runs could be told apart only by their code version
    (reviewer probe, session 35).
    """
    import inspect

    from genemamba_scvi.train import GeneMambaTrainingPlan

    out = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    default = inspect.signature(GeneMambaTrainingPlan).parameters["eps"].default
    out["adam_eps_used"] = float(out["adam_eps"]) if out.get("adam_eps") is not None else default
    return out


def run_suffix(args: argparse.Namespace) -> str:
    """File-name suffix of a run: ``""`` for the default configuration, else the ablations / quick flag."""
    parts = []
    if args.unidirectional:
        parts.append("unidirectional")
    if args.gamma != 0.1:
        parts.append(f"gamma{args.gamma:g}")
    if args.gene_sets != "kegg":
        parts.append(args.gene_sets)
    if getattr(args, "tie_break", "median") != "median":
        parts.append(f"tie{args.tie_break}")
    if getattr(args, "adam_eps", None) is not None:
        parts.append(f"eps{args.adam_eps:g}")
    # a model or schedule other than the default's gets its own files, so that aggregate.py never pools them
    for flag, name, default in _SIZE_FLAGS:
        value = getattr(args, name, default)
        if value is not None and value != default and not (name == "steps" and args.quick):
            parts.append(f"{flag}{value:g}")
    if args.quick:
        parts.append("quick")
    return "".join("_" + p for p in parts)


def environment() -> dict[str, Any]:
    import torch

    import genemamba_scvi

    return {
        "genemamba_scvi": genemamba_scvi.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    print(f"wrote {path}")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- data
def log_normalize(adata, target_sum: float = 1e4):
    """A copy with ``X = log1p(counts / total * target_sum)`` (counts from ``layers["counts"]``)."""
    import scanpy as sc

    out = adata.copy()
    out.X = out.layers["counts"].copy()
    sc.pp.normalize_total(out, target_sum=target_sum)
    sc.pp.log1p(out)
    return out


def filter_genes(adata, cells: np.ndarray | None = None, min_cells: int = 5):
    """Keep genes detected in at least ``min_cells`` of ``cells`` (default all cells)."""
    X = adata.layers["counts"] if cells is None else adata.layers["counts"][cells]
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    return adata[:, detected >= min_cells].copy()


def annotate_celltypist_sample(
    adata, resolution: float = 1.2, seed: int = 0, min_margin: float = 1.25
) -> tuple[pd.Series, pd.DataFrame]:
    """Coarse lineage of each cell of the (unlabelled) celltypist sample, from marker genes per cluster.

    Leiden clusters (resolution ``resolution``) of the log-normalised full transcriptome (2,000 highly
    variable genes, 30 PCs, 15 neighbours) are named by the lineage of :data:`LINEAGE_MARKERS` with the highest
    mean marker expression, if it beats the second best by a factor ``min_margin``; otherwise the cluster is
    ``"unresolved"`` (such cells are left out of the integration benchmark). No embedding that is benchmarked
    takes part in it.

    Returns
    -------
    ``(lineage per cell, cluster x lineage marker-score table with the chosen name and size)``.
    """
    import scanpy as sc

    ln = log_normalize(adata)
    sc.pp.highly_variable_genes(ln, n_top_genes=2000)
    sc.pp.pca(ln, n_comps=30, mask_var="highly_variable", random_state=seed)
    sc.pp.neighbors(ln, n_neighbors=15, random_state=seed)
    sc.tl.leiden(ln, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
    rows = {}
    for cl in sorted(ln.obs["leiden"].cat.categories, key=int):
        sub = ln[ln.obs["leiden"] == cl]
        rows[cl] = {
            lin: float(np.asarray(sub[:, [g for g in genes if g in ln.var_names]].X.mean(axis=0)).mean())
            for lin, genes in LINEAGE_MARKERS.items()
        }
    table = pd.DataFrame(rows).T
    scores = table[list(LINEAGE_MARKERS)]
    top2 = np.sort(scores.to_numpy(), axis=1)[:, -2:]
    table["lineage"] = scores.idxmax(axis=1)
    table["margin"] = top2[:, 1] / np.maximum(top2[:, 0], 1e-9)
    table.loc[table["margin"] < min_margin, "lineage"] = UNRESOLVED
    table["n_cells"] = ln.obs["leiden"].value_counts().reindex(table.index).to_numpy()
    lineage = ln.obs["leiden"].map(table["lineage"]).astype(str)
    lineage.name = "lineage"
    return lineage, table


def load_combined(seed: int = 0):
    """The two real count data sets we ship, on their shared genes, as two technical batches.

    - ``celltypist_sample``: 559 cells (celltypist 1.7.1 sample), labelled here by marker genes per cluster
      (:func:`annotate_celltypist_sample`, full transcriptome); cells of unresolved clusters are dropped;
    - ``pbmc68k``: 700 PBMCs (scanpy's pbmc68k_reduced, integer counts recovered), labelled by its
      ``bulk_labels``.

    Returns
    -------
    ``(adata, info)``: counts in ``X`` / ``layers["counts"]`` on the 764 shared genes; ``obs["batch"]``,
    ``obs["lineage"]`` (coarse, both batches), ``obs["cell_type"]`` (pbmc68k bulk labels; ``celltypist:<lineage>``
    for the other batch); ``info`` describes the construction.
    """
    import anndata as ad

    from genemamba_scvi.datasets import load_celltypist_sample, load_pbmc68k_counts

    ct = load_celltypist_sample()
    lineage, table = annotate_celltypist_sample(ct, seed=seed)
    pb = load_pbmc68k_counts()
    shared = [g for g in pb.var_names if g in set(ct.var_names)]
    ct = ct[:, shared].copy()
    pb = pb[:, shared].copy()
    ct.obs = pd.DataFrame(
        {"batch": "celltypist_sample", "lineage": lineage.to_numpy(), "cell_type": "celltypist:" + lineage.to_numpy()},
        index="ct_" + ct.obs_names.astype(str),
    )
    pb.obs = pd.DataFrame(
        {
            "batch": "pbmc68k",
            "lineage": pb.obs["bulk_labels"].astype(str).map(PBMC_LINEAGE).to_numpy(),
            "cell_type": pb.obs["bulk_labels"].astype(str).to_numpy(),
        },
        index="pbmc_" + pb.obs_names.astype(str),
    )
    n_unresolved = int((ct.obs["lineage"] == UNRESOLVED).sum())
    ct = ct[ct.obs["lineage"] != UNRESOLVED].copy()
    adata = ad.concat([ct, pb], join="inner", merge="same")
    adata.X = adata.layers["counts"].copy()
    keep = np.asarray(adata.layers["counts"].sum(axis=1)).ravel() > 0
    n_empty = int((~keep).sum())
    adata = adata[keep].copy()
    for col in ("batch", "lineage", "cell_type"):
        adata.obs[col] = adata.obs[col].astype("category")
    info = {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "cells_dropped_zero_counts_on_shared_genes": n_empty,
        "celltypist_cells_dropped_unresolved_lineage": n_unresolved,
        "batches": adata.obs["batch"].value_counts().to_dict(),
        "lineage_by_batch": pd.crosstab(adata.obs["lineage"], adata.obs["batch"]).to_dict(),
        "celltypist_cluster_annotation": table.round(3).reset_index(names="cluster").to_dict(orient="records"),
        "genes_per_cell_median_by_batch": {
            b: float(np.median(np.asarray((adata[adata.obs["batch"] == b].layers["counts"] > 0).sum(axis=1))))
            for b in adata.obs["batch"].cat.categories
        },
    }
    return adata, info


def combined_data_name(adata) -> str:
    """Name of the pre-training data of :func:`load_combined` (part of the pre-training cache key)."""
    return f"celltypist_sample + pbmc68k, all {adata.n_obs} cells, {adata.n_vars} shared genes (no labels used)"


def split_cells(n: int, test_fraction: float, seed: int, stratify: np.ndarray | None = None):
    """Boolean train mask and test mask (stratified when ``stratify`` is given)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    train, _ = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    train_mask = np.zeros(n, bool)
    train_mask[train] = True
    return train_mask, ~train_mask


def celltypist_split(test_fraction: float = 0.2, seed: int = 0, min_cells: int = 5):
    """The celltypist sample split into pre-training cells and held-out cells.

    Genes are those detected in at least ``min_cells`` training cells (chosen on the training cells only).

    Returns
    -------
    ``(adata, train_mask, test_mask, data_name)`` with counts in ``layers["counts"]``.
    """
    from genemamba_scvi.datasets import load_celltypist_sample

    full = load_celltypist_sample()
    train_mask, test_mask = split_cells(full.n_obs, test_fraction, seed)
    adata = filter_genes(full, cells=train_mask, min_cells=min_cells)
    name = (
        f"celltypist_sample train split ({int(train_mask.sum())} of {full.n_obs} cells, seed {seed}; "
        f"{adata.n_vars} genes detected in >= {min_cells} train cells)"
    )
    return adata, train_mask, test_mask, name


def pathway_split(name: str, held_out_fraction: float = 0.2, seed: int = 0):
    """``(train_sets, held_out_sets)`` of a shipped collection; only ``train_sets`` enter the pathway loss."""
    from genemamba_scvi.data.gene_sets import split_gene_sets
    from genemamba_scvi.datasets import load_gene_sets

    return split_gene_sets(load_gene_sets(name), held_out_fraction=held_out_fraction, seed=seed)


# ----------------------------------------------------------------------------- GeneMamba pre-training
@dataclass
class PretrainConfig:
    """Everything that defines one pre-trained GeneMamba of these benchmarks (and its cache key)."""

    d_model: int = 64
    n_layers: int = 2
    max_genes: int = 256
    d_state: int = 16
    headdim: int = 32
    chunk_size: int = 64
    bidirectional: bool = True
    objective: str = "mlm"
    gamma: float = 0.1
    gene_sets: str = "kegg"
    held_out_fraction: float = 0.2
    steps: int = DEFAULT_STEPS
    batch_size: int = 16
    lr: float = 1e-2
    seed: int = 0
    tie_break: str = "median"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> PretrainConfig:
        kw = {
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "max_genes": args.max_genes,
            "bidirectional": not args.unidirectional,
            "gamma": args.gamma,
            "gene_sets": args.gene_sets,
            "steps": resolve_steps(args),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "tie_break": getattr(args, "tie_break", "median"),
        }
        # where and how it is trained is part of the cache key, but only when not the CPU default (keys of
        # CPU runs stay as they were)
        extra = {}
        if getattr(args, "backend", "torch") != "torch":
            extra["backend"] = args.backend
        if getattr(args, "accelerator", "cpu") != "cpu":
            extra["accelerator"] = args.accelerator
            extra["precision"] = str(getattr(args, "precision", "auto"))
        # init experiment of diagnosis.py (issue 18); absent from the key when not set
        scale = getattr(args, "out_proj_init_scale", None)
        if scale is not None:
            extra["out_proj_init_scale"] = float(scale)
        if getattr(args, "adam_eps", None) is not None:
            extra["adam_eps"] = float(args.adam_eps)
        if extra:
            kw["extra"] = extra
        if args.quick:
            kw["max_genes"] = min(kw["max_genes"], 128)
        kw.update(overrides)
        return cls(**kw)


def code_version() -> str:
    """Package version plus a hash of the ``genemamba_scvi`` source files that can change a trained model.

    Part of the pre-training cache key: a change in the model, tokenizer, data loading or training code
    gives a new key, so a cached model never comes from older code. Only the evaluation helpers
    (``metrics.py``) and the command line (``cli.py``) are left out.
    """
    import genemamba_scvi

    root = Path(genemamba_scvi.__file__).resolve().parent
    h = hashlib.sha256(genemamba_scvi.__version__.encode())
    for f in sorted(root.rglob("*.py")):
        if f.name in ("metrics.py", "cli.py") and f.parent == root:
            continue
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return f"{genemamba_scvi.__version__}+{h.hexdigest()[:12]}"


def _fingerprint(adata, cfg: PretrainConfig, data_name: str) -> str:
    h = hashlib.sha256()
    h.update(code_version().encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(data_name.encode())
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update("\n".join(map(str, adata.var_names)).encode())
    X = adata.layers["counts"]
    h.update(np.asarray(X.data if hasattr(X, "data") else X).tobytes()[: 1 << 20])
    return h.hexdigest()[:16]


def pretrain_genemamba(
    adata,
    cfg: PretrainConfig,
    data_name: str,
    args: argparse.Namespace | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Pre-train (or load from the cache) a GeneMamba on the raw counts of ``adata`` (``layers["counts"]``).

    The pathway InfoNCE uses only the *training* part of ``split_gene_sets(cfg.gene_sets, held_out_fraction,
    seed=0)``, so the held-out pathways stay unseen by every model of these benchmarks. All cells of ``adata``
    are trained on (``train_size=1``); pass only the cells a benchmark may see.

    Returns
    -------
    ``(model, info)`` with the model size, optimiser steps, wall time, final losses and the data name.
    """
    import scvi

    from genemamba_scvi import GeneMambaModel

    cache_dir = Path(args.cache_dir) if args is not None else DEFAULT_CACHE
    use_cache = args is None or not args.no_cache
    accelerator = args.accelerator if args is not None else "cpu"
    backend = getattr(args, "backend", "torch") if args is not None else "torch"
    precision = getattr(args, "precision", "auto") if args is not None else "auto"
    key = _fingerprint(adata, cfg, data_name)
    path = cache_dir / f"genemamba_{key}"
    GeneMambaModel.setup_anndata(adata, layer="counts")
    if use_cache and (path / "info.json").is_file():
        model = GeneMambaModel.load(path / "model", adata=adata, accelerator=accelerator)
        with open(path / "info.json") as f:
            info = json.load(f)
        info["loaded_from_cache"] = str(path)
        info["saved_to"] = str(path / "model")
        print(f"loaded pre-trained GeneMamba from cache {path}")
        return model, info

    scvi.settings.seed = cfg.seed
    model = GeneMambaModel(
        adata,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        max_genes=cfg.max_genes,
        d_state=cfg.d_state,
        headdim=cfg.headdim,
        chunk_size=cfg.chunk_size,
        bidirectional=cfg.bidirectional,
        backend=backend,
        **({"tie_break": cfg.tie_break} if cfg.tie_break != "median" else {}),
    )
    scale = cfg.extra.get("out_proj_init_scale")
    if scale is not None:  # multiply each Bi-Mamba layer's mixer output projection (its residual update) at init
        import torch

        with torch.no_grad():
            for layer in model.module.encoder.layers:
                layer.mixer.out_proj.weight.mul_(scale)
    train_sets, held_out = pathway_split(cfg.gene_sets, cfg.held_out_fraction)
    t0 = time.perf_counter()
    steps_per_epoch = int(np.ceil(adata.n_obs / cfg.batch_size))
    epochs = int(np.ceil(cfg.steps / steps_per_epoch))
    if cfg.steps > 0:
        model.train(
            max_epochs=epochs,
            max_steps=cfg.steps,
            objective=cfg.objective,
            gene_sets=train_sets if cfg.gamma > 0 else None,
            gamma=cfg.gamma,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            accelerator=accelerator,
            devices=1,
            precision=precision,
            train_size=1.0,
            plan_kwargs={"eps": cfg.extra["adam_eps"]} if "adam_eps" in cfg.extra else None,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
    wall = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.module.parameters())
    n_encoder = sum(p.numel() for p in model.module.encoder.parameters())
    n_embedding = model.module.encoder.embedding.weight.numel()
    history = getattr(model, "history", None) or {}
    curves = {
        k: np.asarray(v, dtype=np.float64).ravel()
        for k, v in history.items()
        if k.endswith("_train") and not k.startswith(("elbo", "reconstruction_loss", "kl_"))
    }
    final = {k: float(v[-1]) for k, v in curves.items() if v.size}
    info = {
        "data": data_name,
        "n_cells": adata.n_obs,
        "n_genes_vocab": len(model.vocab_),
        "config": asdict(cfg),
        "n_parameters": n_params,
        "n_parameters_encoder": n_encoder,
        "n_parameters_embedding": n_embedding,
        "n_parameters_non_embedding": n_params - n_embedding,
        "optimizer_steps": cfg.steps,
        "cells_per_step": cfg.batch_size,
        "epochs": round(cfg.steps / steps_per_epoch, 2),
        "wall_seconds": round(wall, 1),
        "n_pathway_train_sets": len(train_sets),
        "n_pathway_held_out_sets": len(held_out),
        "final_train_metrics": final,
        "history_per_epoch": {k: v.round(4).tolist() for k, v in curves.items()},
        "backend": backend,
        "accelerator": accelerator,
        "precision": precision,
        "code_version": code_version(),
    }
    if not use_cache:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="genemamba_bench_"))
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model", overwrite=True)
    info["saved_to"] = str(path / "model")
    if use_cache:
        write_json(path / "info.json", info)
    model.to_device(torch_device(accelerator))  # an untrained (random init) model is embedded there too
    return model, info


def torch_device(accelerator: str) -> str:
    """The torch device a Lightning ``accelerator`` name trains on (one device): ``"cpu"`` or ``"cuda:0"``."""
    import torch

    acc = accelerator.lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda:0"
    return "cpu"


# ----------------------------------------------------------------------------- GeneMamba inference helpers
def iter_tokens(model, adata, indices=None, batch_size: int = 64):
    """Yield ``(tokens [B, L] long, lengths [B] long)`` of cells as the model tokenises them."""
    from genemamba_scvi.dataloader import LENGTHS_KEY, TOKENS_KEY

    loader = model._token_loader(adata, indices, batch_size)
    for tensors in loader:
        yield tensors[TOKENS_KEY], tensors[LENGTHS_KEY]


def gene_symbols(model) -> np.ndarray:
    """Gene symbol of every token id (special tokens get their token string)."""
    vocab = model.vocab_
    names = list(getattr(vocab, "special_tokens", [])) or [f"<special{i}>" for i in range(vocab.n_special)]
    return np.asarray(names[: vocab.n_special] + list(vocab.genes), dtype=object)
