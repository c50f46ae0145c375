"""Host time of launching this package's Triton kernels, and where a training step's host time goes (GPU).

Two measurements, one JSON (``--out``):

- ``per_launch_us``: host microseconds per launch of a small kernel (``conv_both_bwd_dx_bounds_kernel`` on 16
  tokens, so the GPU never holds the host back), ``--n`` launches without synchronising, through Triton's own
  path (``kernel[grid](...)``); mamba-ssm's autotuned ``_chunk_cumsum_fwd`` wrapper (allocation and
  ``Autotuner.run``); a small torch op (``x.add_(1)``) as a reference, all measured in the same run.
- ``census`` (``--census``): every device-side operation one training step issues, counted by operation and by
  the source line that issued it (the innermost frame in this package or in mamba-ssm): aten operations seen by a
  ``TorchDispatchMode`` (views and allocations left out: they launch nothing) and Triton launches (wrapped
  ``JITFunction.run``). Runs on a CPU too (``--smoke``: a tiny model; the fused path only where kernels exist).
- ``gemm_us`` (``--gemm``): a weight-gradient GEMM with an fp32 output against a bf16 one and a cast, on packed
  lengths never met before and on one length met again (costs a library pays once per new shape).
- ``step_host_profile``: ``cProfile`` of the host side of one training step of the default GeneMamba path on a
  real top-2048 batch (``throughput.py``'s model and batches), by own time and by cumulative time, and the
  step's host enqueue time against its wall time.

Usage (GPU machine)::

    python benchmarks/launch_overhead.py --out $OUT/launch_overhead.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def per_launch(n: int) -> dict[str, float]:
    """Host microseconds per launch: a small kernel of ours through Triton's path, mamba-ssm's autotuned
    ``_chunk_cumsum_fwd`` wrapper (allocation + ``Autotuner.run``), a torch op."""
    from mamba_ssm.ops.triton import ssd_chunk_state

    from genemamba_scvi.nn._launch import _kernel_module

    k = _kernel_module("_triton_conv").conv_both_bwd_dx_bounds_kernel
    T, C = 16, 128
    dev = torch.device("cuda")
    w = torch.randn(C, 4, device=dev)
    seq = torch.zeros(T, dtype=torch.int32, device=dev)
    cu = torch.tensor([0, T], device=dev)
    dpre = torch.randn(2 * T, C, device=dev, dtype=torch.bfloat16)
    dx = torch.empty(T, C, device=dev, dtype=torch.bfloat16)
    args = (w, seq, cu, dpre, dx, T, C, w.stride(0), dx.stride(0))
    kw = dict(K=4, BLOCK_R=16, BLOCK_C=128, num_warps=4)
    dt = torch.rand(1, 64, 16, device=dev)
    A = -torch.rand(16, device=dev)

    def mamba_wrapper():  # allocates its outputs and launches one autotuned kernel
        ssd_chunk_state._chunk_cumsum_fwd(dt, A, 32)

    x = torch.zeros(16, device=dev)
    paths = (
        ("triton_jit_kernel", lambda: k[(1, 1)](*args, **kw)),
        ("mamba_autotuned_wrapper", mamba_wrapper),
        ("torch_add_", lambda: x.add_(1)),
    )
    out = {}
    for name, fn in paths:
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = round((time.perf_counter() - t0) / n * 1e6, 2)
        torch.cuda.synchronize()
    return out


def gemm_new_shapes(n: int) -> dict[str, dict[str, float]]:
    """Wall microseconds (synchronised) of a weight-gradient GEMM, ``[512, T] @ [T, 1024]`` bf16 -> fp32, by two
    routes: ``torch.mm(..., out_dtype=torch.float32)`` and a bf16 ``mm`` then a cast; each on ``n`` packed lengths
    ``T`` it has never met (disjoint for the two routes) and on one length met ``n`` times; medians."""
    import numpy as np

    dev = torch.device("cuda")

    def fp32_out(a, b):
        return torch.mm(a, b, out_dtype=torch.float32)

    def cast(a, b):
        return (a @ b).float()

    out: dict[str, dict[str, float]] = {}
    for i, (name, fn) in enumerate((("mm_out_dtype_fp32", fp32_out), ("mm_bf16_then_cast", cast))):
        res = {}
        for kind in ("new_lengths", "same_length"):
            times = []
            for j in range(n):
                T = 50_001 + 7 * j + 3 * i if kind == "new_lengths" else 60_000 + i
                x = torch.randn(T, 512, device=dev, dtype=torch.bfloat16)
                y = torch.randn(T, 1024, device=dev, dtype=torch.bfloat16)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(x.t(), y)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e6)
            res[kind] = round(float(np.median(times[1:])), 1)
        out[name] = res
    return out


def step_profile(top: int) -> dict:
    """cProfile of one training step's host side, and the step's enqueue vs wall time (medians of 5)."""
    import numpy as np

    import throughput as tp
    from train_ab import enqueue_and_wall_ms

    run = tp.Runner(tp.build_parser().parse_args(["--seed", "0"]))
    run.build()
    setting = dict(kind="real", n=2048, mode="train", cells=48)
    b = run.make_batch(setting, np.random.default_rng([0, 2048, 1, 48]))
    res: dict = {}
    for _ in range(3):
        run.step("genemamba", "train", b)
    enq, wall = zip(*(enqueue_and_wall_ms(run, "genemamba", b) for _ in range(5)))
    res["enqueue_ms_median"] = round(float(np.median(enq)), 2)
    res["wall_ms_median"] = round(float(np.median(wall)), 2)
    run._sync()
    prof = cProfile.Profile()
    prof.enable()
    run.step("genemamba", "train", b)
    prof.disable()
    run._sync()
    for order in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(order).print_stats(top)
        res[f"cprofile_by_{order}"] = s.getvalue().splitlines()[-top - 3 :]
    res["real_tokens"] = int(b["lens"].sum())
    return res


#: aten operations that launch no kernel (views, metadata, allocations)
_NO_LAUNCH = {
    "view", "_unsafe_view", "t", "transpose", "permute", "as_strided", "detach", "alias", "expand", "slice", "select",
    "unsqueeze", "squeeze", "split", "split_with_sizes", "unbind", "narrow", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "lift_fresh", "_reshape_alias", "reshape", "flatten", "diagonal", "unfold",
    "is_same_size", "_has_compatible_shallow_copy_type", "set_", "resize_", "sym_size", "sym_stride", "sym_numel",
    "_local_scalar_dense", "is_nonzero", "clone_if_needed", "view_as", "movedim", "contiguous", "chunk",
}  # fmt: skip


def _site(skip: str) -> str:
    """``file:line function`` of the innermost frame in this package or in mamba-ssm (else the outermost torch
    frame's caller): where a device operation was issued."""
    import traceback

    frames = traceback.extract_stack()[:-2]
    for f in reversed(frames):
        fn = f.filename
        if skip in fn:
            continue
        for root in ("genemamba_scvi/", "mamba_ssm/"):
            if root in fn:
                return f"{root}{fn.split(root, 1)[1]}:{f.lineno} {f.name}"
    return "autograd engine / torch"


def census(run, model: str, b: dict) -> dict:
    """Device operations of one training step of ``model`` on batch ``b`` by operation and by issuing line."""
    from collections import Counter

    import triton
    import triton.runtime.interpreter as triton_interpreter
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: Counter = Counter()
    sites: Counter = Counter()
    phase = {"now": "forward"}
    by_phase: Counter = Counter()

    def note(kind: str, name: str) -> None:
        ops[f"{kind}:{name}"] += 1
        sites[(f"{kind}:{name}", _site("launch_overhead.py"))] += 1
        by_phase[phase["now"]] += 1

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split("::")[-1]
            if name not in _NO_LAUNCH:
                note("aten", f"{name}.{func._overloadname}")
            return func(*args, **(kwargs or {}))

    jit_run = triton.runtime.jit.JITFunction.run
    interp = getattr(triton_interpreter, "InterpretedFunction", None)
    interp_run = interp.run if interp is not None else None

    def counted(orig):
        def run_(self, *args, **kw):
            note("triton", getattr(self.fn, "__name__", "?"))
            return orig(self, *args, **kw)

        return run_

    # the step of throughput.py, split so the phases can be told apart
    step = run._step
    orig_backward = torch.Tensor.backward

    def backward(t, *a, **kw):
        phase["now"] = "backward"
        return orig_backward(t, *a, **kw)

    triton.runtime.jit.JITFunction.run = counted(jit_run)
    if interp is not None:
        interp.run = counted(interp_run)
    torch.Tensor.backward = backward
    try:
        with Mode():
            step(model, "train", b)
    finally:
        triton.runtime.jit.JITFunction.run = jit_run
        if interp is not None:
            interp.run = interp_run
        torch.Tensor.backward = orig_backward
    run._sync()
    n_layers = run.cfg["n_layers"]
    return {
        "model": model,
        "n_layers": n_layers,
        "total": sum(ops.values()),
        "by_phase (optimizer counted in backward)": dict(by_phase),
        "by_op": dict(ops.most_common()),
        "by_site": [{"op": o, "site": s, "calls": c} for (o, s), c in sites.most_common()],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "launch_overhead.json"))
    p.add_argument("--n", type=int, default=2000, help="launches timed per path")
    p.add_argument("--top", type=int, default=30, help="cProfile rows kept")
    p.add_argument("--census", action="store_true", help="only the census of one step's device operations")
    p.add_argument("--gemm", action="store_true", help="only the weight-gradient GEMM on new and repeated lengths")
    p.add_argument("--smoke", action="store_true", help="with --census: tiny model on the CPU")
    a = p.parse_args(argv)
    if a.gemm:
        out = {"device": torch.cuda.get_device_name(0), "gemm_us": gemm_new_shapes(a.n)}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out), flush=True)
        return
    if a.census:
        import numpy as np

        import throughput as tp

        run = tp.Runner(tp.build_parser().parse_args(["--seed", "0"] + (["--smoke", "--cpu"] if a.smoke else [])))
        run.build()
        setting = dict(kind="real", n=128 if a.smoke else 2048, mode="train", cells=6 if a.smoke else 48)
        b = run.make_batch(setting, np.random.default_rng([0, setting["n"], 1, setting["cells"]]))
        models = ["genemamba"] + (["transformer_varlen"] if run.cuda and tp._has_varlen_attn() else [])
        for m in models:  # warm: autotuning and compilation stay out of the count
            run.step(m, "train", b)
        out = {"device": run.gpu_name, "census": {m: census(run, m, b) for m in models}}
        from genemamba_scvi.nn import fused_split

        out["mm_out_dtype"] = dict(fused_split._MM_OUT_DTYPE)  # which weight-gradient GEMMs took an fp32 output
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        for m, c in out["census"].items():
            print(m, c["total"], c["by_phase (optimizer counted in backward)"], out["mm_out_dtype"], flush=True)
            for r in c["by_site"][:40]:
                print(f"  {r['calls']:5d} {r['op'][:40]:40s} {r['site']}", flush=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit("launch_overhead.py needs a CUDA GPU (--census --smoke runs on a CPU)")
    out = {"device": torch.cuda.get_device_name(0), "per_launch_us": per_launch(a.n)}
    print(json.dumps(out), flush=True)
    out["step_host_profile"] = step_profile(a.top)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out["step_host_profile"].items() if "cprofile" not in k}), flush=True)


if __name__ == "__main__":
    main()
