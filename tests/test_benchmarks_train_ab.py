"""The interleaved A/B benchmark of training steps (``benchmarks/train_ab.py``): arms, paired ratios, a CPU run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

train_ab = pytest.importorskip("train_ab")


def test_arm_names_give_the_model_and_its_switches():
    assert train_ab._arm_switches("default") == ("genemamba", {})
    assert train_ab._arm_switches("transformer_varlen") == ("transformer_varlen", {})
    assert train_ab._arm_switches("ablation_split_cat") == ("genemamba", {"fused._SPLIT_GRAD_IN_PLACE": False})
    model, sw = train_ab._arm_switches('x:fused_ssd_bwd._SSD_BWD_DDA=mamba;fused_ssd_bwd.DCB_DDA_CONFIG={"BM":32}')
    assert model == "genemamba" and sw == {
        "fused_ssd_bwd._SSD_BWD_DDA": "mamba",
        "fused_ssd_bwd.DCB_DDA_CONFIG": {"BM": 32},
    }
    with pytest.raises(SystemExit, match="unknown arm"):
        train_ab._arm_switches("no_such_arm")


def test_paired_ratio_is_per_round_with_an_interval_around_it():
    ref = [1.0, 1.1, 0.9, 1.0, 1.2, 1.0]
    arm = [0.95 * t for t in ref]  # 5% faster on every round, whatever the round's speed
    r = train_ab._paired({"a": arm, "ref": ref}, "a", "ref", np.random.default_rng(0))
    assert r["time_ratio_median"] == pytest.approx(0.95)
    assert r["time_ratio_ci95"][0] == pytest.approx(0.95) and r["time_ratio_ci95"][1] == pytest.approx(0.95)
    assert r["speedup_vs_ref"] == pytest.approx(1 / 0.95)


def test_cpu_run_times_every_arm_and_restores_the_switches(tmp_path):
    from genemamba_scvi.nn import fused

    before = fused._SPLIT_GRAD_IN_PLACE
    out = tmp_path / "ab.json"
    train_ab.main(["--smoke", "--arms", "default", "ablation_split_cat", "--rounds", "2", "--batches", "2",
                   "--warmup-rounds", "1", "--out", str(out)])  # fmt: skip
    d = json.loads(out.read_text())
    assert set(d["arms"]) == {"default", "ablation_split_cat"}
    assert d["arms"]["default"]["grads_finite"] == [True, True]
    assert d["arms"]["ablation_split_cat"]["vs_default"]["time_ratio_median"] > 0
    assert fused._SPLIT_GRAD_IN_PLACE == before


def test_fresh_run_gives_every_arm_its_own_new_batches(tmp_path, monkeypatch):
    """``--fresh``: a newly drawn batch for every arm and round (no arm meets a packed length twice by design), the
    step times scaled per token, tokens/s from each arm's own tokens."""
    seen = []
    real_step = train_ab.enqueue_and_wall_ms

    def spy(run, model, b, mode="train"):
        seen.append(b)  # (kept alive, so ids cannot be reused)
        return real_step(run, model, b, mode)

    monkeypatch.setattr(train_ab, "enqueue_and_wall_ms", spy)
    out = tmp_path / "ab.json"
    train_ab.main(["--smoke", "--fresh", "--arms", "default", "ablation_split_cat", "--rounds", "2",
                   "--warmup-rounds", "1", "--out", str(out)])  # fmt: skip
    d = json.loads(out.read_text())
    assert len(seen) == 6 and len({id(b) for b in seen}) == 6  # 3 rounds x 2 arms, each step its own batch
    assert d["setting"]["fresh"] is True and "new batch" in d["method"]
    assert all(d["arms"][a]["real_tokens_per_s"] > 0 for a in ("default", "ablation_split_cat"))


