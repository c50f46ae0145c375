#!/usr/bin/env bash
# Session 15, device call 6 (H200, the last): the weight_grad / merge GPU tests with the fp32-output GEMMs now off by
# default (and on, by parameter), then the full throughput run with the session's final defaults.
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "weight_grad or gate_merge_train" 2>&1 | tail -2
timeout 290 python3 benchmarks/throughput.py --out $OUT --budget-s 240 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target" $OUT/throughput_h200.log | tail -4
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/throughput_h200.json"))
for r in d["results"]:
    if r["setting"].startswith(("real_top2048", "real_top4096", "ablation_cb", "ablation_fat", "ablation_a_per")):
        print(r["setting"], r["model"], round(r.get("cells_per_s", 0) or 0, 1), r.get("peak_mem_gib"))
print(d.get("ratios_genemamba_over_transformer_varlen"))
PY
exit 0
