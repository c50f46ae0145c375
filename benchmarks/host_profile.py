"""Where the host's time goes when it enqueues a training step, and what changes in the "slow state".

A GeneMamba training step issues ~1,500 device operations; ``train_ab.py`` measured the host enqueueing it in 0.6-1.0
of the step's wall time at top-4096 x 24 (``NOTES_throughput.md`` section 26), and ``throughput.py``'s runs now and
then find its top-4096 steps 1.5x slower than in a fresh process (sections 25-27). This script replays
``throughput.py``'s order of real-cell training settings (every model of top-2048, then top-4096; its ``Runner``,
batches and steps) and records for each step the host's enqueue time, the wall time, the caching allocator's device
calls and full synchronisations, and Python's garbage collections. Then, in that state, for GeneMamba at the last
setting: ``cProfile`` of a few steps (the host's functions by own time and by total time), and interleaved steps
with the garbage collector off and after ``torch.cuda.empty_cache()`` (does either bring the step back?).

Writes one JSON (``--out``). ``--smoke`` runs a tiny model on the CPU (checks the script; times mean nothing).

Usage (GPU machine)::

    python benchmarks/host_profile.py --out $OUT/host_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import pstats
import sys
import threading
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

_ALLOC_KEYS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")


def _counters(cuda: bool) -> dict[str, int]:
    """The allocator's cumulative device calls and syncs, and Python's cumulative collections per generation."""
    out = {f"gc{i}": int(s["collections"]) for i, s in enumerate(gc.get_stats())}
    if cuda:
        stats = torch.cuda.memory_stats()
        out.update({k: int(stats.get(k, 0)) for k in _ALLOC_KEYS})
    return out


def timed_step(run: tp.Runner, model: str, b: dict[str, Any]) -> dict[str, Any]:
    """One training step: host enqueue ms, wall ms (GPU synchronised) and the counters' changes during it."""
    run._sync()
    before = _counters(run.cuda)
    t0 = time.perf_counter()
    run.step(model, "train", b)
    t_host = time.perf_counter()
    run._sync()
    t1 = time.perf_counter()
    after = _counters(run.cuda)
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    return {"enqueue_ms": round((t_host - t0) * 1e3, 2), "wall_ms": round((t1 - t0) * 1e3, 2), **delta}


def host_functions(prof: cProfile.Profile, n_steps: int, top: int = 40) -> dict[str, list[dict[str, Any]]]:
    """The profiled functions, per step: the ``top`` by own time and the ``top`` by total time."""
    st = pstats.Stats(prof)
    rows = []
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in st.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(path).parts[-3:]) if path != "~" else "builtin"
        rows.append(
            {
                "where": f"{short}:{line} {name}",
                "calls": round(ncalls / n_steps, 1),
                "own_ms": round(tottime * 1e3 / n_steps, 3),
                "total_ms": round(cumtime * 1e3 / n_steps, 3),
            }
        )
    return {
        "by_own_time": sorted(rows, key=lambda r: -r["own_ms"])[:top],
        "by_total_time": sorted(rows, key=lambda r: -r["total_ms"])[:top],
    }


