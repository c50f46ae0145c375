"""Gradient checkpointing of the encoder: activation memory and step time, on vs off, in the same run.

For each sequence length ``L`` a batch of full-length cells goes through one training step (forward +
backward of the mean square of the final hidden states) of ``GeneMambaEncoder`` twice: with
``gradient_checkpointing`` off (the baseline) and on. Reported per setting:

- ``saved_bytes``: bytes of the distinct storages of the tensors autograd keeps for the backward pass
  during the forward (``torch.autograd.graph.saved_tensors_hooks``; device-independent; parameters
  included);
- ``peak_cuda_bytes``: ``torch.cuda.max_memory_allocated`` over the step, above the memory before it
  (CUDA only);
- ``peak_rss_growth_bytes`` (CPU): growth of the peak resident memory of a fresh process over one
  training step after a warm-up step (high-water mark ``VmHWM``, reset just before the step, minus the
  resident memory then; gradients already allocated; glibc told to mmap every block >= 64 kB so freed
  memory leaves the resident set). Unlike
  ``saved_bytes`` it includes the transient activations of the layer being recomputed in the backward
  pass, the gradients and the allocator's slack;
- ``step_seconds``: median of ``--repeats`` timed steps after one warm-up step;
- ratios on / off for all three, and the largest gradient difference (checkpointing recomputes, it
  must not change the gradients).

Defaults are a CPU-sized model (torch backend); on the GPU run e.g.
``--d-model 512 --n-layers 24 --lengths 2048 4096 8192 --batch-size 8 --bf16``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from genemamba_scvi.nn import GeneMambaEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_bytes, reset_peak, rss_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def _step(enc, tokens, lengths, device, bf16: bool) -> tuple[int, int | None, float]:
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()  # count each storage once: views and expanded tensors share memory
        storages[st.data_ptr()] = st.nbytes()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            h = enc(tokens, lengths, packed=device.type == "cuda")
        loss = h.float().pow(2).mean()
    loss.backward()
    saved = sum(storages.values())
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    return saved, peak, time.perf_counter() - t0


def measure(enc, L: int, batch: int, device, bf16: bool, repeats: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(L)
    tokens = torch.randint(3, vocab, (batch, L), generator=g).to(device)
    lengths = torch.full((batch,), L, dtype=torch.long, device=device)
    res, grads = {}, {}
    for ckpt in (False, True):
        enc.gradient_checkpointing = ckpt
        enc.zero_grad(set_to_none=True)
        _step(enc, tokens, lengths, device, bf16)  # warm-up (kernels, allocator)
        times, saved, peak = [], 0, None
        for _ in range(repeats):
            enc.zero_grad(set_to_none=True)
            saved, peak, dt = _step(enc, tokens, lengths, device, bf16)
            times.append(dt)
        grads[ckpt] = {n: p.grad.detach().float().clone() for n, p in enc.named_parameters() if p.grad is not None}
        res["on" if ckpt else "off"] = {
            "saved_bytes": saved,
            "peak_cuda_bytes": peak,
            "step_seconds": statistics.median(times),
        }
    enc.gradient_checkpointing = False
    off, on = res["off"], res["on"]
    max_rel = max(
        float((grads[True][n] - grads[False][n]).abs().max() / grads[False][n].abs().max().clamp_min(1e-30))
        for n in grads[False]
    )
    return {
        "L": L,
        "batch_size": batch,
        **res,
        "saved_bytes_ratio_on_over_off": on["saved_bytes"] / off["saved_bytes"],
        "peak_cuda_ratio_on_over_off": (on["peak_cuda_bytes"] / off["peak_cuda_bytes"])
        if off["peak_cuda_bytes"]
        else None,
        "step_time_ratio_on_over_off": on["step_seconds"] / off["step_seconds"],
        "grad_max_rel_diff": max_rel,
    }


def _single_step_rss(args, L: int, ckpt: bool) -> int:
    """Run one training step in a fresh process (``--single``) and return its peak RSS growth."""
    cmd = [sys.executable, __file__, "--single", str(L), str(int(ckpt)), *_model_argv(args)]
    # glibc returns mmapped blocks to the OS on free: with every block >= 64 kB mmapped, the resident set
    # follows the live tensors instead of keeping freed activations cached in the heap
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return int(out.strip().splitlines()[-1])


def _model_argv(args) -> list[str]:
    keys = ("d_model", "n_layers", "d_state", "headdim", "chunk_size", "batch_size", "vocab", "backend", "threads")
    argv = []
    for k in keys:
        v = getattr(args, k)
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _build(args, device):
    torch.manual_seed(0)
    enc = GeneMambaEncoder(
        args.vocab,
        d_model=args.d_model,
        n_layers=args.n_layers,
        d_state=args.d_state,
        headdim=args.headdim,
        chunk_size=args.chunk_size,
        backend=args.backend,
    ).to(device)
    return enc.train()


def _write(args, enc, device, rows: list[dict]) -> dict:
    """Write the result JSON (after every length, so a run cut short keeps what it measured)."""
    name = torch.cuda.get_device_name().split()[-1].lower() if device.type == "cuda" else "cpu"
    out = {
        "benchmark": "checkpointing_memory",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": enc.resolved_backend(device),
        "model": {
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "d_state": args.d_state,
            "headdim": args.headdim,
            "chunk_size": args.chunk_size,
            "vocab": args.vocab,
            "params": sum(p.numel() for p in enc.parameters()),
            "bf16_autocast": args.bf16,
        },
        "baseline": "the same encoder and batch with gradient_checkpointing=False, same run",
        "rows": rows,
    }
    path = args.out or RESULTS / f"checkpointing_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=20000)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--single", nargs=2, type=int, metavar=("L", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc = _build(args, device)
    if args.single:  # child process of _single_step_rss: one step, print the peak RSS growth
        L, ckpt = args.single
        tokens = torch.randint(3, args.vocab, (args.batch_size, L), generator=torch.Generator().manual_seed(L))
        enc.gradient_checkpointing = bool(ckpt)
        lengths = torch.full((args.batch_size,), L)
        _step(enc, tokens, lengths, device, False)  # warm-up: one-time allocations (grads, thread pools)
        enc.zero_grad(set_to_none=False)
        before = rss_bytes()
        reset_peak()
        _step(enc, tokens, lengths, device, False)
        print(peak_bytes() - before)
        return {}
    rows = []
    for L in args.lengths:
        rows.append(measure(enc, L, args.batch_size, device, args.bf16, args.repeats, args.vocab))
        _write(args, enc, device, rows)
    if device.type == "cpu":
        for r in rows:
            for mode, ckpt in (("off", False), ("on", True)):
                r[mode]["peak_rss_growth_bytes"] = _single_step_rss(args, r["L"], ckpt)
            r["peak_rss_growth_ratio_on_over_off"] = (
                r["on"]["peak_rss_growth_bytes"] / r["off"]["peak_rss_growth_bytes"]
            )
    for r in rows:
        off, on = r["off"], r["on"]
        print(
            f"L={r['L']:5d}  saved MB off/on {off['saved_bytes'] / 2**20:8.1f} / {on['saved_bytes'] / 2**20:7.1f}"
            f"  (x{r['saved_bytes_ratio_on_over_off']:.3f})  step s off/on {off['step_seconds']:.3f} / "
            f"{on['step_seconds']:.3f} (x{r['step_time_ratio_on_over_off']:.2f})"
            f"  grad rel diff {r['grad_max_rel_diff']:.1e}"
        )
        if "peak_rss_growth_ratio_on_over_off" in r:
            print(
                f"         peak RSS growth MB off/on {off['peak_rss_growth_bytes'] / 2**20:8.1f} / "
                f"{on['peak_rss_growth_bytes'] / 2**20:7.1f}  (x{r['peak_rss_growth_ratio_on_over_off']:.3f})"
            )
    return _write(args, enc, device, rows)


if __name__ == "__main__":
    main()
