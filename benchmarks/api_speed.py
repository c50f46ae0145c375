"""What a GPU user gets through the public API, against the bare encoder in the same process (issue 13).

Setting: a 24 x 512 GeneMamba (``GeneMambaModel`` defaults: top-2048 genes, mamba-ssm kernels on CUDA),
20,000 cells resampled (with replacement) from the shipped 559-cell celltypist sample, vocabulary of all
its genes.

Measured in one process, same model, same cells:

- ``api_embed_cells_per_s``: ``model.get_latent_representation()`` with every default (after one
  warm-up call), cells / s over all cells, tokenisation and host transfers included.
- ``encoder_infer_cells_per_s``: the encoder alone on the same cells, batches and precision
  (``encoder.embed_cells(..., packed=True)`` under bf16 autocast and ``torch.inference_mode``), tokens
  prepared beforehand and already on the GPU, after an untimed pass over every batch.
- ``api_train_real_tokens_per_s``: ``model.train(...)`` with defaults but ``batch_size`` (48) and
  ``max_steps``; real (non-pad) tokens / s between optimiser steps, timed by a callback after warm-up.
- ``encoder_train_real_tokens_per_s``: forward + backward + fused AdamW of the encoder alone under bf16
  autocast on the same batch size and real lengths, loss = mean square of the hidden states (no head).
- ``api_embed_fp32_*``: ``precision="32-true"`` on a subset, its speed and the cosine similarity of the
  float32 and default (bf16) embeddings.

First calls (``--first-call`` runs in fresh subprocesses): a fresh process's first
``get_latent_representation`` of 1,024 cells and first ``train`` of 3 steps, timed around the call alone,
with (a) the shipped kernel configurations and an empty Triton cache (a new machine), (b) the same again
with the Triton cache the first process left (a second process), (c) optionally no shipped
configurations and an empty Triton cache (plain autotuning, as before issue 13).

Run on the GPU (see shared/gpu/README.md)::

    python benchmarks/api_speed.py --out $OUT               # steady state + first calls
    python benchmarks/api_speed.py --smoke --out /tmp/api   # CPU, tiny, seconds (checks the script)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def resampled_cells(n: int, seed: int = 0):
    """``n`` cells drawn with replacement from the shipped 559-cell sample (raw counts, CSR)."""
    import anndata as ad

    from genemamba_scvi.datasets import load_celltypist_sample

    base = load_celltypist_sample()
    idx = np.random.default_rng(seed).integers(0, base.n_obs, size=n)
    adata = ad.AnnData(X=base.layers["counts"][idx].copy(), var=base.var.copy())
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.layers["counts"] = adata.X
    return adata


def build_model(adata, cfg: dict[str, Any]):
    from genemamba_scvi import GeneMambaModel

    GeneMambaModel.setup_anndata(adata, layer="counts")
    torch.manual_seed(0)
    model = GeneMambaModel(adata, **cfg)
    model.to_device("cuda" if torch.cuda.is_available() else "cpu")
    return model


def eval_model(n_cells: int, cfg: dict[str, Any]):
    """``(adata, model)``: ``n_cells`` resampled cells and a model of ``cfg`` on them, in eval mode, warnings and
    Lightning's log lines off (the embedding benchmarks' start)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata = resampled_cells(n_cells)
    model = build_model(adata, cfg)
    model.module.eval()
    return adata, model


