"""``benchmarks/cpu_batch_size.py`` at its quick size: each arm runs in its own process, every arm's embeddings
equal the baseline's, and the JSON holds speed ratios and peak memory (the numbers of a quick run mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_batch_size.py"


def test_quick_run_writes_every_arm_with_the_same_embeddings(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--out", str(out)], check=True)
    result = json.loads(out.read_text())
    (setting,) = result["settings"]
    arms = {a["batch_size"]: a for a in setting["arms"]}
    assert set(arms) == {4, 16} and arms[16]["speed_ratio_to_baseline_median"] == 1.0
    for arm in arms.values():
        assert arm["cells_per_s_median"] > 0 and arm["peak_rss_gib_max"] > 0
        assert arm["max_abs_diff_to_baseline"] < 1e-5  # the batch size does not change a cell's embedding
    assert not (tmp_path / ".b_tmp").exists()
