#!/usr/bin/env bash
# Session 24, device call 2 (predictions: benchmarks/NOTES_throughput.md section 26). At most 8 files under $OUT.
# The split SSD forward (long sequences over several programs): compiled parity tests, then fresh A/Bs against the
# unsplit scan (fused_ssd._SSD_SPLIT=false) at top-4096 x 24 (with the transformer and a kernel profile), top-2048 x
# 48 and x 32 (the API's default batch), and inference at 256 cells (where nothing is long enough to split).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 170 python3 -m pytest -q -x tests/test_nn_fused.py -k "split or ssd_varlen" -p no:cacheprovider \
  > $OUT/gpu_tests_s24.log 2>&1
echo "gpu tests rc=$?"; tail -3 $OUT/gpu_tests_s24.log
AB="python3 benchmarks/train_ab.py --fresh --warmup-rounds 3"
NS="nosplit:fused_ssd._SSD_SPLIT=false"
timeout 150 $AB --rounds 24 --k 4096 --cells 24 --arms default "$NS" transformer_varlen --profile \
  --profile-arms default nosplit --out $OUT/ab4096_split_s24.json > $OUT/ab_split_s24.log 2>&1
echo "ab4096 rc=$?"; pick $OUT/ab_split_s24.log 6
timeout 110 $AB --rounds 16 --k 2048 --cells 48 --arms default "$NS" transformer_varlen \
  --out $OUT/ab2048x48_split_s24.json >> $OUT/ab_split_s24.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab_split_s24.log 6
timeout 90 $AB --rounds 16 --k 2048 --cells 32 --arms default "$NS" \
  --out $OUT/ab2048x32_split_s24.json >> $OUT/ab_split_s24.log 2>&1
echo "ab2048x32 rc=$?"; pick $OUT/ab_split_s24.log 3
timeout 80 $AB --rounds 12 --k 2048 --cells 256 --mode infer --arms default "$NS" \
  --out $OUT/infer256_split_s24.json >> $OUT/ab_split_s24.log 2>&1
echo "infer256 rc=$?"; pick $OUT/ab_split_s24.log 3
python3 - <<'PY'
import json, os
d = json.load(open(f"{os.environ['OUT']}/ab4096_split_s24.json"))
for arm, p in d.get("profile", {}).items():
    rows = [r for r in p["all_device_ops"] if "ssd_varlen" in r["name"] or "split" in r["name"]]
    print(arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], [(r["name"], r["us"], r["calls"]) for r in rows])
PY
exit 0
