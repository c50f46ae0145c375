#!/usr/bin/env bash
# Session 11, device call 3 (H200): compiled tests of the d(dt*A) reverse-sum kernel with the inter-chunk share;
# a focused interleaved A/B (new default, the four session-11 changes reverted, the torch d(dt*A) bookkeeping, the
# packed transformer) with the default's host profile; then the full throughput run (JSON + PNG).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "reverse_sum or dcb or encoder_training" > $OUT/gpu_tests_s11_3.log 2>&1
echo "tests rc=$?"; tail -2 $OUT/gpu_tests_s11_3.log
timeout 170 python3 benchmarks/train_ab.py --rounds 24 --profile --profile-arms default \
  --out $OUT/train_ab_s11_call3_h200.json --arms default \
  "old4:fused._NORM_BWD_2D=[2,16,4];fused._CONV_BWD_VARIANT=rows2d;fused._CONV_DX_BLOCK=[32,128,4];fused._REV_GATHER_MIN_WIDTH=0" \
  ablation_dda_torch transformer_varlen > $OUT/ab_s11_3.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab_s11_3.log | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | paste - - | cut -c1-300 | tail -5
timeout 230 python3 benchmarks/throughput.py --out $OUT --budget-s 170 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target" $OUT/throughput_h200.log | tail -3
exit 0
