"""The census of a training step's device operations (``benchmarks/launch_overhead.py --census``), on a CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

pytest.importorskip("triton", reason="the census wraps Triton's launches")
launch_overhead = pytest.importorskip("launch_overhead")


def test_census_counts_a_steps_operations_by_issuing_line(tmp_path):
    """Forward and backward operations are both counted, attributed to this package's source lines or to the
    autograd engine, views and allocations left out; the per-site rows add up to the total."""
    out = tmp_path / "census.json"
    launch_overhead.main(["--census", "--smoke", "--out", str(out)])
    c = json.loads(out.read_text())["census"]["genemamba"]
    phases = c["by_phase (optimizer counted in backward)"]
    assert phases["forward"] > 0 and phases["backward"] > 0
    assert sum(r["calls"] for r in c["by_site"]) == c["total"] == sum(c["by_op"].values())
    assert any(r["site"].startswith("genemamba_scvi/nn/") for r in c["by_site"])
    ops = {op.split(":", 1)[1].split(".")[0] for op in c["by_op"]}
    assert not ops & {"view", "empty", "t", "transpose", "detach"}
    assert "mm" in ops or "addmm" in ops or "bmm" in ops
