#!/usr/bin/env bash
# Session 13, device call 3 (H200). 1) compiled tests of the d(CB)+ddA pass with the split decay on the tiles below
# the diagonal (and the whole SSD backward, the encoder's training step); 2) interleaved A/B at 48 cells: default
# (split) vs the decay per pair vs the packed transformer, with the default's profile; 3) session 12's queued A/B at
# 32 cells: CUDA graphs with 1,024- and 512-token buckets against eager and the packed transformer.
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "dcb or ssd_backward or encoder_training" > $OUT/gpu_tests_s13_3.log 2>&1
echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|^E  .*(Error|assert)|passed|failed" $OUT/gpu_tests_s13_3.log | head -12
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | sed 's/"switches": {.*}, "model"/"model"/' | cut -c1-200 | tail -10; }
timeout 200 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 \
  --out $OUT/train_ab_s13_call3_48cells_h200.json --arms default \
  'dcbpair:fused_ssd_bwd.DCB_DDA_CONFIG={"BM": 64, "BN": 64, "num_warps": 2, "num_stages": 2, "split": false}' \
  transformer_varlen --profile --profile-arms default > $OUT/ab_s13_3.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s13_3.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s13_call3_48cells_h200.json"))
p = d.get("profile", {}).get("default", {})
print({k: v for k, v in p.items() if not isinstance(v, (dict, list))})
print([r for r in p.get("top_kernels", []) if "dx" in r["name"] or "dcb" in r["name"]])
PY
timeout 170 python3 benchmarks/train_ab.py --k 2048 --cells 32 --rounds 16 --warmup-rounds 16 --batches 8 \
  --out $OUT/train_ab_s13_call3_32cells_h200.json --arms default "graphs:encoder._CUDA_GRAPHS=true" \
  "graphs512:encoder._CUDA_GRAPHS=true;encoder._GRAPH_BUCKET_TOKENS=512" transformer_varlen > $OUT/ab_s13_3b.log 2>&1
echo "ab32 rc=$?"; pick $OUT/ab_s13_3b.log
exit 0
