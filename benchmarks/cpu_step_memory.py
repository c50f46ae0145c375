"""CPU training step: one step's peak resident growth against the memory warning's estimate (session 26).

Each size runs in its own process (``ru_maxrss`` is a high-water mark): the shipped sample's cells of >= 2,048
genes (``sc.pp.filter_genes(min_cells=3)``), ``GeneMambaModel(n_layers=L, d_model=d)`` at the default
``max_genes=2048``, ``train(max_steps=1, batch_size=B)`` on the CPU; the growth of the peak over the one before
``train`` is the step's (with the trainer's and optimizer's first allocations). The estimate is
``model._run_checks``' (``_CPU_STEP_BYTES``, ``_CPU_TOKEN_BYTES``, ``_CPU_STEP_FIXED_BYTES``).

Usage::

    python benchmarks/cpu_step_memory.py                # -> benchmarks/results/cpu_step_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

_CHILD = """
import json, resource, sys, warnings
import numpy as np, anndata as ad, scanpy as sc
warnings.simplefilter("ignore")
from genemamba_scvi import GeneMambaModel
L, d, bs = map(int, sys.argv[1:4])
adata = ad.read_h5ad(sys.argv[4])
adata = adata[np.asarray((adata.X > 0).sum(1)).ravel() >= 2048].copy()
sc.pp.filter_genes(adata, min_cells=3)
adata.layers["counts"] = adata.X.copy()
GeneMambaModel.setup_anndata(adata, layer="counts")
model = GeneMambaModel(adata, n_layers=L, d_model=d)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.train(max_steps=1, batch_size=bs, enable_progress_bar=False, accelerator="cpu")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n_layers": L, "d_model": d, "batch_size": bs, "vocab_genes": adata.n_vars,
                  "growth_gib": (after - before) / 2**20}))
"""


def main(argv: list[str] | None = None) -> dict:
    from _common import write_json
    from genemamba_scvi.model import _run_checks as r

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2,32,8", "2,128,8", "4,256,2", "2,512,2"], help="L,d,batch")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "celltypist_sample_559cells_counts.h5ad"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_step_memory.json")
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:
        L, d, bs = (int(v) for v in size.split(","))
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(L), str(d), str(bs), args.data], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        per_cell = 2048 * d * (L * r._CPU_STEP_BYTES + r._CPU_TOKEN_BYTES)
        row["estimate_gib"] = (bs * per_cell + r._CPU_STEP_FIXED_BYTES) / 2**30
        row["layer_term_only_gib"] = bs * 2048 * d * L * r._CPU_STEP_BYTES / 2**30  # the estimate before session 26
        row["measured_over_estimate"] = row["growth_gib"] / row["estimate_gib"]
        print(row, flush=True)
        rows.append(row)
    result = {"benchmark": "cpu_step_memory", "method": __doc__.split("\n\n")[1], "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
