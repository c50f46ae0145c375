#!/usr/bin/env bash
# Session 14, device call 1 (H200). 1) compiled conv tests (the weight gradient in the second pass, "tokens2d_wdx");
# 2) interleaved A/B at 48 cells, real top-2048: default vs the weight gradient in the dx pass (three launch shapes)
# vs the packed transformer, with profiles of the default and "wdx" (all device operations, and the aten operations
# by the Python lines that launched them).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_fused.py -k "conv_both" > $OUT/gpu_tests_s14_1.log 2>&1
echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|^E  .*(Error|assert)|passed|failed" $OUT/gpu_tests_s14_1.log | head -12
source scripts/device_lib.sh
timeout 260 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 16 \
  --out $OUT/train_ab_s14_call1_48cells_h200.json --arms default "wdx:fused._CONV_WGRAD_IN_DX=true" \
  "wdx_p4:fused._CONV_WGRAD_IN_DX=true;fused._CONV_BWD_TOK2D_BLOCK=[16,64,8,4]" \
  "wdx_d16:fused._CONV_WGRAD_IN_DX=true;fused._CONV_DX_WGRAD_BLOCK=[16,128,8,8]" \
  transformer_varlen --profile --profile-arms default wdx > $OUT/ab_s14_1.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s14_1.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s14_call1_48cells_h200.json"))
for arm, p in d.get("profile", {}).items():
    print(arm, {k: v for k, v in p.items() if not isinstance(v, (dict, list))})
    print([r for r in p.get("all_device_ops", []) if "conv" in r["name"]])
p = d.get("profile", {}).get("default", {})
for r in p.get("aten_ops_by_stack", [])[:25]:
    print(r["op"], r["us"], r["calls"], " <- ".join(x.split("/")[-1][:60] for x in r["stack"][:2]))
PY
exit 0
