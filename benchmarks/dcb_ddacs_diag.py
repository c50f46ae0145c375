"""GPU diagnosis of ``ssd_dcb_ddacs`` (session 7's fused d(CB) + intra-chunk ddA) on real inputs.

Session 7 found non-finite gradients from the 24 x 512 encoder on a real 48-cell batch when the fused kernel was on,
while the kernel equalled mamba-ssm's on the test batches. (Session 9 found the cause with ``training_grad_check.py
--watch``: the reverse sum over the whole chunk below, ``dda``, hands a float32 remainder of later cells' sums to
the packing's zero-embedding pad cell, whose gradient each RMSNorm backward multiplies by 316; the training path now
sums per sequence, ``fused_ssd_bwd.reverse_sum_by_sequence``, and the kernel is the default.) This script runs the
encoder's backward on the same batch as ``training_grad_check.py`` with ``_SSD_BWD_DDA = "fused"``, and at every
layer's call compares the fused kernel (several launch shapes, and with the products taken in fp32) with mamba-ssm's
``_chunk_scan_bwd_dcb`` and ``_chunk_scan_bwd_ddAcs_stable`` on the same inputs: finiteness of inputs and outputs,
where the non-finite values are (chunk, position, head, sequence), and the largest differences. The first failing
chunk's inputs are saved (``--dump``) to reproduce it on the CPU.

Usage (GPU machine)::

    python benchmarks/dcb_ddacs_diag.py --out $OUT/dcb_ddacs_diag.json --dump $OUT/dcb_fail.pt
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from genemamba_scvi.nn import GeneMambaEncoder, fused_ssd_bwd  # noqa: E402
from training_grad_check import LENGTHS_NPY, _batch  # noqa: E402

SHAPES = [(64, 64, 2, False), (64, 32, 4, False), (32, 32, 4, False), (64, 64, 4, False), (64, 64, 2, True)]


def _nonfinite_where(t: torch.Tensor, limit: int = 12) -> list[list[int]]:
    idx = (~torch.isfinite(t)).nonzero()
    return idx[:limit].tolist()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dump", default=None)
    p.add_argument(
        "--whole",
        default=None,
        choices=["dda", "intra"],
        help="instead: at every layer's call run the whole SSD backward (ssd_varlen_bwd) with mamba-ssm's "
        "intra-chunk kernels and with ours (the session-7 d(CB)+ddA, or the one-pass intra), "
        "compare every output, and go on with ours",
    )
    a = p.parse_args(argv)
    from mamba_ssm.ops.triton import ssd_chunk_scan

    dev, vocab, t0 = "cuda", 32768, time.perf_counter()
    torch.manual_seed(0)
    enc = GeneMambaEncoder(vocab, d_model=512, n_layers=24, d_state=64, headdim=64, expand=2, chunk_size=256).to(dev)
    rng = np.random.default_rng(0)
    counts = np.load(LENGTHS_NPY)
    tp, cu = _batch(np.maximum(np.minimum(rng.choice(counts, 48), 2048), 1), vocab, dev, 1)
    calls: list[dict[str, Any]] = []
    dumped = [False]
    orig = fused_ssd_bwd.ssd_dcb_ddacs
    kmod = fused_ssd_bwd._kernel_module("_triton_ssd_bwd")

    def launch(x, dt, dA_cs, dy, CB, seq_idx, ddacs, bm, bn, warps, fp32):
        _, L, H, P = x.shape
        _, nchunks, G, Q, _ = CB.shape
        dcb = torch.empty(1, nchunks, G, Q, Q, dtype=torch.float32, device=x.device)
        kmod.ssd_dcb_ddacs_kernel[(-(-Q // bm) * -(-Q // bn), nchunks, G)](
            x, dy, CB, dt, dA_cs, seq_idx, dcb, ddacs, L, Q, P,
            x.stride(1), x.stride(2), dy.stride(1), dy.stride(2), CB.stride(1), CB.stride(2), CB.stride(3),
            CB.stride(4), dt.stride(1), dt.stride(2), dA_cs.stride(1), dA_cs.stride(2), dcb.stride(1), dcb.stride(2),
            dcb.stride(3), dcb.stride(4), ddacs.stride(1), ddacs.stride(2), HPG=H // G, HAS_SEQ=True,
            INTERPRET=fp32, BM=bm, BN=bn, BK=64, num_warps=warps, num_stages=2,
        )  # fmt: skip
        return dcb

    def wrapped(x, dt, dA_cs, dy, CB, seq_idx, ddacs):
        rec: dict[str, Any] = {"layer_call": len(calls), "L": int(x.shape[1]), "nchunks": int(CB.shape[1])}
        rec["inputs_finite"] = {
            n: bool(torch.isfinite(t).all())
            for n, t in (("x", x), ("dt", dt), ("dA_cs", dA_cs), ("dy", dy), ("CB", CB), ("ddacs", ddacs))
        }
        rec["dA_cs_min"] = float(dA_cs.min())
        rec["dy_absmax"] = float(dy.float().abs().max())
        want_dcb = ssd_chunk_scan._chunk_scan_bwd_dcb(x, dt, dA_cs, dy, seq_idx=seq_idx, ngroups=CB.shape[2])
        want_dda = ssd_chunk_scan._chunk_scan_bwd_ddAcs_stable(x, dt, dA_cs, dy, CB)
        rec["mamba_finite"] = [bool(torch.isfinite(want_dcb).all()), bool(torch.isfinite(want_dda).all())]
        rec["shapes"] = {}
        for bm, bn, warps, fp32 in SHAPES:
            z = torch.zeros_like(ddacs)
            dcb = launch(x, dt, dA_cs, dy, CB, seq_idx, z, bm, bn, warps, fp32)
            dda = z.flip([-1]).cumsum(-1).flip([-1])
            key = f"{bm}x{bn}w{warps}{'_fp32dot' if fp32 else ''}"
            r = {
                "dcb_finite": bool(torch.isfinite(dcb).all()),
                "dda_finite": bool(torch.isfinite(dda).all()),
                "raw_finite": bool(torch.isfinite(z).all()),
            }
            if r["dcb_finite"]:
                r["dcb_maxdiff"] = float((dcb - want_dcb).abs().max())
            else:
                r["dcb_nonfinite_at"] = _nonfinite_where(dcb[0])  # [chunk, g, m, n]
            if r["raw_finite"]:
                r["dda_maxdiff"] = float((dda - want_dda).abs().max())
                r["dda_scale"] = float(want_dda.abs().max())
            else:
                where = _nonfinite_where(z[0])  # [h, chunk, pos]
                r["raw_nonfinite_at"] = where
                r["n_raw_nonfinite"] = int((~torch.isfinite(z)).sum())
                c, q = where[0][1], where[0][2]
                tok = c * CB.shape[3] + q
                r["first_token"] = tok
                r["first_seq"] = int(seq_idx[0, tok]) if tok < x.shape[1] else None
                lo, hi = c * CB.shape[3], min((c + 1) * CB.shape[3], x.shape[1])
                r["chunk_seq_ids"] = torch.unique(seq_idx[0, lo:hi]).tolist()
                if a.dump and not dumped[0]:
                    dumped[0] = True
                    torch.save(
                        {
                            "x": x[:, lo:hi].cpu(),
                            "dy": dy[:, lo:hi].cpu(),
                            "dt": dt[:, :, c].cpu(),
                            "dA_cs": dA_cs[:, :, c].cpu(),
                            "CB": CB[:, c].cpu(),
                            "seq": seq_idx[:, lo:hi].cpu(),
                            "chunk": c,
                            "L": int(x.shape[1]),
                            "shape": key,
                        },
                        a.dump,
                    )
            rec["shapes"][key] = r
        calls.append(rec)
        print(json.dumps(rec)[:1200], flush=True)
        return orig(x, dt, dA_cs, dy, CB, seq_idx, ddacs)

    orig_whole = fused_ssd_bwd.ssd_varlen_bwd
    switch = {"dda": "_SSD_BWD_DDA", "intra": "_SSD_BWD_INTRA"}.get(a.whole or "", "")

    def whole(dy, x, dt, A, B, C, chunk_size, D, dt_bias, seq_idx, dt_softplus, dx, dB, dC):
        rec: dict[str, Any] = {
            "layer_call": len(calls),
            "dy_finite": bool(torch.isfinite(dy).all()),
            "dy_absmax": float(dy.float().abs().max()),
        }
        res = {}
        for mode in ("mamba", "fused"):
            setattr(fused_ssd_bwd, switch, mode)
            bufs = (torch.empty_like(dx), torch.empty_like(dB), torch.empty_like(dC))
            r = orig_whole(dy, x, dt, A, B, C, chunk_size, D, dt_bias, seq_idx, dt_softplus, *bufs)
            res[mode] = dict(zip(("ddt", "dA", "dD", "ddt_bias", "dx", "dB", "dC"), (*r, *bufs), strict=True))
        rec["finite"] = {m: {k: bool(torch.isfinite(v).all()) for k, v in r.items()} for m, r in res.items()}
        rec["rel"] = {
            k: float((res["fused"][k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-300))
            for k, v in res["mamba"].items()
        }
        rec["absmax"] = {k: float(v.double().abs().max()) for k, v in res["mamba"].items()}
        calls.append(rec)
        print(json.dumps(rec)[:1500], flush=True)
        for k, buf in zip(("dx", "dB", "dC"), (dx, dB, dC), strict=True):
            buf.copy_(res["fused"][k])
        return tuple(res["fused"][k] for k in ("ddt", "dA", "dD", "ddt_bias"))

    saved = fused_ssd_bwd._SSD_BWD_DDA, fused_ssd_bwd._SSD_BWD_INTRA
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "tokens": int(tp.numel()), "whole": a.whole}
    try:
        if a.whole:
            fused_ssd_bwd.ssd_varlen_bwd = whole
        else:
            fused_ssd_bwd._SSD_BWD_DDA = "fused"
            fused_ssd_bwd.ssd_dcb_ddacs = wrapped
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = enc.forward_packed(tp, cu)
            loss = h.float().square().mean()
        loss.backward()
        out["nonfinite_grads"] = [
            n for n, q in enc.named_parameters() if q.grad is not None and not torch.isfinite(q.grad).all()
        ][:20]
    finally:
        fused_ssd_bwd._SSD_BWD_DDA, fused_ssd_bwd._SSD_BWD_INTRA = saved
        fused_ssd_bwd.ssd_dcb_ddacs = orig
        fused_ssd_bwd.ssd_varlen_bwd = orig_whole
        out["calls"] = calls
        out["seconds"] = round(time.perf_counter() - t0, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
