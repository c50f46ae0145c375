"""``benchmarks/kernel_registers.py`` compiles a kernel for sm_90a without a GPU and reads ptxas' report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def test_offline_compile_reports_registers_and_spills(tmp_path):
    out = tmp_path / "regs.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_registers.py"), "--only", "seq_rev_sum", "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    recs = json.loads(out.read_text())["kernels"]
    assert [r["constexprs"]["HAS_INTER"] for r in recs] == [False, True]  # one record per listed launch shape
    for rec in recs:
        assert rec["kernel"] == "seq_rev_sum_kernel" and rec["num_warps"] == 4
        assert 0 < rec["registers"] <= 255 and rec["spill_store_bytes"] == 0


def test_it_refuses_to_run_under_the_interpreter(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_registers.py"), "--out", str(tmp_path / "x")],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode != 0 and "TRITON_INTERPRET=0" in r.stderr
