"""Interleaved A/B timing of training steps: GeneMamba settings and the packed transformer, same batches, same run.

``throughput.py`` times each setting's steps one after another; across its runs the setting-to-setting noise was
±4% (``NOTES_throughput.md``, section 11), larger than a 2-5% lever. Here every round runs one training step of
each arm on the same batch (the arms' order rotates from round to round), so slow drifts (clocks, heat, the
allocator's state) fall on all arms alike, and each arm's step is compared with the other arms' steps on the very
same cells. An arm is ``genemamba`` with a set of switches (``throughput.BLOCK_ABLATIONS`` names, or ``name=value``
switches as in ``throughput._switch``), or ``transformer_varlen`` (the packed transformer, the issue's baseline).

``--fresh``: every arm's step in every round gets its own newly drawn batch (cells from the same distribution), so no
arm meets a packed length it has met before, as in a real training run, where the packed length changes with every
batch: costs paid once per new shape (library heuristics, caches keyed on sizes) then count, which the reused
batches of the default method hide. Step times are then scaled to the mean token count (time per real token).

Reported per arm: median step time, real tokens per second over all timed rounds; per arm against the first:
the median of the per-round time ratios and its 95% bootstrap interval over rounds. Each GeneMamba arm's
gradients are checked finite after its first and last timed step.

Usage (GPU machine)::

    python benchmarks/train_ab.py --arms default ablation_mamba_dcb_ddA transformer_varlen --rounds 30 \\
        --out $OUT/train_ab.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput as tp  # noqa: E402


def _arm_switches(arm: str) -> tuple[str, dict[str, Any]]:
    """``(model, switches)`` of an arm name: ``default``, ``transformer_varlen``, an ablation name, or
    ``label:mod._NAME=value;...`` (values parsed as JSON, else kept as strings)."""
    if arm in ("default", "transformer_varlen"):
        return ("genemamba" if arm == "default" else arm), {}
    if arm in tp.BLOCK_ABLATIONS:
        return "genemamba", dict(tp.BLOCK_ABLATIONS[arm][0])
    _, _, spec = arm.partition(":")
    switches = {}
    for item in filter(None, spec.split(";")):
        k, _, v = item.partition("=")
        try:
            switches[k] = json.loads(v)
        except json.JSONDecodeError:
            switches[k] = v
    if not switches:
        raise SystemExit(f"unknown arm {arm!r}: default, transformer_varlen, an ablation or label:mod._NAME=value")
    return "genemamba", switches


@contextlib.contextmanager
def _switched(switches: dict[str, Any]) -> Iterator[None]:
    """Set an arm's switches for the block, then put the previous values back."""
    saved = {k: getattr(*tp._switch(k)) for k in switches}
    for k, v in switches.items():
        setattr(*tp._switch(k), v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(*tp._switch(k), v)


def enqueue_and_wall_ms(run: tp.Runner, model: str, b: dict[str, Any], mode: str = "train") -> tuple[float, float]:
    """Milliseconds the host takes to enqueue one step (``mode``: train or infer), and the step's wall time (GPU
    synchronised)."""
    run._sync()
    t0 = time.perf_counter()
    run.step(model, mode, b)
    t_host = time.perf_counter()
    run._sync()
    return (t_host - t0) * 1e3, (time.perf_counter() - t0) * 1e3


def _timed_step(run: tp.Runner, model: str, b: dict[str, Any], mode: str = "train") -> float:
    """Wall time in seconds of one step of ``model`` on batch ``b``, the GPU synchronised around it."""
    return enqueue_and_wall_ms(run, model, b, mode)[1] / 1e3


def _allocator_counts() -> dict[str, int]:
    """Cumulative counters of the CUDA caching allocator (device allocations, frees, retries)."""
    stats = torch.cuda.memory_stats()
    return {k: int(stats.get(k, 0)) for k in ("num_device_alloc", "num_device_free", "num_alloc_retries")}


def _grads_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def trace_gaps(trace: dict[str, Any], top: int = 15) -> dict[str, Any]:
    """Where a profiled step's GPU sat idle, from a ``torch.profiler`` Chrome trace.

    Device operations (kernels, memsets, copies) are taken in start order; an idle interval before one counts
    as *launch-bound* when the operation was launched (its runtime call, matched by correlation id) after the
    GPU had run out of work, and as *queued* otherwise (device-side latency between queued kernels). Each
    interval is put in the ``phase:*`` annotation (``throughput.Runner._step``) that holds its launch.
    """
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e]

    def span(e: dict) -> tuple[float, float]:
        return float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))

    dev = sorted(
        (*span(e), e.get("name", "?"), e.get("args", {}).get("correlation"))
        for e in ev
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    launch = {
        e["args"]["correlation"]: float(e["ts"])
        for e in ev
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    phases = sorted(
        (*span(e), e["name"].removeprefix("phase:"))
        for e in ev
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("phase:")
    )
    if not dev:
        return {"error": "no device events in the trace"}
    cpu_t0 = min(float(e["ts"]) for e in ev if e.get("cat") in ("cpu_op", "user_annotation"))

    def phase_of(t: float | None) -> str:
        for a, b, name in phases:
            if t is not None and a <= t <= b:
                return name
        return "other"

    busy_end = dev[0][1]
    gaps = []
    by_phase: dict[str, dict[str, float]] = {}
    for t0, t1, name, corr in dev[1:]:
        if t0 > busy_end:
            lt = launch.get(corr)
            bound = lt is not None and lt >= busy_end - 1.0
            ph = phase_of(lt)
            d = by_phase.setdefault(ph, {"launch_bound_us": 0.0, "queued_us": 0.0, "n": 0})
            d["launch_bound_us" if bound else "queued_us"] += t0 - busy_end
            d["n"] += 1
            gaps.append((t0 - busy_end, name[:80], ph, bound))
        busy_end = max(busy_end, t1)
    by_next: dict[str, float] = {}
    for g, name, _, bound in gaps:
        if bound:
            by_next[name] = by_next.get(name, 0.0) + g
    span = busy_end - dev[0][0]
    busy = sum(t1 - t0 for t0, t1, _, _ in dev)  # (overlap between streams counted twice; one stream here)
    return {
        "lead_us": round(dev[0][0] - cpu_t0, 1),
        "device_span_us": round(span, 1),
        "device_busy_us": round(busy, 1),
        "idle_us": round(sum(g[0] for g in gaps), 1),
        "idle_launch_bound_us": round(sum(g[0] for g in gaps if g[3]), 1),
        "n_idle_intervals": len(gaps),
        "idle_by_phase": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in by_phase.items()},
        "phase_spans_us": {name: round(b - a, 1) for a, b, name in phases},
        "largest_gaps": [
            {"us": round(g, 1), "next": n, "phase": ph, "launch_bound": bd} for g, n, ph, bd in sorted(gaps)[::-1][:top]
        ],
        "launch_bound_by_next_op": {k: round(v, 1) for k, v in sorted(by_next.items(), key=lambda kv: -kv[1])[:top]},
    }


def _device_ops(trace: dict[str, Any]) -> list[tuple[float, str, int]]:
    """``(total µs, name, calls)`` of every device operation (kernel, memset, copy) of a trace, largest first.

    (Taken from the trace, not from ``key_averages()``: with CPU activity profiled too, its device totals also
    credit the CPU-side annotations and autograd nodes with their kernels' time.)
    """
    agg: dict[str, list[float]] = {}
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            a = agg.setdefault(str(e.get("name", "?"))[:90], [0.0, 0])
            a[0] += float(e.get("dur", 0))
            a[1] += 1
    return sorted(((t, n, int(c)) for n, (t, c) in agg.items()), reverse=True)


def _host_view(run: tp.Runner, model: str, b: dict[str, Any]) -> dict[str, Any]:
    """Host time to enqueue one step against its wall time, and the host synchronisations inside it."""
    import traceback
    import warnings

    enqueue_ms, wall_ms = enqueue_and_wall_ms(run, model, b)
    syncs: dict[str, int] = {}
    stacks: dict[str, list[str]] = {}

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # called while the stack is live
        if "synchroniz" in str(message).lower():
            where = f"{Path(filename).name}:{lineno}"
            syncs[where] = syncs.get(where, 0) + 1
            frames = [f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno} {f.name}" for f in traceback.extract_stack()]
            stacks.setdefault(where, frames[:-1][-10:])

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode(1)
        try:
            run.step(model, "train", b)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        run._sync()
    return {"enqueue_ms": round(enqueue_ms, 2), "wall_ms": round(wall_ms, 2), "host_syncs": syncs,
            "host_sync_stacks": stacks}  # fmt: skip


def _profile(run: tp.Runner, arms: dict, names: list[str], b: dict[str, Any], trace_dir: Path | None) -> dict[str, Any]:
    """GPU time by kernel of one training step of each arm on batch ``b`` (torch.profiler: the top 30 and every
    device operation), where the GPU sat idle in it (:func:`trace_gaps`), the host's share (:func:`_host_view`), and
    the aten operations by the Python lines that launched them (:func:`_aten_by_stack`, from one more step)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    out = {}
    for arm in names:
        model, switches = arms[arm]
        with _switched(switches):
            run.step(model, "train", b)
            run._sync()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run.step(model, "train", b)
                run._sync()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            trace = json.loads(path.read_text())
            if trace_dir is not None:
                import gzip

                trace_dir.mkdir(parents=True, exist_ok=True)
                (trace_dir / f"trace_{arm}.json.gz").write_bytes(gzip.compress(path.read_bytes()))
        rows = _device_ops(trace)
        with _switched(switches):  # the same step unprofiled: its wall time against the kernels' sum
            wall_ms = _timed_step(run, model, b) * 1e3
            host = _host_view(run, model, b)
        gpu_ms = sum(r[0] for r in rows) / 1e3
        with _switched(switches):  # which Python lines launch the small operations (a separate, slower step)
            config = getattr(torch._C._profiler, "_ExperimentalConfig", None)  # verbose: else the stacks stay empty
            verbose = {"experimental_config": config(verbose=True)} if config is not None else {}
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                         **verbose) as prof_s:  # fmt: skip
                run.step(model, "train", b)
                run._sync()
        out[arm] = {
            "gpu_time_ms": round(gpu_ms, 2),
            "all_device_ops": [{"us": round(t), "calls": c, "name": n} for t, n, c in rows],
            "aten_ops_by_stack": _aten_by_stack(prof_s),
            "wall_ms_unprofiled": round(wall_ms, 2),
            "wall_minus_gpu_ms": round(wall_ms - gpu_ms, 2),
            "device_ops_per_step": int(sum(r[2] for r in rows)),  # kernels, memsets and copies
            "host": host,
            "gaps": trace_gaps(trace),
            "top_kernels": [{"us": round(t), "calls": c, "name": n} for t, n, c in rows[:30]],
        }
    return out


def _aten_by_stack(prof: Any, top: int = 60) -> list[dict[str, Any]]:
    """aten operations with device time of their own, grouped by operator and the Python lines that called it.

    Our code's and mamba-ssm's frames only (``genemamba_scvi``, ``mamba_ssm``, the benchmark), innermost first: the
    reductions, fills and copies a step launches, and where from.
    """
    rows = []
    for e in prof.key_averages(group_by_stack_n=12):
        us = float(getattr(e, "self_device_time_total", 0.0) or 0.0)
        if not e.key.startswith("aten::") or us <= 0:
            continue
        stack = [f for f in (e.stack or []) if re.search(r"genemamba_scvi|mamba_ssm|throughput|train_ab", f)]
        rows.append({"op": e.key, "us": round(us, 1), "calls": int(e.count), "stack": [s[-110:] for s in stack[:4]]})
    return sorted(rows, key=lambda r: -r["us"])[:top]


def _paired(times: dict[str, list[float]], arm: str, ref: str, rng: np.random.Generator) -> dict[str, float]:
    r = np.asarray(times[arm]) / np.asarray(times[ref])  # per-round step-time ratio (same batch)
    boot = np.median(rng.choice(r, size=(2000, len(r)), replace=True), axis=1)
    return {
        "time_ratio_median": float(np.median(r)),
        "time_ratio_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "speedup_vs_ref": float(1.0 / np.median(r)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=["default", "transformer_varlen"])
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (one step of every arm each)")
    p.add_argument("--warmup-rounds", type=int, default=2)
    p.add_argument("--batches", type=int, default=8, help="distinct batches, used in turn")
    p.add_argument("--k", type=int, default=2048, help="cap on genes per cell (top-k); --full: each cell's length")
    p.add_argument("--full", action="store_true", help="full-length cells of --k tokens (as throughput.py's)")
    p.add_argument("--cells", type=int, default=48)
    p.add_argument("--mode", choices=("train", "infer"), default="train", help="training steps or inference passes")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_ab.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="a new batch for every arm and round (never-seen lengths)")
    p.add_argument("--profile", action="store_true", help="after the rounds: GPU time by kernel, one step per arm")
    p.add_argument("--profile-arms", nargs="*", default=None, help="arms to profile (default: every arm)")
    p.add_argument("--trace-dir", default=None, help="with --profile: also write each arm's Chrome trace (gzip) here")
    a = p.parse_args(argv)
    run = tp.built_runner(a.seed, a.smoke)
    arms = {arm.partition(":")[0] if ":" in arm else arm: _arm_switches(arm) for arm in a.arms}  # label: arm
    if any(m == "transformer_varlen" for m, _ in arms.values()) and not (run.cuda and tp._has_varlen_attn()):
        raise SystemExit("transformer_varlen needs CUDA and torch.nn.attention.varlen")
    setting = dict(kind="full" if a.full else "real", n=min(a.k, 128) if a.smoke else a.k, mode=a.mode,
                   cells=6 if a.smoke else a.cells)  # fmt: skip
    rng = np.random.default_rng([a.seed, setting["n"], 1, setting["cells"]])
    batches = [run.make_batch(setting, rng) for _ in range(a.batches)]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    finite: dict[str, list[bool]] = {arm: [] for arm in arms}
    names = list(arms)
    t_start = time.perf_counter()
    arm_tok: dict[str, list[int]] = {arm: [] for arm in arms}
    alloc: dict[str, dict[str, int]] = {arm: {} for arm in arms}
    enqueue: dict[str, list[float]] = {arm: [] for arm in arms}  # host ms to enqueue each timed step
    for rnd in range(a.warmup_rounds + a.rounds):
        b = batches[rnd % len(batches)]
        order = names[rnd % len(names) :] + names[: rnd % len(names)]  # rotate who goes first
        for arm in order:
            if a.fresh:
                b = run.make_batch(setting, rng)
            model, switches = arms[arm]
            with _switched(switches):
                before = _allocator_counts() if run.cuda else None
                enq_ms, wall_ms = enqueue_and_wall_ms(run, model, b, a.mode)
                dt = wall_ms / 1e3
                if before is not None and rnd >= a.warmup_rounds:
                    after = _allocator_counts()
                    for key in after:
                        alloc[arm][key] = alloc[arm].get(key, 0) + after[key] - before[key]
                last = rnd in (a.warmup_rounds, a.warmup_rounds + a.rounds - 1)
                if a.mode == "train" and model == "genemamba" and last:
                    finite[arm].append(_grads_finite(run.mamba))
            if rnd >= a.warmup_rounds:
                times[arm].append(dt)
                enqueue[arm].append(enq_ms)
                arm_tok[arm].append(int(b["lens"].sum()))
        if rnd == a.warmup_rounds - 1:
            print(f"warm-up done in {time.perf_counter() - t_start:.0f} s", flush=True)
    tok = [int(batches[r % len(batches)]["lens"].sum()) for r in range(a.warmup_rounds, a.warmup_rounds + a.rounds)]
    times_raw = {arm: list(v) for arm, v in times.items()}
    if a.fresh:  # each arm's own batches: step times scaled to the mean token count, tokens/s from its own tokens
        mean_tok = float(np.mean([t for v in arm_tok.values() for t in v]))
        times = {arm: [t * mean_tok / n for t, n in zip(times[arm], arm_tok[arm])] for arm in arms}
    brng = np.random.default_rng(1)
    out: dict[str, Any] = {
        "device": run.gpu_name,
        "setting": {**setting, "rounds": a.rounds, "batches": a.batches, "seed": a.seed, "fresh": a.fresh},
        "model_cfg": run.cfg,
        "method": "interleaved rounds, one step per arm per round, arm order rotated; "
        + (
            "a new batch for every arm and round, times scaled to the mean token count"
            if a.fresh
            else "the same batch for every arm of a round"
        ),
        "arms": {},
    }
    ref = names[0]
    for arm in names:
        t = np.asarray(times[arm])
        rec = {
            "switches": arms[arm][1],
            "model": arms[arm][0],
            "step_time_s_median": float(np.median(t)),
            "real_tokens_per_s": float((np.sum(arm_tok[arm]) if a.fresh else np.sum(tok)) / np.sum(times_raw[arm])),
            "grads_finite": finite[arm] or None,
            "step_times_s": [round(x, 5) for x in times_raw[arm]],  # per timed round, unscaled
            "real_tokens": arm_tok[arm],
            # host ms to enqueue each timed step (to its return, before the final synchronisation): near the step's
            # wall time, the host (or a synchronisation inside the step) sets the pace, not the GPU
            "enqueue_ms": [round(x, 2) for x in enqueue[arm]],
            # the caching allocator's calls to cudaMalloc / cudaFree and its retries (free-all-and-retry), summed
            # over the timed rounds: whether alternating with another model's shapes makes it go to the driver
            "allocator": alloc[arm] or None,
        }
        if arm != ref:
            rec[f"vs_{ref}"] = _paired(times, arm, ref, brng)
        out["arms"][arm] = rec
        print(arm, json.dumps(rec), flush=True)
    if "transformer_varlen" in times:
        out["vs_transformer_varlen"] = {
            arm: _paired(times, "transformer_varlen", arm, brng)["time_ratio_median"]
            for arm in names
            if arm != "transformer_varlen"
        }
        out["vs_transformer_varlen_note"] = "per arm: median of (packed transformer step time / arm step time)"
    if a.profile and run.cuda and a.mode == "train":
        prof_names = [n for n in names if a.profile_arms is None or n in a.profile_arms]
        out["profile"] = _profile(run, arms, prof_names, batches[0], Path(a.trace_dir) if a.trace_dir else None)
        for arm, prof in out["profile"].items():
            print(arm, prof["gpu_time_ms"], "ms", prof["host"], json.dumps(prof["gaps"])[:1500], flush=True)
    from genemamba_scvi.nn.graphs import _GRAPHS

    if run.mamba in _GRAPHS:  # arms ran with CUDA graphs: how often each path ran, and a capture's failure
        out["cuda_graphs"] = [
            {"stats": g.stats, "buckets": len(g.entries), "bucket_tokens": g.bucket_tokens, "disabled": g.disabled,
             "error": g.last_error}
            for g in _GRAPHS[run.mamba].values()
        ]  # fmt: skip
        print("cuda_graphs", json.dumps(out["cuda_graphs"]), flush=True)
    if run.cuda:
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    out["fused_failed"] = tp.fused_failures()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    if out["fused_failed"]:  # every GeneMamba arm fell back to the unfused layer: not a comparison of the arms
        raise SystemExit(f"the fused kernels failed, the arms timed the fall-back: {out['fused_failed']}")


if __name__ == "__main__":
    main()
