#!/usr/bin/env bash
# Session 14, device call 6 (H200, the session's last): the new compiled tests (all layers' A at once with and without
# checkpointing, at the shipped kernel configurations; dt_both), then the full throughput run with the session's
# defaults (split-free dB / dC, dt_both, bf16 d(CB), A at once) to refresh throughput_h200.json and its PNG.
timeout 75 python3 -m pytest -v -p no:cacheprovider tests/test_nn_training_kernels.py -k "every_layers or dt_both" > $OUT/gpu_tests_s14_6.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR" $OUT/gpu_tests_s14_6.log | cut -c1-150 | head -6
timeout 265 python3 benchmarks/throughput.py --out $OUT --budget-s 215 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target" $OUT/throughput_h200.log | tail -4
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/throughput_h200.json"))
for r in d["results"]:
    if r["setting"].startswith(("real_top2048", "real_top4096", "ablation_dt", "ablation_dcb_fp32", "ablation_split_sum")):
        print(r["setting"], r["model"], round(r.get("cells_per_s", 0) or 0, 1), r.get("peak_mem_gib"))
PY
exit 0
