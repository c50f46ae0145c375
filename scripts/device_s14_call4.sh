#!/usr/bin/env bash
# Session 14, device call 4 (H200). 1) the session's new GPU tests by name; 2) interleaved A/B at 48 cells, 24
# rounds: default vs the packed transformer vs the opt-in CUDA graphs, with the default's profile.
timeout 150 python3 -m pytest -v -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "dt_both or dot_dtype or mixer_training or encoder_training or own_state" > $OUT/gpu_tests_s14_4.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/gpu_tests_s14_4.log | cut -c1-150 | head -14
source scripts/device_lib.sh
timeout 220 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 24 \
  --out $OUT/train_ab_s14_call4_48cells_h200.json --arms default transformer_varlen "graphs:encoder._CUDA_GRAPHS=true" \
  --profile --profile-arms default > $OUT/ab_s14_4.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s14_4.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s14_call4_48cells_h200.json"))
print(d.get("vs_transformer_varlen"))
p = d.get("profile", {}).get("default", {})
print({k: v for k, v in p.items() if not isinstance(v, (dict, list))}, p.get("host"))
PY
exit 0
