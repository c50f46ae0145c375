"""GPU parity and timing of the fused Bi-Mamba layer (``nn.fused.mixer_both``) against the unfused path.

One Bi-Mamba layer (``BiMambaBlock.forward_packed``, prenorm, gated merge, d_state 64, headdim 64, chunk 256) on
packed real-length cells (lengths drawn from the shipped celltypist cells, top-2048), three ways:

- ``fused``: ``BiMambaBlock.fused_both = True`` (conv and gated norm of both directions read the ``T``-token
  projection; Triton kernels of this package around mamba-ssm's SSD scan);
- ``unfused``: the projection gathered into the ``[2T]`` row, then mamba-ssm's ``mamba_split_conv1d_scan_combined``;
- ``fp64``: the pure-torch backend in float64 (the reference).

**Parity**: output, input gradient and every parameter gradient of ``fused`` and ``unfused`` against ``fp64``
(``norm_rel`` = ||a - ref|| / ||ref||, ``max_rel`` = max|a - ref| / max|ref|), in float32 and bf16 autocast.
The pass bands are parity_gpu.py's: float32 kernels with TF32 dots 5e-3 / 1e-2, bf16 3e-2 / 6e-2.

**Timing**: the median of CUDA-event times of the layer forward (inference, no grad) and forward + backward
(bf16 autocast) at 48 cells (training batch) and 256 cells (inference batch), fused and unfused in the same
process on the same batches, alternating, after warm-up; the ratio is unfused / fused time.

Usage (GPU machine; see shared/gpu/README.md)::

    python benchmarks/fused_bimamba.py --out $OUT/fused_bimamba.json
    python benchmarks/fused_bimamba.py --sweep-conv --out $OUT/sweep_conv.json  # conv_both launch shapes and
                                                                                 # backward variants only
    python benchmarks/fused_bimamba.py --sweep-conv-ssd --out $OUT/sweep_conv_ssd.json  # conv inside the scan
    python benchmarks/fused_bimamba.py --sweep-ssd-gated --out $OUT/sweep_ssd_gated.json  # norm folded in the scan
    python benchmarks/fused_bimamba.py --sweep-ssd-bwd --out $OUT/sweep_ssd_bwd.json  # d(CB) + ddA in one pass
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genemamba_scvi.nn import GeneMambaConfig  # noqa: E402
from genemamba_scvi.nn.bimamba import BiMambaBlock, pack_cells  # noqa: E402

LENGTHS_NPY = ROOT / "benchmarks" / "data" / "celltypist_gene_counts.npy"
BANDS = {"float32": {"norm_rel": 5e-3, "max_rel": 1e-2}, "bf16": {"norm_rel": 3e-2, "max_rel": 6e-2}}


def _lengths(n_cells: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    counts = np.load(LENGTHS_NPY)
    return torch.from_numpy(np.minimum(rng.choice(counts, n_cells), k).astype(np.int64))


def _pack(lengths: torch.Tensor, dev: str):
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dev)
    return pack_cells(cu, int(cu[-1]))


def _metrics(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    a, ref = a.double(), ref.double()
    return {
        "norm_rel": float((a - ref).norm() / ref.norm().clamp_min(1e-30)),
        "max_rel": float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)),
    }


#: Layer paths: BiMambaBlock switches (fused_both and fused_both_training, fused_ssd, fused_conv_ssd, fused_merge).
VARIANTS = {
    "fused": (True, True, True, True),
    "fused_mamba_ssd": (True, False, False, True),
    "unfused": (False, False, False, False),
}


@contextlib.contextmanager
def _path(variant: str):
    """Run the layer on one of ``VARIANTS``; the class switches are restored afterwards."""
    names = ("fused_both", "fused_both_training", "fused_ssd", "fused_conv_ssd", "fused_merge")
    saved = [getattr(BiMambaBlock, n) for n in names]
    fused, fused_ssd, conv_ssd, merge = VARIANTS[variant]
    for n, v in zip(names, (fused, fused, fused_ssd, conv_ssd, merge)):
        setattr(BiMambaBlock, n, v)
    try:
        yield
    finally:
        for n, v in zip(names, saved):
            setattr(BiMambaBlock, n, v)


def _run(block: BiMambaBlock, x: torch.Tensor, pack, dout: torch.Tensor, variant: str, bf16: bool) -> dict:
    x = x.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    with _path(variant):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            y = block.forward_packed(x, pack)
        (y.to(dout.dtype) * dout).sum().backward()
    out = {"output": y.detach(), "grad_input": x.grad.detach()}
    out.update({f"grad_{n}": p.grad.detach() for n, p in block.named_parameters()})
    return out


def parity(d_model: int, n_cells: int, seed: int, dev: str) -> dict[str, Any]:
    torch.manual_seed(seed)
    cfg = GeneMambaConfig(d_model=d_model, d_state=64, headdim=64, chunk_size=256, backend="mamba_ssm")
    block = BiMambaBlock(config=cfg).to(dev)
    ref = BiMambaBlock(config=cfg.replace(backend="torch")).to(dev).double()
    ref.load_state_dict({k: v.double() for k, v in block.state_dict().items()})
    lengths = _lengths(n_cells, 2048, np.random.default_rng(seed))
    pack = _pack(lengths, dev)
    g = torch.Generator(device=dev).manual_seed(seed + 1)
    x = torch.randn(pack.n_tokens, d_model, device=dev, generator=g)
    dout = torch.randn(pack.n_tokens, d_model, device=dev, generator=g)
    r64 = _run(ref, x.double(), pack, dout.double(), "unfused", bf16=False)
    case: dict[str, Any] = {"d_model": d_model, "n_cells": n_cells, "n_tokens": pack.n_tokens}
    for prec, bf16 in (("float32", False), ("bf16", True)):
        for path in ("fused", "unfused"):
            res = _run(block, x, pack, dout, path, bf16=bf16)
            per = {k: _metrics(res[k], r64[k]) for k in r64}
            worst = {m: max(v[m] for v in per.values()) for m in ("norm_rel", "max_rel")}
            case[f"{path}_{prec}"] = {
                "per_tensor": per,
                "worst": worst,
                "pass": all(worst[m] <= BANDS[prec][m] for m in worst),
            }
        with torch.no_grad(), _path("fused"), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            y = block.forward_packed(x, pack)  # inference: the one-pass merge and the inference-only kernels
        worst = _metrics(y, r64["output"])
        case[f"fused_infer_{prec}"] = {"worst": worst, "pass": all(worst[m] <= BANDS[prec][m] for m in worst)}
    return case


def _layer_step(block: BiMambaBlock, x: torch.Tensor, pack, mode: str, variant: str) -> None:
    """One layer step (bf16 autocast): forward without grad (``"infer"``) or forward + backward (``"train"``)."""
    with _path(variant):
        if mode == "infer":
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                block.forward_packed(x, pack)
            return
        xx = x.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = block.forward_packed(xx, pack)
        y.float().square().mean().backward()


def _time(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return times


def timing(d_model: int, n_cells: int, mode: str, reps: int, dev: str) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = GeneMambaConfig(d_model=d_model, d_state=64, headdim=64, chunk_size=256, backend="mamba_ssm")
    block = BiMambaBlock(config=cfg).to(dev)
    rng = np.random.default_rng(7)
    batches = []
    for _ in range(3):  # rotate among batches: not one cached input
        pack = _pack(_lengths(n_cells, 2048, rng), dev)
        batches.append((pack, torch.randn(pack.n_tokens, d_model, device=dev)))
    n_tok = sum(b[0].n_tokens for b in batches) / len(batches)
    it = {"i": 0}

    def step(variant: str):
        pack, x = batches[it["i"] % len(batches)]
        it["i"] += 1
        _layer_step(block, x, pack, mode, variant)

    res: dict[str, Any] = {"d_model": d_model, "n_cells": n_cells, "mode": mode, "mean_real_tokens": n_tok}
    for v in VARIANTS:
        _time(lambda v=v: step(v), 5)  # warm-up (compiles)
    t: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(reps):  # alternate so that clocks and allocator state affect all alike
        for v in VARIANTS:
            t[v] += _time(lambda v=v: step(v), 1)
    for name in VARIANTS:
        med = float(np.median(t[name]))
        res[name] = {
            "median_ms": med,
            "ns_per_token": med * 1e6 / n_tok,
            "spread_ms": [float(np.percentile(t[name], 10)), float(np.percentile(t[name], 90))],
        }
    res["speedup_unfused_over_fused"] = res["unfused"]["median_ms"] / res["fused"]["median_ms"]
    res["speedup_fused_mamba_ssd_over_fused"] = res["fused_mamba_ssd"]["median_ms"] / res["fused"]["median_ms"]
    if mode == "train":
        for name in VARIANTS:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(name)
            torch.cuda.synchronize()
            res[name]["peak_activation_bytes_per_token"] = (torch.cuda.max_memory_allocated() - base) / n_tok
    return res


def profile(dev: str) -> None:
    """Kernel table (CUDA time) of 5 training and 5 inference steps of one layer, fused and unfused."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    cfg = GeneMambaConfig(d_model=512, d_state=64, headdim=64, chunk_size=256, backend="mamba_ssm")
    block = BiMambaBlock(config=cfg).to(dev)
    rng = np.random.default_rng(7)
    for mode, n_cells in (("train", 48), ("infer", 256)):
        pack = _pack(_lengths(n_cells, 2048, rng), dev)
        x = torch.randn(pack.n_tokens, 512, device=dev)
        for variant in VARIANTS:

            def step(mode=mode, x=x, pack=pack, variant=variant):
                _layer_step(block, x, pack, mode, variant)

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            print(f"=== {mode} {variant} tokens={pack.n_tokens}")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))


