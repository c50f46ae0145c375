#!/usr/bin/env bash
# Session 24, device call 4 (call 3 spent its test limit compiling; 325 s of budget left): the split tests only,
# then the top-4096 x 24 A/B (default unsplit, split, split_half, packed transformer).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 170 python3 -m pytest -q -x tests/test_nn_fused.py -k "split" -p no:cacheprovider > $OUT/gpu_tests_s24_4.log 2>&1
rc=$?; echo "gpu tests rc=$rc"; tail -3 $OUT/gpu_tests_s24_4.log
[ "$rc" -ne 0 ] && exit 0
timeout 110 python3 benchmarks/train_ab.py --fresh --warmup-rounds 2 --rounds 16 --k 4096 --cells 24 --arms default \
  "split:fused_ssd._SSD_SPLIT=true" "split_half:fused_ssd._SSD_SPLIT=true;fused_ssd._SSD_SPLIT_SCALE=0.5" \
  transformer_varlen --out $OUT/ab4096_split4_s24.json > $OUT/ab_split4_s24.log 2>&1
echo "ab4096 rc=$?"; pick $OUT/ab_split4_s24.log 8
exit 0
