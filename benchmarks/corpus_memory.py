"""Out-of-core corpus build: peak memory stays flat while the input is 10x larger than the memory allowed.

1. Synthesise ``--n-files`` ``.h5ad`` files of *resampled real cells*: random cells (with replacement) of the
   shipped 559-cell celltypist sample, each binomially down-sampled with its own depth factor in
   ``[0.6, 1.0]`` (so no two cells are identical). The files are written chunk by chunk (``h5py`` +
   ``anndata.io.sparse_dataset(...).append``), so generation itself needs one chunk of memory, until the
   total CSR bytes (data + indices + indptr, uncompressed) reach ``--factor x --budget-mb``.
2. Run :func:`genemamba_scvi.data.build_corpus` on them in a fresh subprocess (t-digest medians pass, then
   tokenization into shards) while a thread samples the process' resident set size (``VmRSS`` of
   ``/proc/self/status``) every 20 ms, with the number of cells processed so far.
3. Write a JSON result: input size, cells, cells/s per pass, peak RSS (whole process, ``VmHWM``) against the
   budget, RSS at 10%/50%/90% of each pass (flat = does not grow with the cells processed), machine info.

Where the memory goes (measured): ~120 MB of imports (numpy, scipy, anndata, h5py), one t-digest per
vocabulary gene in the medians pass (~15-25 KB each once saturated, i.e. ~0.5 GB for a 33k-gene vocabulary:
bounded by the vocabulary, not by the number of cells), and a few copies of one ``chunk_size`` chunk.

Usage::

    python benchmarks/corpus_memory.py --budget-mb 1024 --factor 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import status_kb

MB = 1 << 20


# ---------------------------------------------------------------------------------------------- helpers
def _machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    import anndata
    import h5py
    import scipy

    from genemamba_scvi import __version__

    info.update(
        numpy=np.__version__,
        scipy=scipy.__version__,
        anndata=anndata.__version__,
        h5py=h5py.__version__,
        genemamba_scvi=__version__,
    )
    return info


# ---------------------------------------------------------------------------------------------- generation
def synthesize(workdir: Path, target_bytes: int, n_files: int, chunk_cells: int, seed: int) -> dict:
    """Write ``n_files`` .h5ad files of resampled real cells totalling ``target_bytes`` of CSR arrays."""
    import anndata
    import anndata.io as aio
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    from genemamba_scvi.datasets import resource_path

    sample = anndata.read_h5ad(resource_path("celltypist_sample_559cells_counts.h5ad"))
    base = sp.csr_matrix(sample.X)
    base.sort_indices()
    rng = np.random.default_rng(seed)
    per_file = target_bytes // n_files
    files, n_cells_total, csr_bytes_total = [], 0, 0
    t0 = time.perf_counter()
    for fi in range(n_files):
        path = workdir / f"synthetic_{fi:03d}.h5ad"
        n_cells, nbytes = 0, 0
        with h5py.File(path, "w") as f:
            ds = None
            while nbytes < per_file:
                rows = rng.integers(0, base.shape[0], size=chunk_cells)
                chunk = base[rows]
                depth = rng.uniform(0.6, 1.0, size=chunk_cells)
                p = np.repeat(depth, np.diff(chunk.indptr))
                data = rng.binomial(chunk.data.astype(np.int64), p).astype(np.float32)
                chunk = sp.csr_matrix((data, chunk.indices, chunk.indptr), shape=chunk.shape)
                chunk.eliminate_zeros()
                empty = np.diff(chunk.indptr) == 0
                if empty.any():  # keep every cell non-empty (a down-sampled cell could lose all counts)
                    chunk = chunk[~empty]
                if ds is None:
                    aio.write_elem(f, "X", chunk, dataset_kwargs={"chunks": (1 << 18,)})
                    ds = aio.sparse_dataset(f["X"])
                else:
                    ds.append(chunk)
                n_cells += chunk.shape[0]
                nbytes += chunk.data.nbytes + chunk.indices.nbytes + (chunk.shape[0]) * 8
            aio.write_elem(f, "obs", pd.DataFrame(index=pd.Index([f"f{fi}_c{i}" for i in range(n_cells)])))
            aio.write_elem(f, "var", pd.DataFrame(index=sample.var_names.copy()))
            for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
                aio.write_elem(f, key, {})
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
        files.append({"path": str(path), "cells": n_cells, "csr_bytes": nbytes, "file_bytes": path.stat().st_size})
        n_cells_total += n_cells
        csr_bytes_total += nbytes
        print(f"[gen] {path.name}: {n_cells} cells, {nbytes / MB:.0f} MB CSR", flush=True)
    return {
        "files": files,
        "cells": n_cells_total,
        "csr_bytes": csr_bytes_total,
        "file_bytes": sum(f["file_bytes"] for f in files),
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- build (child)
def _child(args: argparse.Namespace) -> None:
    """Run build_corpus and sample RSS; writes a JSON trace to ``args.trace``."""
    import anndata.io  # noqa: F401  (imported before the baseline is taken)
    import fastdigest  # noqa: F401
    import h5py  # noqa: F401

    import genemamba_scvi.data.corpus as corpus_mod
    from genemamba_scvi.data.corpus import build_corpus

    state = {"phase": "start", "cells": 0}
    samples: list[tuple[float, str, int, int]] = []
    stop = threading.Event()

    class _Counter:
        def __init__(self, desc: str, initial: int):
            state["phase"], state["cells"] = desc, initial

        def update(self, n: int) -> None:
            state["cells"] += n

        def close(self) -> None:
            pass

    corpus_mod._progress_bar = lambda progress, total, initial, desc: _Counter(desc, initial)
    baseline_kb = status_kb("VmRSS")
    t0 = time.perf_counter()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, state["phase"], state["cells"], status_kb("VmRSS")))
            time.sleep(0.02)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    manifest = build_corpus(
        args.inputs,
        args.out_dir,
        max_genes=args.max_genes,
        chunk_size=args.chunk_size,
        shard_size=args.shard_size,
        median_method="tdigest",
    )
    stop.set()
    th.join()
    total = time.perf_counter() - t0
    trace = {
        "baseline_rss_kb": baseline_kb,
        "peak_rss_kb": status_kb("VmHWM"),
        "seconds": total,
        "samples": samples,
        "n_rows": manifest.n_rows,
        "n_shards": len(manifest.shards),
    }
    Path(args.trace).write_text(json.dumps(trace))


def _summarise_phase(samples: list, phase: str, n_cells: int) -> dict:
    pts = [(t, c, r) for t, p, c, r in samples if p == phase]
    if not pts:
        return {}
    t_start, t_end = pts[0][0], pts[-1][0]
    out = {
        "seconds": round(t_end - t_start, 2),
        "cells_per_s": round(n_cells / max(t_end - t_start, 1e-9), 1),
        "peak_rss_mb": round(max(r for _, _, r in pts) / 1024, 1),
    }
    c0 = pts[0][1]
    for q in (0.1, 0.5, 0.9):
        target = c0 + q * (n_cells)
        t, _, r = next((p for p in pts if p[1] >= target), pts[-1])
        window = [rr for tt, _, rr in pts if abs(tt - t) <= 0.5]
        out[f"rss_mb_at_{int(q * 100)}pct"] = round(r / 1024, 1)
        out[f"rss_mb_max_near_{int(q * 100)}pct"] = round(max(window) / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-mb", type=float, default=1024.0, help="RSS allowed to the build process (whole process)")
    ap.add_argument("--factor", type=float, default=10.0, help="input CSR bytes / budget")
    ap.add_argument("--n-files", type=int, default=8)
    ap.add_argument("--gen-chunk", type=int, default=4000, help="cells per generated chunk")
    ap.add_argument("--chunk-size", type=int, default=2000, help="build_corpus chunk_size")
    ap.add_argument("--shard-size", type=int, default=20000, help="build_corpus shard_size")
    ap.add_argument("--max-genes", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/genemamba_corpus_memory")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "corpus_memory.json"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic inputs and the corpus")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    ap.add_argument("--trace", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _child(args)
        return

    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "inputs").mkdir(parents=True)
    target = int(args.factor * args.budget_mb * MB)
    gen = synthesize(workdir / "inputs", target, args.n_files, args.gen_chunk, args.seed)
    print(f"[gen] {gen['cells']} cells, {gen['csr_bytes'] / MB:.0f} MB CSR in {gen['seconds']:.0f} s", flush=True)

    trace_path = workdir / "trace.json"
    cmd = [
        sys.executable,
        __file__,
        "--_child",
        "--inputs",
        *[f["path"] for f in gen["files"]],
        "--out-dir",
        str(workdir / "corpus"),
        "--trace",
        str(trace_path),
        "--max-genes",
        str(args.max_genes),
        "--chunk-size",
        str(args.chunk_size),
        "--shard-size",
        str(args.shard_size),
    ]
    subprocess.run(cmd, check=True)
    trace = json.loads(trace_path.read_text())
    samples = trace["samples"]
    n = gen["cells"]
    baseline = trace["baseline_rss_kb"] / 1024
    peak = trace["peak_rss_kb"] / 1024
    corpus_bytes = sum(p.stat().st_size for p in (workdir / "corpus").rglob("*") if p.is_file())
    step = max(len(samples) // 200, 1)
    result = {
        "benchmark": "corpus_memory",
        "what": "build_corpus (t-digest medians pass + tokenize pass) over synthetic .h5ad files of resampled real "
        "cells (celltypist sample, binomially down-sampled); RSS of the build process sampled every 20 ms",
        "settings": {
            "budget_mb": args.budget_mb,
            "factor_requested": args.factor,
            "n_files": args.n_files,
            "chunk_size": args.chunk_size,
            "shard_size": args.shard_size,
            "max_genes": args.max_genes,
            "median_method": "tdigest",
        },
        "input": {
            "cells": n,
            "csr_bytes": gen["csr_bytes"],
            "file_bytes": gen["file_bytes"],
            "csr_mb": round(gen["csr_bytes"] / MB, 1),
            "input_over_budget": round(gen["csr_bytes"] / (args.budget_mb * MB), 2),
        },
        "output": {"rows": trace["n_rows"], "shards": trace["n_shards"], "bytes": corpus_bytes},
        "rss": {
            "baseline_after_imports_mb": round(baseline, 1),
            "peak_mb": round(peak, 1),
            "peak_growth_mb": round(peak - baseline, 1),
            "within_budget": bool(peak <= args.budget_mb),
        },
        "medians_pass": _summarise_phase(samples, "gene medians", n),
        "tokenize_pass": _summarise_phase(samples, "tokenize", n),
        "total_seconds": round(trace["seconds"], 1),
        "cells_per_s_overall": round(n / trace["seconds"], 1),
        "rss_timeline": [
            {"t": round(t, 2), "phase": p, "cells": c, "rss_mb": round(r / 1024, 1)} for t, p, c, r in samples[::step]
        ],
        "machine": _machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: result[k] for k in ("input", "rss", "medians_pass", "tokenize_pass", "total_seconds")}
    print(json.dumps(summary, indent=1))
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