#: Launch shapes (tokens, channels, warps) of the "tokens" conv_both forward swept by ``--sweep-conv``.
CONV_TOK_SWEEP = ((16, 128, 4), (32, 128, 4), (64, 128, 4), (32, 256, 4), (64, 64, 4), (32, 128, 8), (64, 128, 8),
                  (128, 64, 4), (64, 256, 8))  # fmt: skip


def sweep_conv(
    dev: str, backward: bool = True, forward: bool = True, bwd_variants=None, n_cells: int = 256
) -> list[dict[str, Any]]:
    """Median time of conv_both forward and backward per launch configuration (T of an ``n_cells`` batch).

    The backward rows cover the variants ``bwd_variants`` of ``nn.fused._CONV_BWD_VARIANT`` (default: all of
    ``CONV_BWD_SWEEP_VARIANTS``; :func:`sweep_conv_bwd`).
    """
    import triton

    from genemamba_scvi.nn import fused

    rng = np.random.default_rng(3)
    pack = _pack(_lengths(n_cells, 2048, rng), dev)
    T, C, K = pack.n_tokens, 1152, 4
    full = torch.randn(T, 2192, device=dev, dtype=torch.bfloat16)
    xbc = full[:, 1024 : 1024 + C]
    w, b = torch.randn(C, K, device=dev), torch.randn(C, device=dev)
    dout = torch.randn(2 * T, C, device=dev, dtype=torch.bfloat16)
    rows = []
    seq = pack.seq_idx[0]
    variants = bwd_variants or CONV_BWD_SWEEP_VARIANTS
    if not forward:
        return sweep_conv_bwd(fused, xbc, w, b, pack.rev, seq, dout, pack.cu_seqlens, variants)
    for cfg in ((32, 128, 4), (64, 64, 4), (16, 256, 4), (64, 128, 8), (128, 64, 8), (32, 64, 2)):
        k = fused._kernels()
        out = torch.empty(2 * T, C, device=dev, dtype=torch.bfloat16)

        def fwd(cfg=cfg, out=out, k=k):
            k.conv_both_fwd_kernel[(fused._cdiv(2 * T, cfg[0]), fused._cdiv(C, cfg[1]))](
                xbc,
                w,
                b,
                pack.rev,
                seq,
                out,
                T,
                C,
                xbc.stride(0),
                w.stride(0),
                out.stride(0),
                K=K,
                HAS_BIAS=True,
                SILU=True,
                BLOCK_R=cfg[0],
                BLOCK_C=cfg[1],
                num_warps=cfg[2],
            )

        ms = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
        rows.append({"kernel": "fwd", "config": cfg, "ms": ms, "GBps": (T * C * 2 + 2 * T * C * 2) / ms / 1e6})
        print(rows[-1], flush=True)
    fused._CONV_BLOCK = (32, 128)
    ref = fused.conv_both(xbc, w, b, pack.rev, seq)
    saved = fused._CONV_FWD_VARIANT, fused._CONV_TOK_BLOCK
    for variant, cfg in [(v, c) for v in ("tokens", "lean") for c in CONV_TOK_SWEEP]:  # both rows of a token
        fused._CONV_FWD_VARIANT, fused._CONV_TOK_BLOCK = variant, cfg
        row = {"kernel": "fwd_tokens" if variant == "tokens" else "fwd_lean", "config": cfg}
        try:
            got = fused.conv_both(xbc, w, b, pack.rev, seq, cu_seqlens=pack.cu_seqlens)
            row["max_abs_diff_vs_rows"] = float((got.float() - ref.float()).abs().max())
            row["ms"] = triton.testing.do_bench(
                lambda: fused.conv_both(xbc, w, b, pack.rev, seq, cu_seqlens=pack.cu_seqlens),
                warmup=25, rep=100, return_mode="median",
            )  # fmt: skip
            row["GBps"] = (T * C * 2 + 2 * T * C * 2) / row["ms"] / 1e6
        except Exception as err:  # a shape Triton cannot compile
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(row, flush=True)
    fused._CONV_FWD_VARIANT, fused._CONV_TOK_BLOCK = saved
    return rows + (sweep_conv_bwd(fused, xbc, w, b, pack.rev, seq, dout, pack.cu_seqlens, variants) if backward else [])


