"""CPU memory and time of embedding many cells (session 21), in one run.

Resident memory growth of ``get_latent_representation`` against the earlier loop that kept one tensor per minibatch
(``list_per_batch``), and CSC counts against CSR, read as now (``csc``: the loader's rows made CSR once) and as
before (``csc_rows_per_batch``: every minibatch's rows taken from the CSC matrix, with the earlier loop).

Data: the shipped 559-cell celltypist sample repeated (``--copies``, cells renamed; a scale test, not biology); a tiny
untrained model (1 layer, d_model 32, ``max_genes`` 256). Each arm runs in its own fresh process (resident memory
is not given back within one), one thread. Writes ``embed_memory_cpu.json``.

Usage::

    python benchmarks/embed_memory.py --copies 20 --cells 5590 22360 --out benchmarks/results
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

_CHILD = r"""
import json, sys, threading, time
import anndata as ad, numpy as np, psutil, scipy.sparse as sp, torch, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.datasets import load_celltypist_sample
arm, copies, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
one = load_celltypist_sample()
big = ad.concat([one] * copies, index_unique="-")
GeneMambaModel.setup_anndata(big, layer="counts")
torch.manual_seed(0)
model = GeneMambaModel(big, n_layers=1, d_model=32, max_genes=256)
query = big
if arm == "csc":
    query = big.copy()
    query.layers["counts"] = sp.csc_matrix(query.layers["counts"])
idx = np.arange(n) % big.n_obs
proc = psutil.Process()
base = peak = proc.memory_info().rss
stop = False
def watch():
    global peak
    while not stop:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.01)
thread = threading.Thread(target=watch)
thread.start()
t0, c0 = time.perf_counter(), time.process_time()
if arm == "csc_rows_per_batch":  # CSC read as before session 21: the rows of every minibatch from the CSC matrix
    query = big.copy()
    query.layers["counts"] = sp.csc_matrix(query.layers["counts"])
if arm in ("list_per_batch", "csc_rows_per_batch"):  # the loop before session 21: a CPU tensor per minibatch, cat
    loader = model._token_loader(query, idx, 8)
    loader._local_rows = None
    out = []
    with torch.inference_mode():
        model.module.eval()
        for tensors in loader:
            out.append(model.module.inference(**model.module._get_inference_input(tensors))["z"].float().cpu())
    z = torch.cat(out).numpy()
else:
    z = model.get_latent_representation(query, indices=idx, batch_size=8, progress_bar=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
stop = True
thread.join()
print(json.dumps({"arm": arm, "cells": n, "rss_growth_mb": (peak - base) / 2**20, "wall_s": wall, "cpu_s": cpu,
                  "result_mb": z.nbytes / 2**20, "z_sum": float(np.float64(z).sum())}))
"""


def _run(arm: str, copies: int, cells: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, arm, str(copies), str(cells)], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise SystemExit(f"arm {arm} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20, help="copies of the 559-cell sample (20: 11,180 cells)")
    parser.add_argument("--cells", type=int, nargs="+", default=[5590, 22360], help="cells embedded per arm")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    t0 = time.time()
    rows = []
    for n in args.cells:
        for arm in ("list_per_batch", "buffer", "csc", "csc_rows_per_batch"):
            rows.append(_run(arm, args.copies, n))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for n in args.cells:
        by = {r["arm"]: r for r in rows if r["cells"] == n}
        summary[str(n)] = {
            "rss_growth_mb_buffer": by["buffer"]["rss_growth_mb"],
            "rss_growth_mb_list_per_batch": by["list_per_batch"]["rss_growth_mb"],
            "rss_growth_ratio_list_over_buffer": by["list_per_batch"]["rss_growth_mb"]
            / max(by["buffer"]["rss_growth_mb"], 1.0),
            "cpu_time_ratio_csc_over_csr": by["csc"]["cpu_s"] / by["buffer"]["cpu_s"],
            "cpu_time_ratio_csc_rows_per_batch_over_csr": by["csc_rows_per_batch"]["cpu_s"]
            / by["list_per_batch"]["cpu_s"],
            "same_embeddings": len({round(by[a]["z_sum"], 3) for a in by}) == 1,
        }
    doc = {
        "benchmark": "embed_memory",
        "machine": f"{platform.node()} ({os.cpu_count()} cores), CPU only, 1 thread per arm",
        "data": f"celltypist sample x {args.copies} ({559 * args.copies} cells), cells taken cyclically",
        "model": "1 layer, d_model 32, max_genes 256, untrained; batch_size 8 (the CPU default)",
        "rows": rows,
        "summary": summary,
        "elapsed_s": time.time() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "embed_memory_cpu.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return path


if __name__ == "__main__":
    main()
