"""GPU benchmark: the SSD backward's ``dx`` pass with the heads side by side (``ssd_chunk_dx``) against mamba-ssm's.

At a real training step's shapes (``--cells`` of the shipped celltypist sample capped at 2048 genes, both directions
packed in one row; 16 heads of 64, d_state 64, chunk 256, bf16; ``ssd_chunk_bwd_bench.real_inputs``), times
``fused_ssd_bwd.ssd_chunk_dx`` at a few launch shapes against mamba-ssm's ``_chunk_scan_chunk_state_bwd_dx`` on the
same inputs (same run, CUDA events around ``--reps`` queued calls), compares ``dx``, ``ddt`` and ``dD`` with mamba-ssm's
(relative norm of the difference), and times the whole packed SSD backward (``ssd_varlen_bwd``) with either
``dx`` pass. Writes a JSON file.

Usage (GPU machine)::

    python benchmarks/ssd_dx_bench.py --out $OUT/ssd_dx_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from genemamba_scvi.nn import fused_ssd_bwd  # noqa: E402
from ssd_chunk_bwd_bench import _rel, _time, real_inputs  # noqa: E402

#: (BM, BK, warps, stages). Session 13 also timed a split decay and a bf16 copy of C B^T (since removed: slower).
SHAPES = [(64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (64, 32, 8, 3), (128, 64, 8, 2)]


def bench_cells(cells: int, shapes: list[tuple[int, ...]], reps: int) -> dict:
    """Times, errors and the whole SSD backward at one batch size; ``fused_ssd_bwd``'s switches restored after."""
    from mamba_ssm.ops.triton import ssd_combined

    inp = real_inputs(cells)
    x, dt_c, dA_cs, B, C, CB, dy, dstates, D, seq = (inp[k] for k in (
        "x", "dt_c", "dA_cs", "B", "C", "CB", "dy", "dstates", "D", "seq"))  # fmt: skip
    run = {"cells": cells, "L": inp["L"], "nchunks": inp["nchunks"], "configs": []}
    dx_m = torch.empty_like(x)

    def mamba():
        return ssd_combined._chunk_scan_chunk_state_bwd_dx(x, dt_c, dA_cs, B, CB, dy, dstates, D=D, seq_idx=seq,
                                                           dx=dx_m)  # fmt: skip

    want = tuple(t.clone() for t in mamba())
    run["mamba_ms"] = _time(mamba, reps)
    print(cells, "mamba", run["mamba_ms"], flush=True)
    saved_cfg, saved_dx = dict(fused_ssd_bwd.DX_CONFIG), fused_ssd_bwd._SSD_BWD_DX
    dx = torch.empty_like(x)

    def ours():
        return fused_ssd_bwd.ssd_chunk_dx(x, dt_c, dA_cs, B, CB, dy, dstates, D, seq, dx)

    try:
        for bm, bk, warps, stages in shapes:
            rec = {"BM": bm, "BK": bk, "num_warps": warps, "num_stages": stages}
            fused_ssd_bwd.DX_CONFIG = dict(rec)
            try:
                dx.fill_(float("nan"))
                got = ours()
                torch.cuda.synchronize()
                rec["finite"] = all(bool(torch.isfinite(t).all()) for t in got)
                rec["rel"] = {n: _rel(g, w) for n, g, w in zip(("dx", "ddt", "dD"), got, want, strict=True)}
                rec["ms"] = _time(ours, reps)
                rec["speedup_vs_mamba"] = run["mamba_ms"] / rec["ms"]
            except Exception as err:  # a launch shape the compiler refuses (registers, shared memory)
                rec["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            run["configs"].append(rec)
            print(cells, json.dumps(rec), flush=True)
        fused_ssd_bwd.DX_CONFIG = dict(saved_cfg)
        whole, grads = {}, {}
        bufs = {"dx": torch.empty_like(x), "dB": torch.empty_like(B), "dC": torch.empty_like(C)}

        def full():
            return fused_ssd_bwd.ssd_varlen_bwd(dy, x, inp["dt_raw"], inp["A"], B, C, inp["Q"], D, inp["dt_bias"],
                                                seq, True, bufs["dx"], bufs["dB"], bufs["dC"])  # fmt: skip

        for mode in ("mamba", "heads"):  # the whole packed SSD backward with either dx pass
            fused_ssd_bwd._SSD_BWD_DX = mode
            ddt, dA, dD, ddt_bias = full()
            grads[mode] = {**{k: v.clone() for k, v in bufs.items()}, "ddt": ddt, "dA": dA, "dD": dD,
                           "ddt_bias": ddt_bias}  # fmt: skip
            whole[mode + "_ms"] = _time(full, reps)
        whole["rel_heads_vs_mamba"] = {k: _rel(grads["heads"][k], v) for k, v in grads["mamba"].items()}
        whole["speedup"] = whole["mamba_ms"] / whole["heads_ms"]
        run["ssd_varlen_bwd"] = whole
        print(cells, "ssd_varlen_bwd", json.dumps(whole), flush=True)
    finally:
        fused_ssd_bwd.DX_CONFIG, fused_ssd_bwd._SSD_BWD_DX = saved_cfg, saved_dx
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--cells", default="48,24", help="comma-separated batch sizes")
    p.add_argument("--shapes", default=None, help="'BM,BK,warps,stages;...' (default: SHAPES)")
    a = p.parse_args(argv)
    shapes = SHAPES if not a.shapes else [tuple(int(v) for v in s.split(",")) for s in a.shapes.split(";")]
    t0 = time.perf_counter()
    out = {"device": torch.cuda.get_device_name(), "reps": a.reps, "default": dict(fused_ssd_bwd.DX_CONFIG),
           "runs": []}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        for cells in (int(c) for c in a.cells.split(",")):
            out["runs"].append(bench_cells(cells, shapes, a.reps))
            Path(a.out).write_text(json.dumps(out, indent=1))
    finally:
        out["seconds"] = round(time.perf_counter() - t0, 1)
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