# launch shapes of the conv backward: (rows, channels, row blocks per program) of "v2", "bf16dpre" and "tokens";
# (tokens, channels, token blocks per program, warps) of "fused"
SWEEP_BWD_TWO_PASS = ((32, 32, 8), (32, 64, 4), (16, 64, 8), (64, 32, 4), (32, 32, 16))
SWEEP_BWD_FUSED = ((32, 64, 4, 8), (32, 32, 4, 4), (16, 64, 4, 4), (32, 64, 4, 4), (64, 64, 4, 8), (32, 128, 4, 8))
# (rows, channels, row blocks per program, warps) of "rows2d"
SWEEP_BWD_2D = (
    (16, 64, 8, 4),
    (32, 64, 4, 4),
    (32, 64, 8, 4),
    (16, 128, 8, 4),
    (32, 128, 4, 8),
    (64, 64, 4, 8),
    (16, 64, 16, 4),
)


#: Backward variants swept by ``--sweep-conv`` (``--conv-bwd-variants`` narrows them).
CONV_BWD_SWEEP_VARIANTS = ("v2", "bf16dpre", "fused", "tokens", "span", "rows2d")
# (tokens, channels, token blocks per program, warps) of "tokens2d" (session 22 also swept "lean2d", since removed)
SWEEP_BWD_TOK2D = ((16, 64, 8, 8), (16, 64, 16, 8), (16, 64, 4, 8), (16, 128, 8, 8), (16, 64, 8, 4), (8, 128, 8, 4))
_SWEEP_BWD = {
    "fused": ("_CONV_BWD_FUSED_BLOCK", SWEEP_BWD_FUSED),
    "rows2d": ("_CONV_BWD_2D_BLOCK", SWEEP_BWD_2D),
    "tokens2d": ("_CONV_BWD_TOK2D_BLOCK", SWEEP_BWD_TOK2D),
}


