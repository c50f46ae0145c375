#!/usr/bin/env bash
# Session 14, device call 5 (H200). 1) the new GPU tests by name (A at once with and without checkpointing,
# dt_both); 2) interleaved A/B at 48 cells, 16 warm-up rounds (so the graphs arm replays), 20 timed rounds: default,
# per-layer A, the session's four levers off, the opt-in CUDA graphs, the packed transformer; default's profile.
timeout 100 python3 -m pytest -v -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "every_layers or dt_both" > $OUT/gpu_tests_s14_5.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR" $OUT/gpu_tests_s14_5.log | cut -c1-150 | head -8
source scripts/device_lib.sh
timeout 250 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 --warmup-rounds 16 \
  --out $OUT/train_ab_s14_call5_48cells_h200.json --arms default transformer_varlen "perlayerA:fused_ssd._A_ONCE=false" \
  "old4:fused_ssd._A_ONCE=false;fused_split._DT_BOTH_KERNEL=false;fused_ssd_bwd._DCB_IN_DOT_DTYPE=false;fused_ssd_bwd._SSD_NO_SPLIT_SUM=false" \
  "graphs:encoder._CUDA_GRAPHS=true" --profile --profile-arms default > $OUT/ab_s14_5.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s14_5.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s14_call5_48cells_h200.json"))
print(d.get("vs_transformer_varlen"))
p = d.get("profile", {}).get("default", {})
print({k: v for k, v in p.items() if not isinstance(v, (dict, list))}, p.get("host"))
PY
exit 0
