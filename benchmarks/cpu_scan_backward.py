"""CPU training step: the torch backend's inter-chunk scan, indexed slices against ``unbind`` (session 26).

A user probe found a CPU training step's backward growing with the square of the batch's tokens: the scan over
chunk states (``nn.ssd._inter_chunk_scan``, used once a packed row has more than 256 chunks) read ``states[:, :, z]``
in a Python loop, and autograd gives every indexed slice a zero-filled gradient the size of the whole tensor. The
scan now walks ``states.unbind(2)``. This script times the forward and backward of the encoder (packed, as in
training) with each form in the same process, in alternating rounds, on random tokens of full top-2048 cells, and
checks that both give the same gradients.

Usage::

    python benchmarks/cpu_scan_backward.py                          # -> benchmarks/results/cpu_scan_backward.json
    python benchmarks/cpu_scan_backward.py --cells 4 8 --rounds 1 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def indexed_scan(states: torch.Tensor, chunk_a: torch.Tensor, sid: torch.Tensor | None) -> torch.Tensor:
    """The scan as it was before session 26 (indexed slices), the baseline of this benchmark."""
    carry = torch.exp(chunk_a)
    if sid is not None:
        carry = carry * (sid[:, 1:] == sid[:, :-1]).unsqueeze(1).to(carry.dtype)
    out = [states[:, :, 0]]
    for z in range(1, states.shape[2]):
        out.append(carry[:, :, z - 1, None, None] * out[-1] + states[:, :, z])
    return torch.stack(out, dim=2)


def _step(encoder: torch.nn.Module, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float, list]:
    encoder.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = encoder(tokens, lengths, packed=True)
    loss = out.float().pow(2).mean()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    grads = [p.grad.detach().clone() for p in encoder.parameters() if p.grad is not None]
    return t1 - t0, t2 - t1, grads


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from _common import write_json
    from genemamba_scvi.nn import GeneMambaEncoder, ssd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--genes", type=int, default=2048, help="tokens a cell (top-k, all cells full)")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_scan_backward.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = GeneMambaEncoder(1000, d_model=args.d_model, n_layers=args.n_layers, backend="torch")
    fixed = ssd._inter_chunk_scan
    rows = []
    for cells in args.cells:
        tokens = torch.randint(3, 1000, (cells, args.genes))
        lengths = torch.full((cells,), args.genes)
        times: dict[str, list[tuple[float, float]]] = {"indexed": [], "unbind": []}
        grads = {}
        for r in range(args.rounds):
            order = ("indexed", "unbind") if r % 2 == 0 else ("unbind", "indexed")
            for arm in order:
                ssd._inter_chunk_scan = indexed_scan if arm == "indexed" else fixed
                try:
                    fwd, bwd, g = _step(encoder, tokens, lengths)
                finally:
                    ssd._inter_chunk_scan = fixed
                times[arm].append((fwd, bwd))
                grads[arm] = g
        diff = max(float((a - b).abs().max()) for a, b in zip(grads["indexed"], grads["unbind"], strict=True))
        med = {arm: np.median(np.asarray(v), axis=0) for arm, v in times.items()}
        row = {
            "cells": cells,
            "tokens": cells * args.genes,
            "forward_s": {arm: float(m[0]) for arm, m in med.items()},
            "backward_s": {arm: float(m[1]) for arm, m in med.items()},
            "backward_ratio_unbind_over_indexed": float(med["unbind"][1] / med["indexed"][1]),
            "max_abs_grad_difference": diff,
        }
        print(row, flush=True)
        rows.append(row)
    result = {
        "benchmark": "cpu_scan_backward",
        "method": "encoder forward + backward, packed, random tokens of full cells; median over rounds of "
        "alternating order; both arms in one process",
        "settings": vars(args) | {"out": str(args.out)},
        "torch": torch.__version__,
        "results": rows,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
