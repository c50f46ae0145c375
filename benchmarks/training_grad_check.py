"""GPU check of the training levers at the benchmark's scale: every parameter gradient of one step, lever by lever.

The 24 x 512 encoder of ``throughput.py`` (bf16 autocast, loss ``mean(h^2)``) on two batches: 48 real cells capped
at 2048 genes, and 16 cells of 4096 tokens (a row of whole chunks, as ``throughput.py``'s prewarm uses). For each
batch, one backward on the same weights with each set of the session-7, -8 and -15 switches in ``CONFIGS``
(``fused_ssd_bwd._SSD_BWD_DDA``, ``fused._SPLIT_GRAD_IN_PLACE``, ``fused_ssd_bwd._SSD_BWD_INTRA``,
``fused_ssd_bwd._CB_IN_BF16``); every gradient is compared with session 6's path and checked finite. Then a few
AdamW steps on the default path (or ``--steps-config``), with the outputs checked finite after each.

Usage (GPU machine)::

    python benchmarks/training_grad_check.py --out $OUT/training_grad_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genemamba_scvi.nn import GeneMambaEncoder, fused, fused_ssd_bwd, pack_tokens  # noqa: E402

LENGTHS_NPY = ROOT / "benchmarks" / "data" / "celltypist_gene_counts.npy"
CONFIGS = {  # name -> (_SSD_BWD_DDA, _SPLIT_GRAD_IN_PLACE, _SSD_BWD_INTRA, _CB_IN_BF16)
    "session6": ("mamba", False, "mamba", False),
    "fused_dda": ("fused", False, "mamba", False),
    "split_in_place": ("mamba", True, "mamba", False),
    "fused_both": ("fused", True, "mamba", False),
    "fused_intra": ("mamba", True, "fused", False),
    "cb_bf16": ("fused", True, "mamba", True),
    "default": (
        fused_ssd_bwd._SSD_BWD_DDA,
        fused._SPLIT_GRAD_IN_PLACE,
        fused_ssd_bwd._SSD_BWD_INTRA,
        fused_ssd_bwd._CB_IN_BF16,
    ),
}
SWITCHES = (
    (fused_ssd_bwd, "_SSD_BWD_DDA"), (fused, "_SPLIT_GRAD_IN_PLACE"), (fused_ssd_bwd, "_SSD_BWD_INTRA"),
    (fused_ssd_bwd, "_CB_IN_BF16"),
)  # fmt: skip


def _set(values: tuple) -> None:
    for (mod, name), v in zip(SWITCHES, values, strict=True):
        setattr(mod, name, v)


def _batch(lens: np.ndarray, vocab: int, dev: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=dev).manual_seed(seed)
    lengths = torch.from_numpy(lens.astype(np.int64)).to(dev)
    tokens = torch.randint(3, vocab, (len(lens), int(lens.max())), device=dev, generator=g)
    tokens.masked_fill_(torch.arange(tokens.shape[1], device=dev)[None] >= lengths[:, None], 0)
    return pack_tokens(tokens, lengths)


LOSS = {"kind": "square"}


def _loss(h: torch.Tensor) -> torch.Tensor:
    """The check's loss of the encoder output ``h`` (``LOSS["kind"]``, see :func:`_grads`)."""
    if LOSS["kind"] == "proj":
        g = torch.Generator(device=h.device).manual_seed(7)
        return (h.float() * torch.randn(h.shape, device=h.device, generator=g)).mean()
    return h.float().square().mean()


@contextlib.contextmanager
def _restored_and_written(out: dict[str, Any], path: str, t0: float) -> Iterator[None]:
    """Run a block of configs; afterwards put the switches back and write ``out`` (with the seconds) to ``path``,
    also when the block fails."""
    saved = tuple(getattr(mod, name) for mod, name in SWITCHES)
    try:
        yield
    finally:
        _set(saved)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1, default=str))


