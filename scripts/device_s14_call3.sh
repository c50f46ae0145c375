#!/usr/bin/env bash
# Session 14, device call 3 (H200). 1) compiled tests of dt_both, the bf16 d(CB), the split-free dB / dC, the whole
# SSD backward and the encoder's training step; 2) interleaved A/B at 48 cells: default vs each change reverted vs
# all three reverted vs the packed transformer, with the default's profile.
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "dt_both or mixer_training or dcb or own_state or ssd_backward or encoder_training" > $OUT/gpu_tests_s14_3.log 2>&1
echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|^E  .*(Error|assert)|passed|failed" $OUT/gpu_tests_s14_3.log | head -12
source scripts/device_lib.sh
timeout 240 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 \
  --out $OUT/train_ab_s14_call3_48cells_h200.json --arms default "olddt:fused_split._DT_BOTH_KERNEL=false" \
  "dcb32:fused_ssd_bwd._DCB_IN_DOT_DTYPE=false" \
  "old3:fused_split._DT_BOTH_KERNEL=false;fused_ssd_bwd._DCB_IN_DOT_DTYPE=false;fused_ssd_bwd._SSD_NO_SPLIT_SUM=false" \
  transformer_varlen --profile --profile-arms default > $OUT/ab_s14_3.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s14_3.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s14_call3_48cells_h200.json"))
p = d.get("profile", {}).get("default", {})
print({k: v for k, v in p.items() if not isinstance(v, (dict, list))}, p.get("host"))
print([(r["us"], r["calls"], r["name"][:40]) for r in p.get("all_device_ops", []) if any(
    s in r["name"] for s in ("bmm_chunk", "dcb", "dt_both", "gather", "reduce_kernel", "index"))])
PY
exit 0
