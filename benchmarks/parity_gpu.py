"""GPU parity of the Mamba-2 mixer: torch backend vs mamba_ssm backend vs ``mamba_ssm.Mamba2`` itself.

Same weights (``Mamba2.state_dict()`` loaded strictly into our mixer on each backend), same input, same
upstream gradient. Forward output, input gradient and the gradient of every parameter are compared with
a float64 reference (our torch backend in float64) and pairwise against ``Mamba2``; in float32 and
under bf16 autocast. Needs only torch + the mamba-ssm / causal-conv1d kernels (no scvi-tools).

Metrics per tensor: ``max_abs`` = max |a - b|; ``max_rel`` = max |a - b| / max |ref| (error relative to
the tensor's scale); ``norm_rel`` = ||a - b|| / ||ref||.

Run on the GPU box (see shared/gpu/README.md)::

    PYTHONPATH=/tmp/site:$PWD/src python benchmarks/parity_gpu.py --out $OUT/parity_gpu.json --ieee

``--ieee`` re-runs the float32 cases in a subprocess with ``TRITON_F32_DEFAULT=ieee`` (Triton's float32
``tl.dot`` defaults to TF32, which dominates the float32 error of the kernels) and merges the results.

Cost: on a fresh H100 the mamba-ssm Triton autotuning dominates (20-100 s per case, about 5 minutes for
the six default cases); ``MAMBA_DETERMINISTIC=1`` keeps one config per kernel (deterministic backward),
which cuts that to seconds. Last results: ``benchmarks/results/parity_gpu.json``.
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
from typing import Any

import torch

# (name, d_model, batch, seqlen, packed): seqlens not multiples of the chunk size (256)
CONFIGS = [
    ("d256_b4_L1000", 256, 4, 1000, False),
    ("d512_b2_L1500", 512, 2, 1500, False),
    ("d256_b2_L777_packed", 256, 2, 777, True),
]
# stated pass bounds on norm_rel / max_rel vs the float64 reference
TOLERANCES = {
    "fp32_torch_backend": {"norm_rel": 1e-5, "max_rel": 1e-5},
    "fp32_kernels_tf32": {"norm_rel": 5e-3, "max_rel": 1e-2},
    "fp32_kernels_ieee": {"norm_rel": 1e-5, "max_rel": 1e-5},
    "bf16_autocast": {"norm_rel": 3e-2, "max_rel": 6e-2},
    "kernel_backend_vs_Mamba2_fp32": {"norm_rel": 1e-5, "max_rel": 1e-5},
}
# the unfused kernel path (PyTorch conv + float32 gated norm around the SSD kernel) is a different float32
# computation feeding TF32 kernels: compared with Mamba2 under "fp32_kernels_tf32"


def _metrics(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    a, ref = a.double(), ref.double()
    diff = (a - ref).abs()
    scale = ref.abs().max().clamp_min(1e-30)
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "norm_rel": float((a - ref).norm() / ref.norm().clamp_min(1e-30)),
    }


def _run(module: torch.nn.Module, u: torch.Tensor, dout: torch.Tensor, seq_idx, autocast: bool) -> dict[str, Any]:
    u = u.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast(u.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = module(u, seq_idx=seq_idx)
    (y.to(dout.dtype) * dout).sum().backward()
    if u.device.type == "cuda":
        torch.cuda.synchronize()
    out = {"output": y.detach(), "grad_input": u.grad.detach()}
    for n, p in module.named_parameters():
        out[f"grad_{n}"] = p.grad.detach()
    return out


def _compare(res: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    per = {k: _metrics(res[k], ref[k]) for k in ref}
    worst = {m: max(v[m] for v in per.values()) for m in ("max_abs", "max_rel", "norm_rel")}
    worst_grad = {m: max(v[m] for k, v in per.items() if k.startswith("grad_")) for m in ("max_rel", "norm_rel")}
    return {
        "output": per["output"],
        "grad_input": per["grad_input"],
        "grads_params": {k[5:]: v for k, v in per.items() if k.startswith("grad_") and k != "grad_input"},
        "worst": worst,
        "worst_grad": worst_grad,
    }


def run_case(
    name: str, d_model: int, batch: int, seqlen: int, packed: bool, precision: str, dev: str = "cuda"
) -> dict[str, Any]:
    from mamba_ssm import Mamba2

    from genemamba_scvi.nn import Mamba2Mixer

    torch.manual_seed(0)
    kw = dict(d_state=64, d_conv=4, expand=2, headdim=64, chunk_size=256)
    ref = Mamba2(d_model, **kw, device=dev)
    mods = {
        "Mamba2": ref,
        "mamba_ssm_backend": Mamba2Mixer(d_model, backend="mamba_ssm", **kw).to(dev),
        "mamba_ssm_backend_unfused": Mamba2Mixer(d_model, backend="mamba_ssm", use_mem_eff_path=False, **kw).to(dev),
        "torch_backend": Mamba2Mixer(d_model, backend="torch", **kw).to(dev),
    }
    sd = ref.state_dict()
    for k, m in mods.items():
        if k != "Mamba2":
            m.load_state_dict(sd, strict=True)
    ref64 = Mamba2Mixer(d_model, backend="torch", **kw).to(dev).double()
    ref64.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
    # weights go back: our state dict into a fresh Mamba2
    back = Mamba2(d_model, **kw, device=dev)
    back.load_state_dict(mods["torch_backend"].state_dict(), strict=True)
    round_trip = all(torch.equal(back.state_dict()[k], v) for k, v in sd.items())

    g = torch.Generator(device=dev).manual_seed(1)
    u = torch.randn(batch, seqlen, d_model, device=dev, generator=g)
    dout = torch.randn(batch, seqlen, d_model, device=dev, generator=g)
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32, device=dev)
        for cut in (100, 260, 300, 611):  # boundaries inside and across 256-token chunks
            seq_idx[:, cut:] += 1
    autocast = precision == "bf16"
    t0 = time.perf_counter()
    r64 = _run(ref64, u.double(), dout.double(), seq_idx, autocast=False)
    results = {k: _run(m, u, dout, seq_idx, autocast) for k, m in mods.items()}
    case: dict[str, Any] = {
        "config": name,
        "d_model": d_model,
        "batch": batch,
        "seqlen": seqlen,
        "packed_seq_idx": packed,
        "precision": precision,
        "state_dict_round_trip_exact": round_trip,
        "vs_fp64": {k: _compare(v, r64) for k, v in results.items()},
        "vs_Mamba2": {k: _compare(v, results["Mamba2"]) for k, v in results.items() if k != "Mamba2"},
    }
    case["seconds"] = round(time.perf_counter() - t0, 2)
    return case


def _summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        for group in ("vs_fp64", "vs_Mamba2"):
            for impl, cmp in c[group].items():
                key = f"{c['precision']}|{group}|{impl}"
                cur = out.setdefault(key, {"output_max_abs": 0.0, "output_max_rel": 0.0, "grads_max_abs": 0.0})
                cur["output_max_abs"] = max(cur["output_max_abs"], cmp["output"]["max_abs"])
                cur["output_max_rel"] = max(cur["output_max_rel"], cmp["output"]["max_rel"])
                g_abs = max([cmp["grad_input"]["max_abs"]] + [v["max_abs"] for v in cmp["grads_params"].values()])
                cur["grads_max_abs"] = max(cur["grads_max_abs"], g_abs)
                cur["grads_max_rel"] = max(cur.get("grads_max_rel", 0.0), cmp["worst_grad"]["max_rel"])
                cur["worst_norm_rel"] = max(cur.get("worst_norm_rel", 0.0), cmp["worst"]["norm_rel"])
    return out


def _tolerance_key(key: str, ieee: bool) -> str:
    precision, group, impl = key.split("|")
    if precision == "bf16":
        return "bf16_autocast"
    if group == "vs_Mamba2" and impl == "mamba_ssm_backend":  # the same fused kernel call as Mamba2
        return "kernel_backend_vs_Mamba2_fp32"
    if group == "vs_fp64" and impl == "torch_backend":
        return "fp32_torch_backend"
    return "fp32_kernels_ieee" if ieee else "fp32_kernels_tf32"


def _checks(summary: dict[str, Any], ieee: bool) -> dict[str, Any]:
    out = {}
    for key, v in summary.items():
        tkey = _tolerance_key(key, ieee)
        tol = TOLERANCES[tkey]
        worst = max(v["output_max_rel"], v["grads_max_rel"])
        out[key] = {"tolerance": tkey, "worst_max_rel": worst, "pass": worst <= tol["max_rel"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "parity_gpu.json"))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--ieee", action="store_true", help="also run fp32 with TRITON_F32_DEFAULT=ieee (subprocess)")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # for dry runs of this script
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("parity_gpu.py needs a CUDA device")
    # full float32 in PyTorch's own GEMMs/convs (the torch backend); Triton's default is separate
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import mamba_ssm

    from genemamba_scvi.nn import causal_conv1d_available

    try:
        import causal_conv1d

        cc_version = getattr(causal_conv1d, "__version__", "?")
    except ImportError:
        cc_version = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None

    report: dict[str, Any] = {
        "what": "Mamba-2 mixer parity: torch backend vs mamba_ssm backend vs mamba_ssm.Mamba2 (same weights/input)",
        "reference": "our torch backend in float64 (vs_fp64); mamba_ssm.Mamba2 itself (vs_Mamba2)",
        "metrics": "max_abs=max|a-b|; max_rel=max|a-b|/max|ref|; norm_rel=||a-b||/||ref||",
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "mamba_ssm": getattr(mamba_ssm, "__version__", "?"),
        "causal_conv1d": cc_version,
        "fused_conv_path": causal_conv1d_available(),
        "triton_f32_default": os.environ.get("TRITON_F32_DEFAULT", "tf32 (Triton default)"),
        "tolerances": TOLERANCES,
        "cases": [],
    }
    for precision in args.precisions.split(","):
        for cfg in CONFIGS:
            t0 = time.perf_counter()
            try:
                case = run_case(*cfg, precision=precision, dev=args.device)
            except Exception as err:  # keep going: report what broke
                case = {"config": cfg[0], "precision": precision, "error": f"{type(err).__name__}: {err}"}
            report["cases"].append(case)
            w = case.get("vs_fp64", {})
            line = " ".join(f"{k}={v['worst']['max_rel']:.2e}" for k, v in w.items()) or case.get("error")
            print(f"[{precision}] {cfg[0]} ({time.perf_counter() - t0:.1f}s) worst max_rel vs fp64: {line}", flush=True)
            with open(args.out, "w") as fh:
                json.dump(report, fh, indent=1)
    report["summary"] = _summary([c for c in report["cases"] if "error" not in c])
    report["checks"] = _checks(report["summary"], os.environ.get("TRITON_F32_DEFAULT") == "ieee")

    if args.ieee:
        with tempfile.TemporaryDirectory() as tmp:
            sub_out = os.path.join(tmp, "ieee.json")
            env = dict(os.environ, TRITON_F32_DEFAULT="ieee", TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
            cmd = [sys.executable, __file__, "--out", sub_out, "--precisions", "fp32"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            print(proc.stdout[-4000:], proc.stderr[-4000:], flush=True)
            if proc.returncode == 0 and os.path.exists(sub_out):
                with open(sub_out) as fh:
                    sub = json.load(fh)
                report["fp32_triton_ieee"] = {
                    "cases": sub["cases"],
                    "summary": sub.get("summary", {}),
                    "checks": sub.get("checks", {}),
                }
            else:
                report["fp32_triton_ieee"] = {"error": f"subprocess rc={proc.returncode}"}

    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print("\nsummary (worst over configs; grads = input + every parameter):")
    for key, v in report["summary"].items():
        ok = "ok " if report["checks"][key]["pass"] else "OUT"
        print(
            f"  {ok} {key:50s} out max_abs {v['output_max_abs']:.2e} max_rel {v['output_max_rel']:.2e} | "
            f"grads max_abs {v['grads_max_abs']:.2e} max_rel {v['grads_max_rel']:.2e}"
        )
    for key, v in report.get("fp32_triton_ieee", {}).get("summary", {}).items():
        print(f"  ieee {key:50s} out max_rel {v['output_max_rel']:.2e} | grads max_rel {v['grads_max_rel']:.2e}")


if __name__ == "__main__":
    main()
