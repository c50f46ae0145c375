"""``benchmarks/cpu_speed.py`` at its quick size: every arm runs, computes the baseline's function, and the defaults
are restored afterwards (the numbers of a quick run mean nothing)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

cpu_speed = pytest.importorskip("cpu_speed")


def test_quick_run_writes_every_arm_and_keeps_the_function(tmp_path, monkeypatch):
    import genemamba_scvi.module as module
    import genemamba_scvi.nn.mamba2 as mamba2

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi", "jax", "absl", "genemamba_scvi"):
        logger = logging.getLogger(name)  # the script's quiet() sets their levels: restored after the test
        monkeypatch.setattr(logger, "level", logger.level)
    threads = torch.get_num_threads()
    out = tmp_path / "cpu.json"
    try:
        cpu_speed.main(["--quick", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    entry = result["widths"]["32"]
    for mode in ("inference", "training"):
        arms = entry[mode]["arms"]
        assert set(arms) == set(cpu_speed.ENCODER_ARMS)
        assert arms[cpu_speed.BASELINE]["time_ratio_median"] == 1.0
        for arm in arms.values():
            assert len(arm["times_s"]) == 2 and arm["max_abs_diff_vs_baseline"] < 1e-5
    assert entry["api"]["arms"]["default"]["max_abs_diff_vs_old"] < 1e-5
    assert (module._PACK_ON_CPU, mamba2.CPU_CHUNK_SIZE) == (True, 64)  # defaults put back
