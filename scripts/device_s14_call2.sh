#!/usr/bin/env bash
# Session 14, device call 2 (H200). 1) GPU test of dB / dC without mamba-ssm's split sum, and the SSD backward tests;
# 2) interleaved A/B at 48 cells: default (now without the split sums) vs the wrappers' sums, the conv weight gradient
# in the second pass with one token block a program (three shapes), the first pass with 2 blocks a program, and the
# packed transformer; profiles of the default and wdx1 (with the Python lines of the aten operations).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "own_state or ssd_backward or encoder_training" > $OUT/gpu_tests_s14_2.log 2>&1
echo "tests rc=$?"; grep -E "^(FAILED|ERROR)|^E  .*(Error|assert)|passed|failed" $OUT/gpu_tests_s14_2.log | head -12
source scripts/device_lib.sh
timeout 280 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 16 \
  --out $OUT/train_ab_s14_call2_48cells_h200.json --arms default "splitsum:fused_ssd_bwd._SSD_NO_SPLIT_SUM=false" \
  "wdx1:fused._CONV_WGRAD_IN_DX=true;fused._CONV_BWD_TOK2D_BLOCK=[16,64,1,8];fused._CONV_DX_WGRAD_BLOCK=[32,128,1,8]" \
  "wdx3:fused._CONV_WGRAD_IN_DX=true;fused._CONV_BWD_TOK2D_BLOCK=[16,64,1,8];fused._CONV_DX_WGRAD_BLOCK=[16,128,1,4]" \
  "wdx4:fused._CONV_WGRAD_IN_DX=true;fused._CONV_BWD_TOK2D_BLOCK=[16,64,8,4];fused._CONV_DX_WGRAD_BLOCK=[32,128,1,8]" \
  "tok1:fused._CONV_BWD_TOK2D_BLOCK=[16,64,2,8]" \
  transformer_varlen --profile --profile-arms default wdx1 > $OUT/ab_s14_2.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s14_2.log
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/train_ab_s14_call2_48cells_h200.json"))
for arm, p in d.get("profile", {}).items():
    print(arm, {k: v for k, v in p.items() if not isinstance(v, (dict, list))}, p.get("host"))
    print([(r["us"], r["name"][:40]) for r in p.get("all_device_ops", []) if "conv" in r["name"] or "reduce_kernel" in r["name"]])
p = d.get("profile", {}).get("default", {})
for r in p.get("aten_ops_by_stack", [])[:30]:
    if r["op"] not in ("aten::mm", "aten::addmm", "aten::addmm_"):
        print(r["op"], r["us"], r["calls"], " <- ".join(x[-70:] for x in r["stack"][:2]))
PY
exit 0