class _StepTimer:
    """Lightning callback: wall time and real tokens of the optimiser steps after ``warmup`` steps."""

    def __init__(self, warmup: int, snapshot=None):
        import lightning.pytorch as pl

        outer = self

        class _CB(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    _sync()
                    outer.t0 = time.perf_counter()
                    outer.tokens = 0
                if trainer.global_step >= warmup:
                    outer.tokens += int(batch["lengths"].sum())
                    outer.steps += 1

            def on_train_end(self, trainer, pl_module):
                _sync()
                outer.t1 = time.perf_counter()
                outer.snapshot = snapshot() if snapshot is not None else None  # before the run's clean-up

        self.callback = _CB()
        self.t0 = self.t1 = None
        self.tokens = 0
        self.steps = 0
        self.snapshot = None

    def rate(self) -> float:
        return self.tokens / (self.t1 - self.t0)


def encoder_infer(model, adata, batch_size: int, precision: str) -> float:
    """Cells / s of the bare encoder on the API's own batches (tokens prepared and moved beforehand)."""
    from genemamba_scvi._precision import inference_autocast

    dev = model._device()
    loader = model._token_loader(adata, None, batch_size)
    batches = [(b["tokens"].to(dev), b["lengths"].to(dev)) for b in loader]
    enc = model.module.encoder
    enc.eval()
    packed = enc.resolved_backend(dev) == "mamba_ssm"
    with torch.inference_mode(), inference_autocast(precision, dev):
        for tokens, lengths in batches:  # warm-up over every batch: one batch left a third of the pass compiling
            enc.embed_cells(tokens, lengths, packed=packed)  # (643-766 cells/s on an H100, 1,111 warm: embed_paths.py)
        _sync()
        t0 = time.perf_counter()
        for tokens, lengths in batches:
            enc.embed_cells(tokens, lengths, packed=packed).float()
        _sync()
    return adata.n_obs / (time.perf_counter() - t0)


def encoder_train(model, adata, batch_size: int, steps: int, warmup: int) -> float:
    """Real tokens / s of forward + backward + AdamW of the encoder alone (bf16 autocast on CUDA)."""
    dev = model._device()
    enc = model.module.encoder
    enc.train()
    loader = model._token_loader(adata, np.arange(min(adata.n_obs, batch_size * (steps + warmup))), batch_size)
    batches = [(b["tokens"].to(dev), b["lengths"].to(dev)) for b in loader][: steps + warmup]
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-5, **({"fused": True} if dev.type == "cuda" else {}))
    packed = enc.resolved_backend(dev) == "mamba_ssm"
    amp = torch.bfloat16 if dev.type == "cuda" else None
    tokens_done, t0 = 0, None
    for i, (tokens, lengths) in enumerate(batches):
        if i == warmup:
            _sync()
            t0, tokens_done = time.perf_counter(), 0
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            h = enc(tokens, lengths, packed=packed)
            mask = torch.arange(h.shape[1], device=dev)[None] < lengths[:, None]
            loss = h.float()[mask].square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_done += int(lengths.sum())
    _sync()
    return tokens_done / (time.perf_counter() - t0)


def steady_state(args, result: dict[str, Any]) -> None:
    cfg = args.cfg
    adata = resampled_cells(args.cells)
    model = build_model(adata, cfg)
    result["model"] = model._model_summary_string
    dev = model._device()
    result["backend"] = model.module.encoder.resolved_backend(dev)
    result["mean_real_tokens_per_cell"] = float(
        np.mean([int(b["lengths"].sum()) / len(b["lengths"]) for b in model._token_loader(adata, None, 512)])
    )
    from genemamba_scvi._precision import resolve_precision

    precision = resolve_precision("auto", dev.type == "cuda")
    result["api_default_precision"] = precision
    bs = model._inference_batch_size(dev)
    result["api_default_embed_batch_size"] = bs

    # API embedding: warm-up call, then every cell with all defaults
    model.get_latent_representation(indices=np.arange(min(1024, adata.n_obs)), progress_bar=False)
    _sync()
    t0 = time.perf_counter()
    z = model.get_latent_representation(progress_bar=False)
    _sync()
    result["api_embed_seconds"] = time.perf_counter() - t0
    result["api_embed_cells_per_s"] = adata.n_obs / result["api_embed_seconds"]
    result["encoder_infer_cells_per_s"] = encoder_infer(model, adata, bs, precision)
    result["api_embed_ratio"] = result["api_embed_cells_per_s"] / result["encoder_infer_cells_per_s"]
    print(json.dumps({k: result[k] for k in ("api_embed_cells_per_s", "encoder_infer_cells_per_s")}), flush=True)

    # float32 on a subset: speed and agreement with the default precision
    sub = np.arange(min(args.fp32_cells, adata.n_obs))
    model.get_latent_representation(indices=sub[: min(64, len(sub))], precision="32-true", progress_bar=False)
    _sync()
    t0 = time.perf_counter()
    z32 = model.get_latent_representation(indices=sub, precision="32-true", progress_bar=False)
    _sync()
    result["api_embed_fp32_cells_per_s"] = len(sub) / (time.perf_counter() - t0)
    zd = z[sub]
    cos = (zd * z32).sum(1) / (np.linalg.norm(zd, axis=1) * np.linalg.norm(z32, axis=1))
    result["default_vs_fp32_cosine_min"] = float(cos.min())
    result["default_vs_fp32_cosine_mean"] = float(cos.mean())
    result["embedding_dtype"] = str(z.dtype)

    # API training: defaults except batch size and step count
    timer = _StepTimer(args.train_warmup)
    model.train(
        max_epochs=1,
        max_steps=args.train_warmup + args.train_steps,
        batch_size=args.train_batch,
        train_size=1.0,
        callbacks=[timer.callback],
        enable_progress_bar=False,
    )
    result["api_train_precision"] = str(model.trainer.precision)
    result["api_train_real_tokens_per_s"] = timer.rate()
    result["encoder_train_real_tokens_per_s"] = encoder_train(
        model, adata, args.train_batch, args.train_steps, args.train_warmup
    )
    result["api_train_ratio"] = result["api_train_real_tokens_per_s"] / result["encoder_train_real_tokens_per_s"]
    print(json.dumps({k: result[k] for k in ("api_train_real_tokens_per_s", "encoder_train_real_tokens_per_s")}))