def sweep_conv_bwd(fused, xbc, w, b, rev, seq, dout, cu, variants=CONV_BWD_SWEEP_VARIANTS) -> list[dict[str, Any]]:
    """Median time of conv_both's backward per variant (``fused._CONV_BWD_VARIANT``) and launch shape.

    Every row also holds the largest relative difference (``max|a - ref| / max|ref|``) of dx, dW and db from the
    default (``"v2"`` with its default shape) on the same tensors, so a variant that compiles differently from
    the interpreter shows here.
    """
    import triton

    names = ("_CONV_BWD_VARIANT", "_CONV_BWD_BLOCK", "_CONV_BWD_FUSED_BLOCK", "_CONV_BWD_2D_BLOCK")
    names += ("_CONV_BWD_TOK2D_BLOCK",)
    saved = {n: getattr(fused, n) for n in names}
    T = xbc.shape[0]
    xx = xbc.detach().requires_grad_()
    ww, bb = w.detach().requires_grad_(), b.detach().requires_grad_()
    y = fused.conv_both(xx, ww, bb, rev, seq, cu_seqlens=cu)  # cu: the "tokens" backward's cell bounds

    def grads():
        return torch.autograd.grad(y, [xx, ww, bb], dout, retain_graph=True)

    fused._CONV_BWD_VARIANT = "v2"
    ref = grads()  # the reference: "v2" with its default shape
    runs = [(v, cfg) for v in variants for cfg in _SWEEP_BWD.get(v, ("_CONV_BWD_BLOCK", SWEEP_BWD_TWO_PASS))[1]]
    rows = []
    try:
        for variant, cfg in runs:
            fused._CONV_BWD_VARIANT = variant
            setattr(fused, _SWEEP_BWD.get(variant, ("_CONV_BWD_BLOCK",))[0], cfg)
            got = grads()
            diff = {
                n: float((a.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30))
                for n, a, r in zip(("dx", "dw", "db"), got, ref)
            }
            ms = triton.testing.do_bench(grads, warmup=25, rep=100, return_mode="median")
            rows.append(
                {"kernel": "bwd", "variant": variant, "config": cfg, "ms": ms, "ns_per_token": ms * 1e6 / T}
                | {f"max_rel_vs_v2_{n}": v for n, v in diff.items()}
            )
            print(rows[-1], flush=True)
    finally:
        for n, v in saved.items():
            setattr(fused, n, v)
    return rows


def _sweep_shapes(
    space: dict | list[dict], config: dict, fn, ref: torch.Tensor, base_ms: float, base: str, check=None, rep: int = 200
) -> list[dict]:
    """Time ``fn`` at every launch shape of ``space`` (written into ``config``, restored after) against ``base``.

    ``check``: compared with ``ref`` instead of ``fn``'s output (when ``fn`` returns an intermediate form).
    """
    import triton

    saved = dict(config)
    rows = []
    shapes = space if isinstance(space, list) else [dict(zip(space, s)) for s in itertools.product(*space.values())]
    for shape in shapes:  # a product of the values of a dict, or a list of launch shapes
        row: dict[str, Any] = dict(shape)
        config.clear()
        config.update({**saved, **row})
        try:
            y = (check or fn)().float()
            row[f"rel_diff_vs_{base}"] = float((y - ref).norm() / ref.norm())
            row["ms"] = triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")
            row[f"speedup_vs_{base}"] = base_ms / row["ms"]
        except Exception as err:  # a shape Triton cannot compile (registers, shared memory)
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(row, flush=True)
    config.clear()
    config.update(saved)
    return rows


#: Launch shapes of ``ssd_varlen``'s forward swept by ``--sweep-ssd`` (the first sweep, ``ssd_sweep_h200.json``,
#: covered Q 32/64/128 x warps 4/8 x stages 1/2/3: Q 32, 4 warps, 2 stages best; 8 warps always slower).
SSD_SWEEP = {"Q": (16, 32), "num_warps": (4, 8), "num_stages": (2, 3), "heads": (1, 2, 4)}