def test_trace_gaps_tells_launch_bound_idle_from_queued_idle():
    def op(name, ts, dur, cat, corr=None):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "cat": cat, "args": {"correlation": corr}}

    trace = {
        "traceEvents": [
            op("phase:forward", 0, 100, "user_annotation"),
            op("phase:backward", 100, 100, "user_annotation"),
            op("cudaLaunchKernel", 1, 2, "cuda_runtime", 1),
            op("cudaLaunchKernel", 3, 2, "cuda_runtime", 2),  # queued long before k1 ends
            op("cudaLaunchKernel", 150, 2, "cuda_runtime", 3),  # launched after the GPU ran dry
            op("k1", 10, 20, "kernel", 1),
            op("k2", 32, 8, "kernel", 2),  # 2 us queued gap
            op("k3", 155, 5, "kernel", 3),  # 115 us launch-bound gap, launched in the backward
        ]
    }
    g = train_ab.trace_gaps(trace)
    assert g["lead_us"] == 10 and g["device_busy_us"] == 33 and g["device_span_us"] == 150
    assert g["idle_us"] == 117 and g["idle_launch_bound_us"] == 115 and g["n_idle_intervals"] == 2
    assert g["idle_by_phase"]["backward"] == {"launch_bound_us": 115, "queued_us": 0, "n": 1}
    assert g["idle_by_phase"]["forward"] == {"launch_bound_us": 0, "queued_us": 2, "n": 1}
    assert g["largest_gaps"][0] == {"us": 115, "next": "k3", "phase": "backward", "launch_bound": True}
    assert g["launch_bound_by_next_op"] == {"k3": 115}


def test_device_ops_sum_kernels_only_by_name():
    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "kernel", "name": "k1", "ts": 0, "dur": 5},
            {"ph": "X", "cat": "kernel", "name": "k1", "ts": 9, "dur": 7},
            {"ph": "X", "cat": "gpu_memset", "name": "Memset", "ts": 20, "dur": 1},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 99},  # host side: not counted
            {"ph": "X", "cat": "user_annotation", "name": "phase:backward", "ts": 0, "dur": 99},
        ]
    }
    assert train_ab._device_ops(trace) == [(12.0, "k1", 2), (1.0, "Memset", 1)]


def test_inference_mode_times_inference_passes(tmp_path, monkeypatch):
    """``--mode infer``: the arms' inference passes (session 22's A/B of the lean conv forward), no gradients."""
    modes = []
    real_step = train_ab.enqueue_and_wall_ms

    def spy(run, model, b, mode="train"):
        modes.append(mode)
        return real_step(run, model, b, mode)

    monkeypatch.setattr(train_ab, "enqueue_and_wall_ms", spy)
    out = tmp_path / "ab.json"
    train_ab.main(["--smoke", "--mode", "infer", "--arms", "default", "ablation_split_cat", "--rounds", "2",
                   "--warmup-rounds", "1", "--out", str(out)])  # fmt: skip
    d = json.loads(out.read_text())
    assert modes == ["infer"] * 6 and d["setting"]["mode"] == "infer"
    assert d["arms"]["default"]["grads_finite"] is None and d["arms"]["ablation_split_cat"]["vs_default"]


def test_rounds_record_the_host_enqueue_time_and_a_fused_failure_stops_the_run(tmp_path, monkeypatch):
    """Each timed round's host enqueue time (at most its wall time); a run in which the fused kernels failed (every
    GeneMamba arm then timed the unfused fall-back) writes the failure and exits, not a comparison."""
    out = tmp_path / "ab.json"
    train_ab.main(["--smoke", "--arms", "default", "ablation_split_cat", "--rounds", "2", "--batches", "2",
                   "--warmup-rounds", "1", "--out", str(out)])  # fmt: skip
    d = json.loads(out.read_text())
    for arm in d["arms"].values():
        assert len(arm["enqueue_ms"]) == 2
        assert all(0 < e <= 1e3 * w + 0.02 for e, w in zip(arm["enqueue_ms"], arm["step_times_s"]))
    assert d["fused_failed"] == {}
    monkeypatch.setattr(train_ab.tp, "fused_failures", lambda: {"cuda:0": "CompilationError: ..."})
    with pytest.raises(SystemExit, match="fall-back"):
        train_ab.main(["--smoke", "--arms", "default", "ablation_split_cat", "--rounds", "1", "--batches", "1",
                       "--warmup-rounds", "0", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["fused_failed"] == {"cuda:0": "CompilationError: ..."}


def test_full_length_cells(tmp_path):
    """``--full``: every cell ``--k`` tokens long (throughput.py's full-length settings)."""
    out = tmp_path / "ab.json"
    train_ab.main(["--smoke", "--full", "--k", "64", "--arms", "default", "ablation_split_cat", "--rounds", "1",
                   "--batches", "1", "--warmup-rounds", "0", "--out", str(out)])  # fmt: skip
    d = json.loads(out.read_text())
    assert d["setting"]["kind"] == "full" and d["arms"]["default"]["real_tokens"] == [6 * 64]