def train_switch_compare(args, result: dict[str, Any], name: str, switch) -> None:
    """``model.train`` with a setting off and on (``switch(model, on)`` -> ``train`` kwargs), per batch size, same
    model and cells, alternating runs (off-on, then on-off).

    Each run: ``--graphs-warmup`` untimed steps (for CUDA graphs they hold the eager first batch and the capture of
    each token bucket), then ``--graphs-steps`` timed ones; real tokens / s between optimiser steps, peak GPU memory.
    Written to ``result[name]`` (rows) and ``result[name + "_summary"]`` (on / off per batch size).
    """
    adata = resampled_cells(args.cells)
    model = build_model(adata, args.cfg)
    enc = model.module.encoder
    rows: list[dict[str, Any]] = []
    for bs in args.graphs_batches:
        for rep in range(args.graphs_repeats):
            for on in (False, True) if rep % 2 == 0 else (True, False):
                graphs = name == "graphs_compare" and on
                timer = _StepTimer(args.graphs_warmup, snapshot=(lambda: dict(enc._graphs().stats)) if graphs else None)
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                model.train(max_epochs=1, max_steps=args.graphs_warmup + args.graphs_steps, batch_size=bs,
                            train_size=1.0, callbacks=[timer.callback], enable_progress_bar=False,
                            **switch(model, on))  # fmt: skip
                row = {"batch_size": bs, "setting": name, "on": on, "repeat": rep, "real_tokens_per_s": timer.rate(),
                       "timed_steps": timer.steps, "graph_stats": timer.snapshot,
                       "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                       if torch.cuda.is_available() else None}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    result[name] = rows
    summary = {}
    for bs in args.graphs_batches:
        on = [r["real_tokens_per_s"] for r in rows if r["batch_size"] == bs and r["on"]]
        off = [r["real_tokens_per_s"] for r in rows if r["batch_size"] == bs and not r["on"]]
        summary[str(bs)] = {"on_over_off": float(np.mean(on) / np.mean(off)), "on": on, "off": off}
    result[name + "_summary"] = summary
    print(json.dumps({name: summary}), flush=True)


def _graphs(model, on: bool) -> dict[str, Any]:
    return {"cuda_graphs": on}


def _prefetch_switch(model, on: bool) -> dict[str, Any]:
    """The training loader's background tokenization (``genemamba_scvi._prefetch``, session 31) on or off."""
    return {"datasplitter_kwargs": {"background": on}}


def _fused_adamw_switch(model, on: bool) -> dict[str, Any]:
    """The training plan's AdamW fused on a GPU (session 34) or torch's default (foreach)."""
    import genemamba_scvi.train as plan

    plan._FUSED_ADAMW = on
    return {}


def first_call_child(args) -> None:
    """In a fresh process: time the first embedding or the first training call (printed as JSON)."""
    t_start = time.perf_counter()
    adata = resampled_cells(args.first_cells, seed=1)
    model = build_model(adata, args.cfg)
    _sync()
    out: dict[str, Any] = {"setup_s": time.perf_counter() - t_start}
    from genemamba_scvi.nn.kernel_configs import install_tuned_configs

    if args.first_call == "embed":
        t0 = time.perf_counter()
        model.get_latent_representation(progress_bar=False)
        _sync()
        out["first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.get_latent_representation(progress_bar=False)
        _sync()
        out["steady_s"] = time.perf_counter() - t0
    else:
        kw = dict(max_epochs=1, batch_size=args.train_batch, enable_progress_bar=False, enable_model_summary=False)
        t0 = time.perf_counter()
        model.train(max_steps=3, **kw)
        _sync()
        out["first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.train(max_steps=3, **kw)
        _sync()
        out["steady_s"] = time.perf_counter() - t0
    out["kernel_configs"] = install_tuned_configs()
    print("RESULT " + json.dumps(out), flush=True)


def first_calls(args, result: dict[str, Any]) -> None:
    variants = [("shipped_cold_triton_cache", True, True), ("shipped_warm_triton_cache", True, False)]
    if args.baseline_first_call:
        variants.append(("no_shipped_cold_triton_cache", False, True))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for what in ("embed", "train"):
            triton_dir = Path(tmp) / f"triton_{what}"
            for name, shipped, cold in variants:
                if cold:
                    triton_dir = Path(tmp) / f"triton_{what}_{name}"
                env = dict(os.environ)
                env["TRITON_CACHE_DIR"] = str(triton_dir)
                env["GENEMAMBA_KERNEL_CACHE"] = "0"  # only what ships counts here
                env["GENEMAMBA_TUNED_KERNELS"] = "1" if shipped else "0"
                cmd = [sys.executable, __file__, "--first-call", what, *(["--smoke"] if args.smoke else [])]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.child_timeout)
                wall = time.perf_counter() - t0
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    out[f"{what}_{name}"] = {"error": (proc.stderr or proc.stdout)[-2000:], "wall_s": wall}
                else:
                    out[f"{what}_{name}"] = {**json.loads(line[-1][7:]), "process_wall_s": wall}
                print(what, name, json.dumps(out[f"{what}_{name}"])[:400], flush=True)
    result["first_calls"] = out
    ok = out.get("embed_shipped_cold_triton_cache", {})
    result["api_first_embed_s"] = ok.get("first_s")
    result["api_first_train_s"] = out.get("train_shipped_cold_triton_cache", {}).get("first_s")
    result["api_first_embed_s_second_process"] = out.get("embed_shipped_warm_triton_cache", {}).get("first_s")
    result["api_first_train_s_second_process"] = out.get("train_shipped_warm_triton_cache", {}).get("first_s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny model and data (CPU)")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--fp32-cells", type=int, default=2048)
    p.add_argument("--first-cells", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=48)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--train-warmup", type=int, default=5)
    p.add_argument("--skip-steady", action="store_true")
    p.add_argument("--graphs-batches", type=int, nargs="*", default=[], help="compare --compare off/on at these")
    p.add_argument(
        "--compare",
        choices=("cuda_graphs", "prefetch", "fused_adamw"),
        default="cuda_graphs",
        help="the train setting --graphs-batches compares (result key graphs_compare / prefetch_compare / "
        "fused_adamw_compare)",
    )
    p.add_argument("--graphs-warmup", type=int, default=30)
    p.add_argument("--graphs-steps", type=int, default=40)
    p.add_argument("--graphs-repeats", type=int, default=2)
    p.add_argument("--skip-first-call", action="store_true")
    p.add_argument("--baseline-first-call", action="store_true", help="also time plain autotuning (slow)")
    p.add_argument("--child-timeout", type=float, default=400)
    p.add_argument("--first-call", choices=("embed", "train"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cfg = {"d_model": 512, "n_layers": 24, "max_genes": 2048}
    if args.smoke:
        args.cfg = {"d_model": 32, "n_layers": 2, "max_genes": 256}
        args.cells, args.fp32_cells, args.first_cells = min(args.cells, 300), 64, 64
        args.train_steps, args.train_warmup, args.train_batch = 3, 1, 16
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)
    if args.first_call:
        first_call_child(args)
        return
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    tag = "cpu_smoke" if not torch.cuda.is_available() else gpu.split()[-1].lower()
    result: dict[str, Any] = {
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "setting": {**args.cfg, "cells": args.cells, "train_batch": args.train_batch, "data": "celltypist resampled"},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"api_speed_{tag}.json"
    if args.skip_steady and path.is_file():  # keep the steady-state numbers of an earlier run beside the new ones
        result = {**json.loads(path.read_text()), **result}
    if not args.skip_steady:
        steady_state(args, result)
        path.write_text(json.dumps(result, indent=2))
    if args.graphs_batches:
        if args.compare == "cuda_graphs":  # the result keys of sessions 12-26
            train_switch_compare(args, result, "graphs_compare", _graphs)
        elif args.compare == "prefetch":
            train_switch_compare(args, result, "prefetch_compare", _prefetch_switch)
        else:
            train_switch_compare(args, result, "fused_adamw_compare", _fused_adamw_switch)
        path.write_text(json.dumps(result, indent=2))
    if not args.skip_first_call:
        first_calls(args, result)
    result["targets"] = {
        "api_embed_ratio>=0.9": (result.get("api_embed_ratio") or 0) >= 0.9,
        "api_train_ratio>=0.8": (result.get("api_train_ratio") or 0) >= 0.8,
        "api_first_embed_s<=20": (result.get("api_first_embed_s") or 1e9) <= 20,
        "api_first_train_s<=30": (result.get("api_first_train_s") or 1e9) <= 30,
    }
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