def sweep_ssd(dev: str, n_cells: int = 256, space: dict | list[dict] | None = None) -> dict[str, Any]:
    """The SSD scan of both directions of ``n_cells`` cells: mamba-ssm's chunked scan against ``ssd_varlen``.

    Forward time per launch configuration of the one-pass kernel, forward + backward (mamba-ssm's backward in
    both), and the relative difference of the outputs (bf16 inputs, as under autocast).
    """
    import triton

    from genemamba_scvi.nn import fused
    from genemamba_scvi.nn.ssd import load_mamba_ssm_ops

    scan = load_mamba_ssm_ops()["chunk_scan"]
    rng = np.random.default_rng(3)
    pack = _pack(_lengths(n_cells, 2048, rng), dev)
    T, H, P, N = pack.n_tokens, 16, 64, 64
    L = 2 * T
    g = torch.Generator(device=dev).manual_seed(0)
    xbc = torch.randn(L, H * P + 2 * N, device=dev, generator=g).to(torch.bfloat16)
    dt = (torch.randn(L, H, device=dev, generator=g) - 2).to(torch.bfloat16)
    A = -torch.rand(H, device=dev, generator=g) * 4 - 0.5
    D, dt_bias = torch.randn(H, device=dev, generator=g), torch.randn(H, device=dev, generator=g) * 0.5
    cu = torch.cat([pack.cu_seqlens[:-1], pack.cu_seqlens + T])
    seq = pack.seq_idx_both.contiguous()
    x, B, C = torch.split(xbc, [H * P, N, N], dim=-1)

    def mamba(x=x, B=B, C=C, dt=dt):
        return scan(x.view(1, L, H, P), dt.unsqueeze(0), A, B.view(1, L, 1, N), C.view(1, L, 1, N), 256, D=D,
                    dt_bias=dt_bias, dt_softplus=True, seq_idx=seq)[0].view(L, H * P)  # fmt: skip

    def ours(xbc=xbc, dt=dt):
        return fused.ssd_varlen(xbc, dt, A, cu, seq, nheads=H, headdim=P, ngroups=1, d_state=N, D=D,
                                dt_bias=dt_bias, chunk_size=256)  # fmt: skip

    ref = mamba().float()
    res: dict[str, Any] = {"cells": n_cells, "rows": L, "n_sequences": cu.numel() - 1, "heads": H, "headdim": P,
                           "d_state": N}  # fmt: skip
    res["mamba_fwd_ms"] = triton.testing.do_bench(mamba, warmup=25, rep=200, return_mode="median")
    res["configs"] = _sweep_shapes(space or SSD_SWEEP, fused.SSD_FWD_CONFIG, ours, ref, res["mamba_fwd_ms"], "mamba")
    ok = [r for r in res["configs"] if "ms" in r]
    res["best"] = min(ok, key=lambda r: r["ms"]) if ok else None
    dy = torch.randn(L, H * P, device=dev, generator=g).to(torch.bfloat16)
    for name, fn, leaves in (("mamba", mamba, (x, B, C, dt)), ("ours", ours, (xbc, dt))):
        req = [t.detach().requires_grad_() for t in leaves]

        def train(fn=fn, req=req):
            torch.autograd.grad(fn(*req), req, dy)

        res[f"{name}_fwd_bwd_ms"] = triton.testing.do_bench(train, warmup=10, rep=100, return_mode="median")
    res["fwd_bwd_speedup"] = res["mamba_fwd_bwd_ms"] / res["ours_fwd_bwd_ms"]
    print({k: v for k, v in res.items() if k != "configs"}, flush=True)
    return res


#: Launch shapes of ``ssd_dcb_ddacs_kernel`` swept by ``--sweep-ssd-bwd``.
#: The first sweep (H200, 48 cells) covered BM 32/64/128 x BN 32/64 x warps 4/8 x stages 1/2: 64 x 32, 4 warps, 2
#: stages best (1.04 ms against mamba-ssm's 1.28 ms); 8 warps always slower.
SSD_BWD_SWEEP = {"BM": (16, 32, 64), "BN": (32, 64), "num_warps": (1, 2, 4), "num_stages": (2,)}


