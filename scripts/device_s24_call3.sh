#!/usr/bin/env bash
# Session 24, device call 3 (predictions: benchmarks/NOTES_throughput.md section 26). At most 8 files under $OUT.
# The split SSD forward with the max_seqlen bound (arm 'split' against the default, unsplit): compiled parity,
# then fresh A/Bs at top-4096 x 24 (segments of 1x and 0.5x an even share), full-length 8 x 8192 and top-2048 x 16.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -x tests/test_nn_fused.py -k "split or ssd_varlen or bound" -p no:cacheprovider \
  > $OUT/gpu_tests_s24_3.log 2>&1
rc=$?; echo "gpu tests rc=$rc"; tail -3 $OUT/gpu_tests_s24_3.log
[ "$rc" -ne 0 ] && exit 0  # a kernel that fails here would make every arm below time the unfused fall-back
AB="python3 benchmarks/train_ab.py --fresh --warmup-rounds 3"
NS="split:fused_ssd._SSD_SPLIT=true"  # the split is off by default since call 3 (arm name: split)
timeout 150 $AB --rounds 24 --k 4096 --cells 24 --arms default "$NS" "split_half:fused_ssd._SSD_SPLIT=true;fused_ssd._SSD_SPLIT_SCALE=0.5" transformer_varlen \
  --out $OUT/ab4096_split3_s24.json > $OUT/ab_split3_s24.log 2>&1
echo "ab4096 rc=$?"; pick $OUT/ab_split3_s24.log 6
timeout 150 $AB --rounds 10 --full --k 8192 --cells 8 --arms default "$NS" --profile \
  --out $OUT/ab8192_split3_s24.json >> $OUT/ab_split3_s24.log 2>&1
echo "ab8192 rc=$?"; pick $OUT/ab_split3_s24.log 3
timeout 80 $AB --rounds 16 --k 2048 --cells 16 --arms default "$NS" \
  --out $OUT/ab2048x16_split3_s24.json >> $OUT/ab_split3_s24.log 2>&1
echo "ab2048x16 rc=$?"; pick $OUT/ab_split3_s24.log 3
python3 - <<'PY'
import json, os
d = json.load(open(f"{os.environ['OUT']}/ab8192_split3_s24.json"))
for arm, p in d.get("profile", {}).items():
    rows = [r for r in p["all_device_ops"] if "ssd_varlen" in r["name"] or "split_states" in r["name"]]
    print(arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], [(r["name"], r["us"], r["calls"]) for r in rows])
PY
exit 0
