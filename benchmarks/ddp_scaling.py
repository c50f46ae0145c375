"""DDP scaling of corpus pre-training: one device vs two (``strategy="ddp"``, bf16-mixed, NCCL).

Builds a small token corpus from the shipped 559-cell sample (real cells, resampled ``--copies`` times into
several input files), then trains the same model with ``pretrain_from_corpus`` on 1 and on 2 devices, each
configuration in its own subprocess (Lightning's DDP launcher re-runs this script once per extra rank). Each
rank records per-step wall time, real tokens and loss, and the cell indices it saw; the parent writes
a JSON with tokens/s (all ranks), scaling efficiency, loss curves, and a check that in the first epoch every
cell was seen exactly once over the ranks.

GPU machine (device tool, kind ``nvidia-h200-x2``; the image lacks scvi-tools, so carry ``.gpu`` as
``shared/gpu/README.md`` explains)::

    mkdir -p /tmp/site && tar xJf .gpu/*.tar.xz -C /tmp/site && \\
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels-cp312/*.whl && \\
    export PYTHONPATH=/tmp/site:$PWD/src:$PYTHONPATH NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 && \\
    python3 benchmarks/ddp_scaling.py --accelerator gpu --out $OUT/ddp_scaling.json

CPU check of the same code path (gloo, two processes)::

    python benchmarks/ddp_scaling.py --accelerator cpu --d-model 32 --n-layers 2 --max-genes 128 \\
        --batch-size 16 --steps 12 --out /tmp/ddp_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# NVLink multicast must stay off on the lent multi-GPU machines (see the device tool's KINDS.md).
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")


def build(workdir: Path, copies: int, max_genes: int) -> Path:
    """Corpus of ``copies`` resampled copies of the 559-cell sample, one input file per copy."""
    import anndata
    import numpy as np
    import scipy.sparse as sp

    from genemamba_scvi.data.corpus import build_corpus
    from genemamba_scvi.datasets import resource_path

    sample = anndata.read_h5ad(resource_path("celltypist_sample_559cells_counts.h5ad"))
    X = sp.csr_matrix(sample.X)
    rng = np.random.default_rng(0)
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        rows = rng.integers(0, X.shape[0], size=X.shape[0])
        chunk = X[rows]
        p = np.repeat(rng.uniform(0.6, 1.0, size=chunk.shape[0]), np.diff(chunk.indptr))
        data = rng.binomial(chunk.data.astype(np.int64), p).astype(np.float32)
        chunk = sp.csr_matrix((data, chunk.indices, chunk.indptr), shape=chunk.shape)
        chunk.eliminate_zeros()
        anndata.AnnData(chunk, var=sample.var[[]].copy()).write_h5ad(inputs / f"copy_{i:02d}.h5ad")
    out = workdir / "corpus"
    build_corpus(inputs, out, max_genes=max_genes, median_method="exact", shard_size=2048)
    return out


def train(args: argparse.Namespace) -> None:
    """One configuration (this process is one rank)."""
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from genemamba_scvi.pretrain import pretrain_from_corpus

    torch.backends.cuda.matmul.allow_tf32 = True

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[dict] = []
            self.cells_epoch0: list[int] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()
            if trainer.current_epoch == 0:
                self.cells_epoch0.extend(batch["ind_x"].cpu().tolist())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.steps.append(
                {
                    "step": int(trainer.global_step),
                    "epoch": int(trainer.current_epoch),
                    "seconds": time.perf_counter() - self._t,
                    "tokens": int(batch["lengths"].sum()),
                    "cells": int(batch["lengths"].numel()),
                    "loss": float(outputs["loss"].detach().float().cpu()),
                }
            )

    rec = Recorder()
    t0 = time.perf_counter()
    res = pretrain_from_corpus(
        args.corpus,
        d_model=args.d_model,
        n_layers=args.n_layers,
        backend=args.backend,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=0,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="bf16-mixed" if args.accelerator == "gpu" else "32-true",
        callbacks=[rec],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    rank = res.trainer.global_rank
    out = {
        "rank": rank,
        "world_size": res.trainer.world_size,
        "wall_seconds": time.perf_counter() - t0,
        "backend": res.module.encoder.resolved_backend(next(res.module.parameters()).device),
        "steps": rec.steps,
        "cells_epoch0": rec.cells_epoch0,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    Path(f"{args.rank_out}.rank{rank}.json").write_text(json.dumps(out))
    del np


def summarise(rank_files: list[Path], warmup: int, n_cells: int, steps_per_epoch: int) -> dict:
    ranks = [json.loads(p.read_text()) for p in sorted(rank_files)]
    n = len(ranks[0]["steps"])
    step_time = [max(r["steps"][i]["seconds"] for r in ranks) for i in range(n)]  # the slowest rank sets the pace
    tokens = [sum(r["steps"][i]["tokens"] for r in ranks) for i in range(n)]
    cells = [sum(r["steps"][i]["cells"] for r in ranks) for i in range(n)]
    timed = slice(warmup, n)
    seconds = sum(step_time[timed])
    seen = [c for r in ranks for c in r["cells_epoch0"]]
    counts: dict[int, int] = {}
    for c in seen:
        counts[c] = counts.get(c, 0) + 1
    return {
        "world_size": ranks[0]["world_size"],
        "backend": ranks[0]["backend"],
        "device": ranks[0]["device"],
        "max_memory_gb_per_rank": [r["max_memory_gb"] for r in ranks],
        "timed_steps": n - warmup,
        "tokens_per_s": sum(tokens[timed]) / seconds,
        "cells_per_s": sum(cells[timed]) / seconds,
        "median_step_seconds": sorted(step_time[timed])[len(step_time[timed]) // 2],
        "loss_rank0": [s["loss"] for s in ranks[0]["steps"]],
        "loss_mean_over_ranks": [sum(r["steps"][i]["loss"] for r in ranks) / len(ranks) for i in range(n)],
        "epoch0": {
            "cells": n_cells,
            "distinct_seen": len(counts),
            "max_times_seen": max(counts.values()),
            "complete_epoch": n >= steps_per_epoch,
            "each_cell_once": len(counts) == n_cells and max(counts.values()) == 1,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    ap.add_argument("--devices-list", default="1,2")
    ap.add_argument("--copies", type=int, default=8, help="resampled copies of the 559-cell sample")
    ap.add_argument("--max-genes", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layers", type=int, default=24)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch-size", type=int, default=16, help="cells per device per step")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--workdir", default="/tmp/genemamba_ddp_scaling")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddp_scaling.json"))
    ap.add_argument("--_train", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._train:
        train(args)
        return

    from genemamba_scvi.data.corpus import TokenCorpus

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = build(workdir, args.copies, args.max_genes)
    n_cells = TokenCorpus(corpus).n_cells
    build_seconds = time.perf_counter() - t0
    results = {}
    for devices in [int(d) for d in args.devices_list.split(",")]:
        stem = workdir / f"run_d{devices}"
        for old in workdir.glob(f"run_d{devices}.rank*.json"):
            old.unlink()
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_train",
            "--corpus",
            str(corpus),
            "--devices",
            str(devices),
            "--rank-out",
            str(stem),
            "--accelerator",
            args.accelerator,
            "--d-model",
            str(args.d_model),
            "--n-layers",
            str(args.n_layers),
            "--backend",
            args.backend,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--lr",
            str(args.lr),
            "--max-genes",
            str(args.max_genes),
        ]
        print("[run]", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        steps_per_epoch = -(-n_cells // (args.batch_size * devices))
        results[str(devices)] = summarise(
            list(workdir.glob(f"run_d{devices}.rank*.json")), args.warmup, n_cells, steps_per_epoch
        )
        print(json.dumps({k: v for k, v in results[str(devices)].items() if not k.startswith("loss")}), flush=True)
    if "1" in results and "2" in results:
        speedup = results["2"]["tokens_per_s"] / results["1"]["tokens_per_s"]
        results["scaling"] = {"speedup_2_over_1": speedup, "efficiency": speedup / 2}
    import torch

    out = {
        "benchmark": "ddp_scaling",
        "settings": {
            k: getattr(args, k)
            for k in (
                "accelerator",
                "copies",
                "max_genes",
                "d_model",
                "n_layers",
                "backend",
                "batch_size",
                "steps",
                "warmup",
                "lr",
            )
        },
        "precision": "bf16-mixed" if args.accelerator == "gpu" else "32-true",
        "strategy": "ddp (NCCL on GPU, gloo on CPU)",
        "corpus_cells": n_cells,
        "corpus_build_seconds": build_seconds,
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_devices": torch.cuda.device_count(),
            "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(results.get("scaling", {})))


if __name__ == "__main__":
    main()