def sweep_ssd_bwd(dev: str, n_cells: int = 48) -> dict[str, Any]:
    """The intra-chunk d(CB) and ddA of the SSD backward at a training batch: mamba-ssm's two kernels against one.

    mamba-ssm: ``_chunk_scan_bwd_dcb`` + ``_chunk_scan_bwd_ddAcs_stable``; ours: ``ssd_dcb_ddacs`` plus the reverse
    cumulative sum that turns its output into the same ddA, per launch shape. Also the whole packed SSD backward
    (``ssd_varlen_bwd``) with each, and the relative differences of d(CB) and ddA from mamba-ssm's.
    """
    import triton
    from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state

    from genemamba_scvi.nn import fused_ssd_bwd

    rng = np.random.default_rng(3)
    pack = _pack(_lengths(n_cells, 2048, rng), dev)
    T, H, P, N, Q = pack.n_tokens, 16, 64, 64, 256
    L = 2 * T
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, L, H, P, device=dev, generator=g).to(torch.bfloat16)
    dy = torch.randn(1, L, H, P, device=dev, generator=g).to(torch.bfloat16)
    B, C = (torch.randn(1, L, 1, N, device=dev, generator=g).to(torch.bfloat16) for _ in range(2))
    dt = torch.randn(1, L, H, device=dev, generator=g) - 2
    A = -torch.rand(H, device=dev, generator=g) * 4 - 0.5
    D, dt_bias = torch.randn(H, device=dev, generator=g), torch.randn(H, device=dev, generator=g) * 0.5
    seq = pack.seq_idx_both.contiguous()
    dA_cs, dt_c = ssd_chunk_state._chunk_cumsum_fwd(dt, A, Q, dt_bias=dt_bias, dt_softplus=True)
    CB = ssd_bmm._bmm_chunk_fwd(C, B, Q, seq_idx=seq, output_dtype=torch.float32)

    def mamba():
        dcb = ssd_chunk_scan._chunk_scan_bwd_dcb(x, dt_c, dA_cs, dy, seq_idx=seq, ngroups=1)
        return dcb, ssd_chunk_scan._chunk_scan_bwd_ddAcs_stable(x, dt_c, dA_cs, dy, CB)

    def ours():
        ddacs = torch.zeros_like(dA_cs)
        dcb = fused_ssd_bwd.ssd_dcb_ddacs(x, dt_c, dA_cs, dy, CB, seq, ddacs)
        return dcb, ddacs.flip([-1]).cumsum(-1).flip([-1])

    ref_dcb, ref_ddA = mamba()
    res: dict[str, Any] = {"cells": n_cells, "rows": L, "chunks": int(dA_cs.shape[2]), "heads": H, "headdim": P,
                           "d_state": N, "chunk_size": Q, "default": dict(fused_ssd_bwd.DCB_DDA_CONFIG)}  # fmt: skip
    res["mamba_ms"] = triton.testing.do_bench(mamba, warmup=25, rep=200, return_mode="median")
    res["dcb_rel_diff"] = float((ours()[0] - ref_dcb).norm() / ref_dcb.norm())
    res["configs"] = _sweep_shapes(SSD_BWD_SWEEP, fused_ssd_bwd.DCB_DDA_CONFIG, ours, ref_ddA, res["mamba_ms"],
                                   "mamba", check=lambda: ours()[1], rep=60)  # fmt: skip
    ok = [r for r in res["configs"] if "ms" in r]
    res["best"] = min(ok, key=lambda r: r["ms"]) if ok else None
    saved = fused_ssd_bwd._SSD_BWD_DDA
    for mode in ("mamba", "fused"):
        fused_ssd_bwd._SSD_BWD_DDA = mode

        def bwd():
            dx, dB, dC = torch.empty_like(x), torch.empty_like(B), torch.empty_like(C)
            return fused_ssd_bwd.ssd_varlen_bwd(dy, x, dt, A, B, C, Q, D, dt_bias, seq, True, dx, dB, dC)

        res[f"ssd_varlen_bwd_ms_{mode}"] = triton.testing.do_bench(bwd, warmup=10, rep=100, return_mode="median")
    fused_ssd_bwd._SSD_BWD_DDA = saved
    res["ssd_varlen_bwd_speedup"] = res["ssd_varlen_bwd_ms_mamba"] / res["ssd_varlen_bwd_ms_fused"]
    print({k: v for k, v in res.items() if k != "configs"}, flush=True)
    return res


def sweep_ssd_gated(dev: str, space: dict | list[dict] | None = None) -> dict[str, Any]:
    """Inference, both directions of a 256-cell batch: scan, gated RMSNorm and ``out_proj`` two ways.

    Baseline (the unfolded path): ``dt`` gathered into the ``[2T]`` row, ``ssd_varlen``, then the gated-norm kernel
    and ``out_proj`` (``gated_norm_out_proj_both``). Folded: ``ssd_varlen_both`` (gate and per-row sums of squares
    in the scan, ``dt`` read at the token), then ``out_proj`` with the norm's weight folded in; the row scale that
    the merge applies is left out of the timing and put back for the comparison. Per launch shape of the scan.
    """
    import torch.nn.functional as F
    import triton

    from genemamba_scvi.nn import fused

    rng = np.random.default_rng(3)
    pack = _pack(_lengths(256, 2048, rng), dev)
    T, H, P, N, d = pack.n_tokens, 16, 64, 64, 512
    g = torch.Generator(device=dev).manual_seed(0)
    bf = torch.bfloat16
    xbc = torch.randn(2 * T, H * P + 2 * N, device=dev, generator=g).to(bf)
    dt = (torch.randn(T, H, device=dev, generator=g) - 2).to(bf)
    z = torch.randn(T, H * P, device=dev, generator=g).to(bf)
    A = -torch.rand(H, device=dev, generator=g) * 4 - 0.5
    D, dt_bias = torch.randn(H, device=dev, generator=g), torch.randn(H, device=dev, generator=g) * 0.5
    w_norm = (torch.rand(H * P, device=dev, generator=g) + 0.5).to(bf)
    w_out = (torch.randn(d, H * P, device=dev, generator=g) / (H * P) ** 0.5).to(bf)
    cu = torch.cat([pack.cu_seqlens[:-1], pack.cu_seqlens + T])
    seq = pack.seq_idx_both.contiguous()
    order = fused.ssd_order(cu)
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N, D=D, dt_bias=dt_bias, order=order)

    def unfolded():
        dt2 = torch.cat([dt, dt.index_select(0, pack.rev)])
        y = fused.ssd_varlen(xbc, dt2, A, cu, seq, chunk_size=256, **kw)
        return fused.gated_norm_out_proj_both(y, z, pack.rev, w_norm, w_out, None, eps=1e-5)

    def folded():
        gz, ssq = fused.ssd_varlen_both(xbc, dt, A, cu, z, **kw)
        return F.linear(gz, (w_out.float() * w_norm.float()).to(bf)), ssq

    def folded_scaled():
        out, ssq = folded()
        return out.float() * torch.rsqrt(ssq.sum(1, keepdim=True) / (H * P) + 1e-5)

    with torch.no_grad():
        ref = unfolded().float()
        res: dict[str, Any] = {"rows": 2 * T, "heads": H, "headdim": P, "d_state": N, "d_model": d}
        res["unfolded_ms"] = triton.testing.do_bench(unfolded, warmup=25, rep=200, return_mode="median")
        res["configs"] = _sweep_shapes(
            space or SSD_SWEEP, fused.SSD_FWD_CONFIG, folded, ref, res["unfolded_ms"], "unfolded", check=folded_scaled
        )
    ok = [r for r in res["configs"] if "ms" in r]
    res["best"] = min(ok, key=lambda r: r["ms"]) if ok else None
    print({k: v for k, v in res.items() if k != "configs"}, flush=True)
    return res


