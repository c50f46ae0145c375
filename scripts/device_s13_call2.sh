#!/usr/bin/env bash
# Session 13, device call 2 (H200). The dx pass with the split decay (the rows after the program's block: BK exps
# on dy's rows instead of BM x BK on the tile): 1) compiled dx tests; 2) kernel timing with queued calls (call 1's
# bench synchronised around each call, so wrapper host time landed in its events); 3) interleaved A/B at 48 cells:
# default (split, 64 x 64, 4 warps) vs mamba-ssm's dx vs the decay per pair vs 8 warps vs the packed transformer.
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "dx_pass or ssd_backward" \
  > $OUT/gpu_tests_s13_2_dx.log 2>&1
echo "dx tests rc=$?"; grep -E "^(FAILED|ERROR)|^E  .*(Error|assert)|passed|failed" $OUT/gpu_tests_s13_2_dx.log | head -12
timeout 100 python3 benchmarks/ssd_dx_bench.py --cells 48 --reps 40 --out $OUT/ssd_dx_s13_call2_h200.json > $OUT/ssd_dx_s13_2.log 2>&1
echo "dx bench rc=$?"; grep -v Warn $OUT/ssd_dx_s13_2.log | sed 's/"rel": {[^}]*}, //' | cut -c1-230 | tail -12
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | sed 's/"switches": {.*}, "model"/"model"/' | cut -c1-200 | tail -10; }
timeout 230 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 16 \
  --out $OUT/train_ab_s13_call2_48cells_h200.json --arms default ablation_mamba_dx \
  'perpair:fused_ssd_bwd.DX_CONFIG={"BM": 64, "BK": 64, "num_warps": 4, "num_stages": 2, "split": false, "cb_bf16": false}' \
  'w8:fused_ssd_bwd.DX_CONFIG={"BM": 64, "BK": 64, "num_warps": 8, "num_stages": 2, "split": true, "cb_bf16": false}' \
  transformer_varlen --profile --profile-arms default > $OUT/ab_s13_2.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s13_2.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s13_call2_48cells_h200.json"))
p = d.get("profile", {}).get("default", {})
print({k: v for k, v in p.items() if not isinstance(v, (dict, list))})
print([r for r in p.get("top_kernels", []) if "dx" in r["name"] or "dcb" in r["name"]])
PY
exit 0
