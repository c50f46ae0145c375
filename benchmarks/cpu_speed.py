"""CPU speed of the torch backend on real cells: padded vs packed batches, and the scan's chunk length.

Users without a GPU run GeneMamba's pure-PyTorch backend. Before session 17 a CPU batch was padded to its longest
cell and scanned in chunks of the model's ``chunk_size`` (256); since then a CPU batch is packed (only real tokens,
as on the mamba-ssm kernels) and scanned in chunks of at most ``nn.mamba2.CPU_CHUNK_SIZE`` (64). This script
measures both levers on the same cells, interleaved, against the old path as the baseline of the same run:

- **encoder arms** (``GeneMambaEncoder`` directly): ``padded_q256`` (the old CPU path: the baseline),
  ``padded_q64``, ``packed_q256``, ``packed_q128``, ``packed_q64`` (the new default) and ``packed_q32``; in
  inference (forward + mean pooling under ``inference_mode``) and in training (forward + backward of the mean
  square of the final states over real tokens; no optimiser);
- **API arms** (``model.get_latent_representation()``): the old path (``_PACK_ON_CPU = False``,
  ``CPU_CHUNK_SIZE = 256``) against the default, on the same cells.

Each round runs every arm once on the same batch, in a rotated order; ratios are per-round time ratios to the
baseline (median, bootstrap 95% interval). Every arm's embeddings are compared with the baseline's (max abs
difference): the levers must not change the function. Real cells: a fixed random draw (``--seed``) of the 559
shipped celltypist cells, top-``--max-genes`` genes. Model widths: the tutorials' tiny model and the published
width (d_model 512) with ``--n-layers`` layers (time per layer is what the depth multiplies).

Usage::

    python benchmarks/cpu_speed.py                      # -> benchmarks/results/cpu_speed.json
    python benchmarks/cpu_speed.py --quick --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from _common import environment, quiet  # noqa: E402

#: encoder arms: name -> (packed, CPU chunk length)
ENCODER_ARMS = {
    "padded_q256": (False, 256),
    "padded_q64": (False, 64),
    "packed_q256": (True, 256),
    "packed_q128": (True, 128),
    "packed_q64": (True, 64),
    "packed_q32": (True, 32),
}
BASELINE = "padded_q256"


@contextlib.contextmanager
def cpu_path(packed: bool, chunk: int) -> Iterator[None]:
    """Run the package with the given CPU packing and chunk length, then put the defaults back."""
    import genemamba_scvi.module as module
    import genemamba_scvi.nn.mamba2 as mamba2

    saved = module._PACK_ON_CPU, mamba2.CPU_CHUNK_SIZE
    module._PACK_ON_CPU, mamba2.CPU_CHUNK_SIZE = packed, chunk
    try:
        yield
    finally:
        module._PACK_ON_CPU, mamba2.CPU_CHUNK_SIZE = saved


def _paired(times: dict[str, list[float]], arm: str, ref: str, rng: np.random.Generator) -> dict[str, Any]:
    r = np.asarray(times[arm]) / np.asarray(times[ref])
    boot = np.median(rng.choice(r, size=(2000, len(r)), replace=True), axis=1)
    return {
        "time_s_median": float(np.median(times[arm])),
        "time_ratio_median": float(np.median(r)),
        "time_ratio_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "speedup_vs_baseline": float(1.0 / np.median(r)),
    }


def _cells(n_cells: int, max_genes: int, seed: int) -> tuple[Any, np.ndarray]:
    from genemamba_scvi.datasets import load_celltypist_sample

    adata = load_celltypist_sample()
    pick = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
    return adata[pick].copy(), pick


def _model(adata: Any, d_model: int, n_layers: int, max_genes: int) -> Any:
    import scvi

    from genemamba_scvi import GeneMambaModel

    scvi.settings.seed = 0
    GeneMambaModel.setup_anndata(adata, layer="counts")
    return GeneMambaModel(adata, d_model=d_model, n_layers=n_layers, max_genes=max_genes, backend="torch")


def _encoder_rounds(model: Any, adata: Any, rounds: int, train: bool, rng: np.random.Generator) -> dict[str, Any]:
    import scipy.sparse as sp

    tokens, lengths = model._tokenizer_for(adata, warn_unknown=False)(sp.csr_matrix(adata.layers["counts"]))
    tokens, lengths = torch.from_numpy(tokens).long(), torch.from_numpy(lengths).long()
    enc = model.module.encoder
    enc.train(train)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    times: dict[str, list[float]] = {arm: [] for arm in ENCODER_ARMS}
    outputs: dict[str, torch.Tensor] = {}
    names = list(ENCODER_ARMS)
    for r in range(rounds + 1):  # round 0 warms up and is not timed
        order = names[r % len(names) :] + names[: r % len(names)]
        for arm in order:
            packed, chunk = ENCODER_ARMS[arm]
            with cpu_path(packed, chunk):
                t0 = time.perf_counter()
                if train:
                    enc.zero_grad(set_to_none=True)
                    hidden = enc(tokens, lengths, packed=packed)
                    loss = hidden[real].square().mean()
                    loss.backward()
                    out = torch.cat([p.grad.reshape(-1) for p in enc.parameters() if p.grad is not None])
                else:
                    with torch.inference_mode():
                        out = enc.pool(enc(tokens, lengths, packed=packed), lengths)
                dt = time.perf_counter() - t0
            if r:
                times[arm].append(dt)
            outputs.setdefault(arm, out.detach().clone())
    enc.eval()
    ref = outputs[BASELINE]
    return {
        "real_tokens": int(lengths.sum()),
        "padded_tokens": int(lengths.max()) * len(lengths),
        "padding_efficiency": float(lengths.sum() / (lengths.max() * len(lengths))),
        "what_is_compared": "gradients of all encoder parameters" if train else "cell embeddings",
        "arms": {
            arm: {
                **_paired(times, arm, BASELINE, rng),
                "real_tokens_per_s": float(lengths.sum() / np.median(times[arm])),
                "max_abs_diff_vs_baseline": float((outputs[arm] - ref).abs().max()),
                "max_abs_baseline": float(ref.abs().max()),
                "times_s": [round(t, 4) for t in times[arm]],
            }
            for arm in names
        },
    }


def _api_rounds(model: Any, rounds: int, rng: np.random.Generator) -> dict[str, Any]:
    arms = {"old_padded_q256": (False, 256), "default": None}
    times: dict[str, list[float]] = {a: [] for a in arms}
    outputs: dict[str, np.ndarray] = {}
    for r in range(rounds + 1):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for arm in order:
            ctx = cpu_path(*arms[arm]) if arms[arm] is not None else contextlib.nullcontext()
            with ctx:
                t0 = time.perf_counter()
                z = model.get_latent_representation()
                dt = time.perf_counter() - t0
            if r:
                times[arm].append(dt)
            outputs.setdefault(arm, z)
    n = model.adata.n_obs
    return {
        "call": "model.get_latent_representation() (default batch size, float32 on CPU)",
        "arms": {
            arm: {
                **_paired(times, arm, "old_padded_q256", rng),
                "cells_per_s": float(n / np.median(times[arm])),
                "max_abs_diff_vs_old": float(np.abs(outputs[arm] - outputs["old_padded_q256"]).max()),
                "times_s": [round(t, 4) for t in times[arm]],
            }
            for arm in arms
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_speed.json")
    parser.add_argument(
        "--cells", type=int, default=32, help="cells per batch (the API's CPU batch: 8,192 tokens, at most 8 cells)"
    )
    parser.add_argument("--max-genes", type=int, default=2048)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 512], help="d_model of the models measured")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, numbers meaningless")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.max_genes, args.widths, args.rounds = 6, 256, [32], 2
    quiet()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    adata, picked = _cells(args.cells, args.max_genes, args.seed)
    result: dict[str, Any] = {
        "benchmark": "cpu_speed",
        "baseline": f"{BASELINE}: padded batch, chunks of 256 (the CPU path before session 17)",
        "config": {**vars(args), "out": str(args.out), "cells_picked": picked.tolist()},
        "machine": {
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "environment": environment(),
        "widths": {},
    }
    for width in args.widths:
        model = _model(adata.copy(), width, args.n_layers, args.max_genes)
        entry = {
            "d_model": width,
            "n_layers": args.n_layers,
            "inference": _encoder_rounds(model, model.adata, args.rounds, False, rng),
            "training": _encoder_rounds(model, model.adata, args.rounds, True, rng),
            "api": _api_rounds(model, args.rounds, rng),
        }
        result["widths"][str(width)] = entry
        result["machine"]["load_average_after_" + str(width)] = list(os.getloadavg())
        for mode in ("inference", "training"):
            best = entry[mode]["arms"]["packed_q64"]
            print(
                f"d_model {width} {mode}: packed_q64 {best['speedup_vs_baseline']:.2f}x the padded_q256 baseline "
                f"(ratio CI {best['time_ratio_ci95']}), max |diff| {best['max_abs_diff_vs_baseline']:.2e}"
            )
        api = entry["api"]["arms"]["default"]
        print(f"d_model {width} API: {api['cells_per_s']:.2f} cells/s, {api['speedup_vs_baseline']:.2f}x the old path")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