#: Launch shapes of ``ssd_conv_varlen`` swept by ``--sweep-conv-ssd``.
SSD_CONV_SWEEP = {"Q": (16, 32), "num_warps": (2, 4, 8), "num_stages": (2, 3)}


def sweep_conv_ssd(dev: str) -> dict[str, Any]:
    """Inference: conv + SSD of both directions of a 256-cell batch, in one kernel or as two.

    ``ssd_conv_varlen`` (the convolution inside the scan) per launch shape against ``conv_both`` then
    ``ssd_varlen`` at their configured shapes, same inputs (bf16, the projection's column slices), and the
    relative difference of the outputs.
    """
    import triton

    from genemamba_scvi.nn import fused

    rng = np.random.default_rng(3)
    pack = _pack(_lengths(256, 2048, rng), dev)
    T, H, P, N, K = pack.n_tokens, 16, 64, 64, 4
    C = H * P + 2 * N
    g = torch.Generator(device=dev).manual_seed(0)
    proj = torch.randn(T, H * P + C + H, device=dev, generator=g).to(torch.bfloat16)  # [z | xBC | dt]
    xbc, dt = proj[:, H * P : H * P + C], proj[:, H * P + C :]
    w = (torch.randn(C, K, device=dev, generator=g) / 2).to(torch.bfloat16)
    b = (torch.randn(C, device=dev, generator=g) / 4).to(torch.bfloat16)
    A = -torch.rand(H, device=dev, generator=g) * 4 - 0.5
    D, dt_bias = torch.randn(H, device=dev, generator=g), torch.randn(H, device=dev, generator=g) * 0.5 - 2
    kw = dict(nheads=H, headdim=P, ngroups=1, d_state=N, D=D, dt_bias=dt_bias)
    cu = pack.cu_seqlens
    cu_both = torch.cat([cu[:-1], cu + T])
    seq_both = pack.seq_idx_both.contiguous()
    order, order_both = fused.ssd_order(cu_both), fused.ssd_order(cu, both=True)

    def two_kernels():
        xbc2 = fused.conv_both(xbc, w, b, pack.rev, pack.seq_idx[0])
        dt2 = torch.cat([dt, dt.index_select(0, pack.rev)])
        return fused.ssd_varlen(xbc2, dt2, A, cu_both, seq_both, order=order, **kw)

    def one_kernel():
        return fused.ssd_conv_varlen(xbc, dt, w, b, A, cu, order=order_both, **kw)

    res: dict[str, Any] = {"tokens": T, "rows": 2 * T, "heads": H, "headdim": P, "d_state": N}
    with torch.no_grad():
        ref = two_kernels().float()
        res["two_kernels_ms"] = triton.testing.do_bench(two_kernels, warmup=25, rep=200, return_mode="median")
        res["configs"] = _sweep_shapes(
            SSD_CONV_SWEEP, fused.SSD_CONV_FWD_CONFIG, one_kernel, ref, res["two_kernels_ms"], "two_kernels"
        )
    ok = [r for r in res["configs"] if "ms" in r]
    res["best"] = min(ok, key=lambda r: r["ms"]) if ok else None
    print({k: v for k, v in res.items() if k != "configs"}, flush=True)
    return res


