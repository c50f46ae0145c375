"""``benchmarks/embed_batch_size.py`` at its smoke size: every batch size's embeddings equal the default's, and the
JSON holds each arm's speed ratio and batch (the numbers of a smoke run on a CPU mean nothing). It runs in its own
process: the script quiets Lightning's logger and warnings for the rest of its process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_batch_size.py"


def test_smoke_run_gives_every_batch_size_the_same_embeddings(tmp_path):
    subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)], check=True, capture_output=True)
    result = json.loads((tmp_path / "embed_batch_size_cpu_smoke.json").read_text())
    assert result["batch_size"] == {"default": 8, "4": 4, "16": 16}  # the CPU default: at most 8 cells
    assert result["ratio_to_default_median"]["default"] == 1.0
    assert all(len(v) == 2 and min(v) > 0 for v in result["cells_per_s"].values())
    assert max(result["max_abs_diff_to_default"].values()) < 1e-5  # the batch does not change a cell's embedding
