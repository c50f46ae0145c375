"""The host-side profile of training steps (``benchmarks/host_profile.py``): the thread sampler and a CPU run."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

host_profile = pytest.importorskip("host_profile")


def _busy_in_worker(seconds: float) -> None:
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        sum(range(200))


def test_the_sampler_sees_a_function_running_in_another_thread():
    """cProfile would not: the work runs in a thread that did not enable it (as autograd's device thread)."""
    worker = threading.Thread(target=_busy_in_worker, args=(0.3,), name="worker")
    with host_profile.StackSampler(interval=1e-3) as sampler:
        worker.start()
        worker.join()
    res = sampler.result()
    assert res["samples_per_thread"].get("worker", 0) >= 20
    assert any(r["where"].startswith("worker|") and "_busy_in_worker" in r["where"] for r in res["by_total"])


def test_a_cpu_run_writes_steps_profiles_and_the_ab(tmp_path):
    out = tmp_path / "hp.json"
    host_profile.main(["--smoke", "--steps", "3", "--profile-steps", "1", "--ab-rounds", "1", "--out", str(out)])
    d = json.loads(out.read_text())
    assert [r["model"] for r in d["sequence"]] == ["genemamba", "transformer"] * 2  # no varlen attention on a CPU
    step = d["sequence"][0]["steps"][0]
    assert step["wall_ms"] >= step["enqueue_ms"] > 0
    assert d["host_functions_genemamba"]["by_total_time"][0]["calls"] >= 1
    assert sum(d["host_samples_genemamba"]["samples_per_thread"].values()) > 0
    assert set(d["ab_genemamba_last_setting"]) == {"default", "gc_off", "after_empty_cache"}