class StackSampler:
    """A sampling profiler of every Python thread (``cProfile`` sees only the thread that enables it, and on a GPU
    the backward's Python code runs in autograd's device thread). Every ``interval`` s it reads each thread's stack:
    the innermost function counts as own time, every function on the stack as total time, per thread."""

    def __init__(self, interval: float = 5e-4) -> None:
        self.interval = interval
        self.own: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.per_thread: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.interval / 2)  # else the sampler waits ~5 ms for the GIL
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def _run(self) -> None:
        me = threading.get_ident()
        names = {t.ident: t.name for t in threading.enumerate()}
        while not self._stop.is_set():
            for tid, frame in sys._current_frames().items():
                if tid == me or frame is None:
                    continue
                if tid not in names:  # a thread started since: Python's threads by name, others (autograd's) not
                    names.update({t.ident: t.name for t in threading.enumerate()})
                    names.setdefault(tid, "other (autograd)")
                thread = names[tid]
                self.per_thread[thread] = self.per_thread.get(thread, 0) + 1
                seen = set()
                f, first = frame, True
                while f is not None:
                    code = f.f_code
                    key = f"{thread}|{'/'.join(Path(code.co_filename).parts[-2:])}:{code.co_firstlineno} {code.co_name}"
                    if first:
                        self.own[key] = self.own.get(key, 0) + 1
                        first = False
                    if key not in seen:
                        seen.add(key)
                        self.total[key] = self.total.get(key, 0) + 1
                    f = f.f_back
            time.sleep(self.interval)

    def result(self, top: int = 40) -> dict[str, Any]:
        def rows(d: dict[str, int]) -> list[dict[str, Any]]:
            return [{"where": k, "samples": v} for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

        return {"interval_s": self.interval, "samples_per_thread": self.per_thread, "by_own": rows(self.own),
                "by_total": rows(self.total)}  # fmt: skip


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _summary(steps: list[dict[str, Any]]) -> dict[str, float]:
    w = np.array([s["wall_ms"] for s in steps])
    e = np.array([s["enqueue_ms"] for s in steps])
    return {"wall_ms_median": float(np.median(w)), "enqueue_ms_median": float(np.median(e)), "n": len(steps)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", default="2048:48,4096:24", help="top-k:cells of the real-cell settings, in order")
    p.add_argument("--models", default="genemamba,transformer,transformer_varlen")
    p.add_argument("--steps", type=int, default=14, help="steps per model and setting (2 of them warm-up)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--ab-rounds", type=int, default=6, help="rounds of default / gc off / after empty_cache")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="host_profile.json")
    a = p.parse_args(argv)
    run = tp.built_runner(a.seed, a.smoke)
    models = [m for m in a.models.split(",") if m != "transformer_varlen" or (run.cuda and tp._has_varlen_attn())]
    t_start = time.perf_counter()
    out: dict[str, Any] = {"device": run.gpu_name, "model_cfg": run.cfg, "sequence": [], "python_objects": {}}
    out["python_objects"]["start"] = len(gc.get_objects())
    last = None
    for spec in a.settings.split(","):
        k, cells = (int(x) for x in spec.split(":"))
        s = dict(kind="real", n=min(k, 128) if a.smoke else k, mode="train", cells=6 if a.smoke else cells)
        batches = [run.make_batch(s) for _ in range(a.steps)]  # the same batches for every model, as throughput.py
        for model in models:
            steps = [timed_step(run, model, b) for b in batches]
            out["sequence"].append({"setting": f"top{k}x{cells}", "model": model, "steps": steps,
                                    **_summary(steps[2:])})  # fmt: skip
            print(f"top{k}x{cells} {model}", json.dumps(_summary(steps[2:])), flush=True)
        last = (s, batches)
    out["python_objects"]["after_sequence"] = len(gc.get_objects())
    s, batches = last  # type: ignore[misc]
    prof = cProfile.Profile()
    for b in batches[: a.profile_steps]:
        run._sync()
        prof.enable()
        run.step("genemamba", "train", b)
        prof.disable()
        run._sync()
    out["host_functions_genemamba"] = host_functions(prof, a.profile_steps)  # (the main thread only)
    run._sync()
    with StackSampler() as sampler:  # every thread, the backward's included
        for b in batches[: a.profile_steps]:
            run.step("genemamba", "train", b)
        run._sync()
    out["host_samples_genemamba"] = sampler.result()
    arms: dict[str, list[dict[str, Any]]] = {"default": [], "gc_off": [], "after_empty_cache": []}
    for r in range(a.ab_rounds):
        b = batches[r % len(batches)]
        arms["default"].append(timed_step(run, "genemamba", b))
        with _gc_off():
            arms["gc_off"].append(timed_step(run, "genemamba", b))
        if run.cuda:
            torch.cuda.empty_cache()
        arms["after_empty_cache"].append(timed_step(run, "genemamba", b))
    out["ab_genemamba_last_setting"] = {k: {"steps": v, **_summary(v)} for k, v in arms.items()}
    print("ab", json.dumps({k: _summary(v) for k, v in arms.items()}), flush=True)
    out["fused_failed"] = tp.fused_failures()
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
