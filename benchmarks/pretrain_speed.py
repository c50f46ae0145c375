"""Corpus pre-training through the public API against the module's own step, in the same process (session 34).

``pretrain_from_corpus`` had only ever run on CPUs. This measures what a GPU user gets from it: real (non-pad)
tokens / s of its optimiser steps, and the same steps done by hand on the same batches moved to the GPU beforehand
(the module's loss, backward, gradient clipping and the plan's AdamW under bf16 autocast): no Lightning, no
loader, no per-step seeding. Their ratio is the public path's efficiency. A third arm does the same by hand with
``torch.optim.AdamW(fused=True)`` (one kernel for the whole update instead of ``foreach``'s several): whether the
plan's optimiser is worth changing.

Setting: a corpus of ``--copies`` resampled copies of the shipped 559-cell celltypist sample (real cells, the
same builder as ``ddp_scaling.py``), a 24 x 512 GeneMamba, top-2048 genes, ``batch_size`` 32 (the function's
default), masked-gene loss + 0.1 x pathway InfoNCE on the shipped GO BP sets, defaults otherwise (bf16-mixed on a
GPU). The arms run in rotated order over ``--rounds`` rounds after one untimed warm-up run (every kernel
compiled); each round starts every arm from the same seeded initial weights and batches.

Run on the GPU (see shared/gpu/README.md)::

    python benchmarks/pretrain_speed.py --out $OUT
    python benchmarks/pretrain_speed.py --smoke --out /tmp/pre   # CPU, tiny, seconds (checks the script)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from ddp_scaling import build  # noqa: E402  (the corpus of resampled real cells)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Timer:
    """Lightning callback: wall time and real tokens of the steps from ``warmup`` on (loader time included)."""

    def __new__(cls, warmup: int):
        import lightning.pytorch as pl

        class Timer(pl.Callback):
            def __init__(self) -> None:
                self.t0 = self.t1 = None
                self.tokens, self.steps = 0, 0  # a device tensor while running: counting must not synchronise

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup and self.t0 is None:
                    _sync()
                    self.t0 = time.perf_counter()
                if self.t0 is not None:
                    self.tokens = batch["lengths"].sum() + self.tokens
                    self.steps += 1

            def on_train_end(self, trainer, pl_module):
                _sync()
                self.t1 = time.perf_counter()
                self.tokens = int(self.tokens)

        return Timer()


def api_arm(args, corpus: Path, steps: int) -> dict[str, Any]:
    from genemamba_scvi.pretrain import pretrain_from_corpus

    timer = _Timer(args.warmup)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = pretrain_from_corpus(corpus, callbacks=[timer], max_steps=steps, **_run_settings(args))
    return {
        "real_tokens_per_s": timer.tokens / (timer.t1 - timer.t0),
        "timed_steps": timer.steps,
        "precision": str(result.trainer.precision),
        "backend": result.module.encoder.resolved_backend(torch.device(args.device)),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def _run_settings(args) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": 0,
        "gene_sets": args.gene_sets,
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "accelerator": "gpu" if args.device == "cuda" else "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
    }


def module_arm(args, corpus: Path, steps: int, fused: bool) -> dict[str, Any]:
    """The same steps by hand: the plan's loss and AdamW (or a fused AdamW), batches already on the device."""
    import lightning.pytorch as pl

    from genemamba_scvi.data.corpus import TokenCorpus
    from genemamba_scvi.module import GeneMambaModule, gene_set_tensors
    from genemamba_scvi.nn.config import GeneMambaConfig
    from genemamba_scvi.pretrain import CorpusDataModule

    dev = torch.device(args.device)
    data = CorpusDataModule(corpus, batch_size=args.batch_size, shuffle=True, seed=0)
    batches, n_tokens = [], []
    for batch in data.train_dataloader():
        n_tokens.append(int(batch["lengths"].sum()))  # counted on the host: the timed loop never synchronises
        batches.append({k: v.to(dev, non_blocking=True) for k, v in batch.items()})
        if len(batches) == steps:
            break
    vocab = TokenCorpus(corpus).vocab
    pl.seed_everything(0, verbose=False)
    config = GeneMambaConfig().replace(d_model=args.d_model, n_layers=args.n_layers)
    module = GeneMambaModule(len(vocab), gamma=0.1, mask_id=vocab.mask_id, n_special=vocab.n_special, config=config)
    module.set_gene_sets(gene_set_tensors(args.gene_sets, vocab))
    module.to(dev).train()
    decay = [p for n, p in module.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in module.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    extra = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=args.lr, **extra
    )
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, tokens = None, 0
    for i, batch in enumerate(batches):
        if i == args.warmup:
            _sync()
            t0, tokens = time.perf_counter(), 0
        with amp:
            _, _, out = module(batch, loss_kwargs={"gamma": 0.1})
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += n_tokens[i]
    _sync()
    return {
        "real_tokens_per_s": tokens / (time.perf_counter() - t0),
        "timed_steps": len(batches) - args.warmup,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--max-genes", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layers", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=36, help="steps per arm and round, warm-up included")
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--gene-sets", default="go_bp")
    ap.add_argument("--workdir", default="/tmp/genemamba_pretrain_speed")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and corpus (checks the script)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.copies, args.max_genes, args.d_model, args.n_layers = 1, 64, 32, 1
        args.batch_size, args.steps, args.warmup, args.rounds = 32, 4, 1, 1
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    corpus = build(Path(args.workdir), args.copies, args.max_genes)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    api_arm(args, corpus, args.warmup + 2)  # untimed: compiles every kernel of the path
    warm_s = time.perf_counter() - t0
    arms = {
        "api": lambda: api_arm(args, corpus, args.steps),
        "module": lambda: module_arm(args, corpus, args.steps, fused=False),
        "module_fused_adamw": lambda: module_arm(args, corpus, args.steps, fused=True),
    }
    names = list(arms)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(arms[name]())
            print(name, r, json.dumps(runs[name][-1]), flush=True)
    median = {n: statistics.median(x["real_tokens_per_s"] for x in runs[n]) for n in names}
    out = {
        "benchmark": "pretrain_speed",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "corpus_build_s": build_s,
        "warmup_run_s": warm_s,
        "runs": runs,
        "median_real_tokens_per_s": median,
        "ratios": {
            "api_over_module": median["api"] / median["module"],
            "module_fused_adamw_over_module": median["module_fused_adamw"] / median["module"],
            "api_per_round_over_module": [
                a["real_tokens_per_s"] / m["real_tokens_per_s"] for a, m in zip(runs["api"], runs["module"])
            ],
        },
    }
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    stem = "pretrain_speed_smoke" if args.smoke else "pretrain_speed"
    (path / f"{stem}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({"median_real_tokens_per_s": median, "ratios": out["ratios"]}), flush=True)


if __name__ == "__main__":
    main()