def _set_conv_bwd(spec: str) -> dict[str, Any]:
    """Set ``nn.fused``'s conv backward variant (and launch shape) from a name or a ``--sweep-conv`` JSON."""
    from genemamba_scvi.nn import fused

    if Path(spec).is_file():
        rows = [r for r in json.loads(Path(spec).read_text())["sweep_conv"] if r.get("kernel") == "bwd" and "ms" in r]
        best = min(rows, key=lambda r: r["ms"])
        variant, cfg = best["variant"], tuple(best["config"])
        if variant == "fused":
            fused._CONV_BWD_FUSED_BLOCK = cfg
        else:
            fused._CONV_BWD_BLOCK = cfg
        fused._CONV_BWD_VARIANT = variant
        return {"variant": variant, "config": cfg, "ms": best["ms"]}
    fused._CONV_BWD_VARIANT = spec
    return {"variant": spec}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fused_bimamba.json"))
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--profile", action="store_true", help="only print the kernel table of one layer's steps")
    p.add_argument("--sweep-conv", action="store_true", help="only time conv_both's launch configurations")
    p.add_argument("--sweep-ssd", action="store_true", help="only time ssd_varlen against mamba-ssm's scan")
    p.add_argument(
        "--ssd-configs",
        type=json.loads,
        default=None,
        help="--sweep-ssd(-gated): a JSON list of SSD_FWD_CONFIG launch shapes",
    )
    p.add_argument("--parity-only", action="store_true", help="only the parity against the float64 reference")
    p.add_argument("--conv-fwd-only", action="store_true", help="--sweep-conv: the forward shapes only")
    p.add_argument("--sweep-conv-ssd", action="store_true", help="only time ssd_conv_varlen against two kernels")
    p.add_argument("--sweep-ssd-gated", action="store_true", help="only time the folded gated norm against its pass")
    p.add_argument("--sweep-ssd-bwd", action="store_true", help="only time the d(CB) + ddA pass against mamba-ssm's")
    p.add_argument("--ssd-cells", type=int, default=256, help="--sweep-ssd: cells per batch (48: a training step)")
    p.add_argument("--conv-bwd-only", default="", help="--sweep-conv: only these backward variants (comma-separated)")
    p.add_argument("--conv-cells", type=int, default=256, help="--sweep-conv: cells per batch")
    p.add_argument(
        "--conv-bwd",
        default=None,
        help="conv backward for the timing/profile: a variant name, or a --sweep-conv JSON (its fastest backward)",
    )
    a = p.parse_args(argv)
    dev = "cuda"
    from genemamba_scvi.nn import fused

    conv_bwd = _set_conv_bwd(a.conv_bwd) if a.conv_bwd else {"variant": fused._CONV_BWD_VARIANT}
    print("conv backward:", conv_bwd, flush=True)
    if not torch.cuda.is_available():
        p.error("this benchmark times CUDA kernels: run it on a GPU machine")
    if a.profile:
        profile(dev)
        return
    sweeps = (
        (a.sweep_ssd, "sweep_ssd", functools.partial(sweep_ssd, n_cells=a.ssd_cells, space=a.ssd_configs)),
        (a.sweep_conv_ssd, "sweep_conv_ssd", sweep_conv_ssd),
        (a.sweep_ssd_gated, "sweep_ssd_gated", functools.partial(sweep_ssd_gated, space=a.ssd_configs)),
        (a.sweep_ssd_bwd, "sweep_ssd_bwd", sweep_ssd_bwd),
    )
    for flag, key, fn in sweeps:
        if flag:
            res = fn(dev)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), key: res}, indent=1))
            return
    if a.sweep_conv:
        bwd_only = tuple(v for v in a.conv_bwd_only.split(",") if v)
        sweep = sweep_conv(dev, backward=not a.conv_fwd_only, forward=not bwd_only, bwd_variants=bwd_only or None,
                           n_cells=a.conv_cells)  # fmt: skip
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        info = {
            "device": torch.cuda.get_device_name(),
            "triton": __import__("triton").__version__,
            "bwd_config_fields": {
                "v2": "BLOCK_R, BLOCK_C, ROW_ITERS (nn.fused._CONV_BWD_BLOCK)",
                "bf16dpre": "BLOCK_R, BLOCK_C, ROW_ITERS (nn.fused._CONV_BWD_BLOCK)",
                "fused": "BLOCK_R, BLOCK_C, ROW_ITERS, num_warps (nn.fused._CONV_BWD_FUSED_BLOCK)",
                "rows2d": "BLOCK_R, BLOCK_C, ROW_ITERS, num_warps (nn.fused._CONV_BWD_2D_BLOCK)",
                "tokens2d": "BLOCK_R, BLOCK_C, ROW_ITERS, num_warps (nn.fused._CONV_BWD_TOK2D_BLOCK)",
            },
        }
        Path(a.out).write_text(json.dumps({**info, "sweep_conv": sweep}, indent=1))
        return
    t0 = time.perf_counter()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bands": BANDS,
        "conv_bwd": conv_bwd,
        "ssd_fwd_config": dict(fused.SSD_FWD_CONFIG),
        "conv_fwd": {"variant": fused._CONV_FWD_VARIANT, "tokens": fused._CONV_TOK_BLOCK, "rows": fused._CONV_BLOCK},
        "parity": [],
        "timing": [],
    }
    for n_cells, mode in ((48, "train"), (256, "infer")) if not a.parity_only else ():
        r = timing(512, n_cells, mode, a.reps, dev)
        out["timing"].append(r)
        print(
            f"{mode} {n_cells} cells: fused {r['fused']['ns_per_token']:.1f} ns/token/layer, unfused "
            f"{r['unfused']['ns_per_token']:.1f}; speed-up {r['speedup_unfused_over_fused']:.3f}x",
            flush=True,
        )
        Path(a.out).write_text(json.dumps(out, indent=1))
    for d_model, n_cells in ((512, 16),):
        case = parity(d_model, n_cells, seed=d_model, dev=dev)
        out["parity"].append(case)
        print({k: (v["worst"], v["pass"]) for k, v in case.items() if isinstance(v, dict)}, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