def _grads(enc: GeneMambaEncoder, tp: torch.Tensor, cu: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """One backward. Loss ``"square"``: ``mean(h^2)`` (``throughput.py``'s; after the final RMSNorm its gradient is
    only the norm's eps term, ~1e-12 per entry); ``"proj"``: ``mean(h . w)`` with a fixed random ``w`` per token and
    feature (gradients of order 1 / T)."""
    enc.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = _loss(enc.forward_packed(tp, cu))
    loss.backward()
    return float(loss), {n: p.grad.detach().float().clone() for n, p in enc.named_parameters() if p.grad is not None}


def _anomaly(enc: GeneMambaEncoder, tp: torch.Tensor, cu: torch.Tensor, configs: list[str], out: dict) -> None:
    out["anomaly"] = {}
    for cname in configs:
        _set(CONFIGS[cname])
        try:
            with torch.autograd.detect_anomaly(check_nan=True):
                _, grads = _grads(enc, tp, cu)
            bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
            out["anomaly"][cname] = {"error": None, "nonfinite_grads": bad[:10]}
        except RuntimeError as err:
            out["anomaly"][cname] = {"error": str(err)[:2000]}
        print(cname, out["anomaly"][cname], flush=True)


class _Packed:
    """A saved tensor and a bit checksum of it taken when autograd saved it (``--watch``)."""

    __slots__ = ("__weakref__", "idx", "layer", "sum", "t")


def _bitsum(t: torch.Tensor) -> torch.Tensor:
    """Sum of the raw bits of ``t`` (int64, on its device): changes when any element's bits change."""
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return (t if t.dtype == as_int else t.view(as_int)).sum(dtype=torch.int64)


def _watch(enc: GeneMambaEncoder, tp: torch.Tensor, cu: torch.Tensor, cname: str) -> dict[str, Any]:
    """One backward of ``cname`` with two watches: every tensor autograd saved is checked, before every backward
    node runs, against the bits it had when it was saved (a kernel that writes out of its bounds into a saved
    tensor shows as a changed checksum, named by the node that ran just before); and every node's outputs are
    checked finite, with their largest magnitude (the growth of the gradient through the layers)."""
    import weakref

    _set(CONFIGS[cname])
    live: weakref.WeakSet = weakref.WeakSet()
    state: dict[str, Any] = {"layer": -1, "n": 0, "last": None, "order": 0}
    changed: list[dict] = []
    nodes: list[dict] = []

    def pack(t: torch.Tensor) -> _Packed:
        pk = _Packed()
        pk.t, pk.sum, pk.idx, pk.layer = t, _bitsum(t.detach()), state["n"], state["layer"]
        state["n"] += 1
        live.add(pk)
        return pk

    def unpack(pk: _Packed) -> torch.Tensor:
        return pk.t

    def pre(node, _grad_outputs) -> None:
        items = list(live)
        if items:
            now = torch.stack([_bitsum(pk.t.detach()) for pk in items])
            was = torch.stack([pk.sum for pk in items])
            bad = (now != was).nonzero().flatten().tolist()
            for i in bad:
                pk = items[i]
                changed.append({"before_node": state["order"], "node": node.name(), "after_node": state["last"],
                                "saved_idx": pk.idx, "saved_in_layer": pk.layer, "shape": list(pk.t.shape),
                                "dtype": str(pk.t.dtype)})  # fmt: skip
                pk.sum = _bitsum(pk.t.detach())  # report each change once

    def post(node, grad_inputs, _grad_outputs) -> None:
        rec: dict[str, Any] = {"order": state["order"], "node": node.name(), "outs": []}
        for g in grad_inputs:
            if g is None:
                rec["outs"].append(None)
                continue
            o: dict[str, Any] = {"shape": list(g.shape), "nonfinite": 0, "amax": 0.0}
            if g.numel():  # reductions only (no tensor of g's size), so the watch leaves the allocator's layout be
                lo, hi = (float(v) for v in torch.aminmax(g.detach()))
                o["amax"] = max(abs(lo), abs(hi))
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    o["nonfinite"] = int((~torch.isfinite(g)).sum())
                    if g.dim() >= 2 and not state.get("rows_done"):
                        state["rows_done"] = True
                        rows = (~torch.isfinite(g)).reshape(g.shape[0], -1).any(1).nonzero().flatten()
                        o["bad_rows"] = {"count": int(rows.numel()), "first": rows[:8].tolist(),
                                         "last": rows[-8:].tolist()}  # fmt: skip
            rec["outs"].append(o)
        nodes.append(rec)
        state["last"] = node.name()
        state["order"] += 1

    def tagged(fn, i):  # the block whose forward saves the tensors (blocks are called by method, not __call__)
        def run(*args, **kw):
            state["layer"] = i
            return fn(*args, **kw)

        return run

    for i, layer in enumerate(enc.layers):
        layer.mix_packed, layer.forward_packed = tagged(layer.mix_packed, i), tagged(layer.forward_packed, i)
    enc.zero_grad(set_to_none=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack), torch.autocast("cuda", dtype=torch.bfloat16):
            h = enc.forward_packed(tp, cu)
            state["layer"] = -2  # after the last layer
            loss = _loss(h)
    finally:
        for layer in enc.layers:
            del layer.mix_packed, layer.forward_packed  # back to the class's methods
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ != "AccumulateGrad":
            fn.register_prehook(lambda go, fn=fn: pre(fn, go))
            fn.register_hook(lambda gi, go, fn=fn: post(fn, gi, go))
        stack.extend(nf for nf, _ in fn.next_functions)
    n_saved = state["n"]
    loss.backward()
    if tp.is_cuda:
        torch.cuda.synchronize()
    bad_params = [n for n, p in enc.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    first_bad = next((r for r in nodes if any(o and o["nonfinite"] for o in r["outs"])), None)
    return {"config": cname, "saved_tensors": n_saved, "changed_saved_tensors": changed[:50],
            "n_changed": len(changed), "nonfinite_params": len(bad_params), "first_nonfinite_node": first_bad,
            "nodes": nodes}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_grad_check.json"))
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--steps-config", default="default", choices=sorted(CONFIGS), help="the path of the AdamW steps")
    p.add_argument("--loss", default="square", choices=["square", "proj"], help="see _grads")
    p.add_argument(
        "--fill-nan",
        action="store_true",
        help="fill every uninitialised tensor (torch.empty) with NaN "
        "(deterministic mode, warn only): a kernel that reads memory nobody wrote then gives NaN",
    )
    p.add_argument(
        "--anomaly",
        nargs="*",
        default=[],
        choices=sorted(CONFIGS),
        help="only run these configs' backward on the real batch under autograd's anomaly detection, "
        "which names the first backward function that returns a non-finite value",
    )
    p.add_argument(
        "--watch",
        nargs="*",
        default=[],
        choices=sorted(CONFIGS),
        help="only run these configs' backward on the real batch with the saved-tensor and node-output watches "
        "(_watch)",
    )
    p.add_argument("--configs", nargs="*", default=None, choices=sorted(CONFIGS), help="compare only these")
    p.add_argument("--batch", nargs="*", default=None, help="only these batches (real_top2048_48, full_4096_16)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("this check runs the CUDA kernels: run it on a GPU machine")
    dev, vocab, t0 = "cuda", 32768, time.perf_counter()
    LOSS["kind"] = a.loss
    if a.fill_nan:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = True
    torch.manual_seed(0)
    enc = GeneMambaEncoder(vocab, d_model=512, n_layers=a.layers, d_state=64, headdim=64, expand=2, chunk_size=256)
    enc = enc.to(dev)
    rng = np.random.default_rng(0)
    counts = np.load(LENGTHS_NPY)
    batches = {
        "real_top2048_48": _batch(np.maximum(np.minimum(rng.choice(counts, 48), 2048), 1), vocab, dev, 1),
        "full_4096_16": _batch(np.full(16, 4096), vocab, dev, 2),
    }
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "layers": a.layers,
        "batches": {},
        "fill_nan": a.fill_nan,
    }
    out["cu_seqlens_real"] = batches["real_top2048_48"][1].tolist()
    if a.anomaly:
        with _restored_and_written(out, a.out, t0):
            _anomaly(enc, *batches["real_top2048_48"], a.anomaly, out)
        return
    if a.watch:
        out["watch"] = {}
        with _restored_and_written(out, a.out, t0):
            for cname in a.watch:
                r = _watch(enc, *batches["real_top2048_48"], cname)
                out["watch"][cname] = r
                print(cname, "saved", r["saved_tensors"], "changed", r["n_changed"], r["changed_saved_tensors"][:3],
                      "nonfinite params", r["nonfinite_params"], "first bad node", r["first_nonfinite_node"],
                      flush=True)  # fmt: skip
        return
    configs = {k: v for k, v in CONFIGS.items() if a.configs is None or k in a.configs or k == "session6"}
    if a.batch is not None:
        batches = {k: v for k, v in batches.items() if k in a.batch}
    with _restored_and_written(out, a.out, t0):
        for bname, (tp, cu) in batches.items():
            res: dict[str, Any] = {"tokens": int(tp.numel())}
            grads = {}
            for cname, values in configs.items():
                _set(values)
                loss, grads[cname] = _grads(enc, tp, cu)
                bad = [n for n, g in grads[cname].items() if not torch.isfinite(g).all()]
                res[cname] = {"loss": loss, "nonfinite_grads": bad[:10], "n_nonfinite": len(bad)}
            ref = grads["session6"]
            for cname in configs:
                rels = {}
                for n, g in grads[cname].items():
                    d = float((g - ref[n]).norm() / ref[n].norm().clamp_min(1e-30))
                    rels[n] = d
                worst = sorted(rels.items(), key=lambda kv: -kv[1] if kv[1] == kv[1] else -1e30)[:5]
                res[cname]["worst_rel_vs_session6"] = worst
                res[cname]["median_rel_vs_session6"] = float(np.nanmedian(list(rels.values())))
            out["batches"][bname] = res
            print(bname, json.dumps(res)[:1500], flush=True)
        _set(CONFIGS[a.steps_config])
        opt = torch.optim.AdamW(enc.parameters(), lr=1e-4, fused=True)
        steps = []
        for i in range(a.steps):
            tp, cu = list(batches.values())[i % 2]
            loss, _ = _grads(enc, tp, cu)
            opt.step()
            finite = all(bool(torch.isfinite(q).all()) for q in enc.parameters())
            steps.append({"loss": loss, "params_finite": finite})
            print("step", i, steps[-1], flush=True)
        out["steps_config"] = a.steps_config
        out["default_steps"] = steps


if __name__ == "__main__":
    main()
