"""``get_latent_representation()``'s speed and memory at several batch sizes, interleaved on the same cells.

On a GPU the public API picks its inference batch from the free memory (``model._inference_batch_size``: a
per-token estimate with slack, a quarter of the free memory, at most 1,024 cells and 2^20 token slots); on an H100
with a 24 x 512 model and ``max_genes=2048`` that gave 185-199 cells a batch, while ``throughput.py`` embeds 256 cells
a batch. This script measures whether the batch size moves cells/s, and what each batch size costs in memory, so the
heuristic can follow the measurement:

- arms: ``default`` (``batch_size=None``: the heuristic) and each ``--sizes`` value, passed as ``batch_size=``;
- one untimed pass of every arm first (every shape's kernels compiled), then ``--rounds`` rounds whose arm order
  rotates; each timed pass embeds all cells (tokenisation and transfers included, as a user's call);
- per arm: the peak of ``torch.cuda.max_memory_allocated`` above what was allocated before the pass, the largest
  batch's real tokens, so ``peak_bytes_per_real_token`` (what the heuristic estimates), and the largest difference of
  its embeddings from the ``default`` arm's (bf16 autocast: batch composition changes the packing, not the maths).

Written: ``embed_batch_size_<gpu>.json``.

    python benchmarks/embed_batch_size.py --out $OUT                 # GPU
    python benchmarks/embed_batch_size.py --smoke --out /tmp/ebs     # CPU, tiny (checks the script)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_speed import _sync, eval_model


def _largest_batch_tokens(model, adata, batch_size: int) -> int:
    """Real tokens of the largest batch the API's loader makes at ``batch_size`` (host only)."""
    return max(int(b["lengths"].sum()) for b in model._token_loader(adata, None, batch_size))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny model and data (CPU)")
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="128,256,512,1024", help="comma-separated batch sizes besides the default")
    args = p.parse_args(argv)
    cfg = {"d_model": 512, "n_layers": 24, "max_genes": 2048}
    if args.smoke:
        cfg, args.cells, args.rounds, args.sizes = {"d_model": 32, "n_layers": 1, "max_genes": 128}, 40, 2, "4,16"
    adata, model = eval_model(args.cells, cfg)
    dev = model._device()
    cuda = dev.type == "cuda"
    default_bs = model._inference_batch_size(dev)
    sizes: dict[str, int | None] = {"default": None}
    sizes.update({str(int(s)): int(s) for s in args.sizes.split(",") if s.strip()})

    def embed(bs: int | None) -> np.ndarray:
        return model.get_latent_representation(batch_size=bs, progress_bar=False)

    reference = embed(None)
    peak, max_abs, tokens = {}, {}, {}
    for name, bs in sizes.items():  # the untimed pass: compiles, and each arm's memory
        _sync()
        base = torch.cuda.memory_allocated(dev) if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        z = embed(bs)
        _sync()
        peak[name] = (torch.cuda.max_memory_allocated(dev) - base) if cuda else 0
        max_abs[name] = float(np.abs(z - reference).max())
        tokens[name] = _largest_batch_tokens(model, adata, bs or default_bs)
    names = list(sizes)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync()
            t0 = time.perf_counter()
            embed(sizes[name])
            _sync()
            rates[name].append(adata.n_obs / (time.perf_counter() - t0))
    ratio = {n: float(np.median(np.array(rates[n]) / np.array(rates["default"]))) for n in names}
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    result = {
        "gpu": gpu,
        "torch": torch.__version__,
        "setting": {**cfg, "cells": args.cells, "rounds": args.rounds, "default_batch_size": default_bs},
        "batch_size": {n: (bs or default_bs) for n, bs in sizes.items()},
        "cells_per_s": rates,
        "cells_per_s_median": {n: float(np.median(v)) for n, v in rates.items()},
        "ratio_to_default_median": ratio,
        "peak_extra_gib": {n: v / 2**30 for n, v in peak.items()},
        "largest_batch_real_tokens": tokens,
        "peak_bytes_per_real_token": {n: (peak[n] / tokens[n] if tokens[n] else None) for n in names},
        "max_abs_diff_to_default": max_abs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu_smoke" if gpu == "cpu" else gpu.split()[-1].lower()
    (out / f"embed_batch_size_{tag}.json").write_text(json.dumps(result, indent=1))
    keys = ("batch_size", "cells_per_s_median", "ratio_to_default_median", "peak_bytes_per_real_token")
    print(json.dumps({k: result[k] for k in keys}))
    return result


if __name__ == "__main__":
    main()
