"""CPU inference batch size: cells/s and peak memory of ``get_latent_representation`` by ``batch_size``.

A user probe (session 19) found the CPU default of 64 cells a batch slow and memory-hungry at realistic
``max_genes``: the torch backend's scan materialises per-chunk tensors for the whole packed batch, so large batches
leave the caches and grow the working set with no gain in arithmetic. This script measures, through the public API
on the shipped celltypist cells (real counts), each ``batch_size`` arm in its own process (its peak resident memory
is then its own, ``ru_maxrss``), in rounds that rotate the arms' order, and writes cells/s (median over rounds, and
each arm's per-round ratio to the ``--baseline`` arm of the same round) and peak RSS per arm. The embeddings of every
arm are compared with the baseline's (max abs difference): the batch size must not change the function.

Usage::

    python benchmarks/cpu_batch_size.py                         # -> benchmarks/results/cpu_batch_size.json
    python benchmarks/cpu_batch_size.py --quick --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


_CHILD_ARGS = ("child", "emb_out", "batch_size")


def _one_arm(args: argparse.Namespace) -> dict[str, Any]:
    """In a child process: embed the cells once with ``args.batch_size``; time, peak RSS, embedding file."""
    import torch

    from _common import quiet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.matrix_max[0]:
        import genemamba_scvi.nn.ssd as ssd

        ssd._INTER_CHUNK_MATRIX_MAX = args.matrix_max[0]
    quiet()
    import anndata

    from genemamba_scvi import GeneMambaConfig, GeneMambaModel

    adata = anndata.read_h5ad(ROOT / "src" / "genemamba_scvi" / "_resources" / "celltypist_sample_559cells_counts.h5ad")
    adata = adata[: args.n_cells].copy()
    GeneMambaModel.setup_anndata(adata)
    d_model, max_genes = args.d_model[0], args.max_genes[0]  # one of each in a child
    cfg = GeneMambaConfig(d_model=d_model, n_layers=args.n_layers, headdim=min(64, d_model // 2))
    model = GeneMambaModel(adata, config=cfg, max_genes=max_genes)
    bs = None if args.batch_size == 0 else args.batch_size
    model.get_latent_representation(
        indices=np.arange(min(8, adata.n_obs)), batch_size=bs, progress_bar=False
    )  # warm-up
    t0 = time.perf_counter()
    z = model.get_latent_representation(batch_size=bs, progress_bar=False)
    seconds = time.perf_counter() - t0
    np.save(args.emb_out, z)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "cells_per_s": args.n_cells / seconds, "peak_rss_gib": rss_kib / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_batch_size.json")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64], help="0: the API default")
    p.add_argument("--baseline", type=int, default=64, help="the arm ratios refer to (the pre-session-19 default)")
    p.add_argument("--max-genes", type=int, nargs="+", default=[256, 2048])
    p.add_argument("--d-model", type=int, nargs="+", default=[32, 256])
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--n-cells", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--matrix-max",
        type=int,
        nargs="+",
        default=[0],
        help="nn.ssd._INTER_CHUNK_MATRIX_MAX per arm (0: the library's; a large value: always the matrix form)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, numbers meaningless")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--emb-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_one_arm(args)))
        return
    if args.quick:
        args.batch_sizes, args.baseline, args.max_genes, args.d_model = [4, 16], 16, [64], [32]
        args.n_cells, args.rounds = 16, 1
    if args.baseline not in args.batch_sizes:
        args.batch_sizes = [*args.batch_sizes, args.baseline]
    from _common import environment

    tmp = args.out.parent / f".{args.out.stem}_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    settings = []
    for max_genes in args.max_genes:
        for d_model in args.d_model:
            keys = [(b, m) for m in args.matrix_max for b in args.batch_sizes]  # arms: batch size x scan form
            base_key = (args.baseline, args.matrix_max[0])
            runs: dict[tuple[int, int], list[dict[str, Any]]] = {k: [] for k in keys}
            for r in range(args.rounds):
                for b, m in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    cmd = [sys.executable, __file__, "--child", "--batch-size", str(b), "--max-genes", str(max_genes)]
                    cmd += ["--d-model", str(d_model), "--n-layers", str(args.n_layers), "--n-cells", str(args.n_cells)]
                    cmd += ["--threads", str(args.threads), "--emb-out", str(tmp / f"z_{b}_{m}.npy")]
                    cmd += ["--matrix-max", str(m)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
                    runs[b, m].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(
                        f"max_genes {max_genes} d_model {d_model} round {r} batch {b} matrix_max {m}: {runs[b, m][-1]}"
                    )
            base = np.load(tmp / f"z_{base_key[0]}_{base_key[1]}.npy")
            arms = []
            for b, m in keys:
                pairs = zip(runs[b, m], runs[base_key], strict=True)
                ratios = [x["cells_per_s"] / y["cells_per_s"] for x, y in pairs]
                arms.append(
                    {
                        "batch_size": b,
                        "inter_chunk_matrix_max": m,
                        "cells_per_s_median": float(np.median([x["cells_per_s"] for x in runs[b, m]])),
                        "speed_ratio_to_baseline_median": float(np.median(ratios)),
                        "speed_ratio_to_baseline_per_round": ratios,
                        "peak_rss_gib_max": float(max(x["peak_rss_gib"] for x in runs[b, m])),
                        "max_abs_diff_to_baseline": float(np.abs(np.load(tmp / f"z_{b}_{m}.npy") - base).max()),
                        "runs": runs[b, m],
                    }
                )
            settings.append({"max_genes": max_genes, "d_model": d_model, "arms": arms})
    result = {
        "what": "get_latent_representation cells/s and peak RSS by CPU batch_size (each arm its own process)",
        "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("child", "emb_out")
        },
        "environment": environment(),
        "settings": settings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for f in tmp.glob("z_*.npy"):
        f.unlink()
    tmp.rmdir()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
