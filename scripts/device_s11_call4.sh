#!/usr/bin/env bash
# Session 11, device call 4 (H200): is call 3's top-4096 training number (218k real tokens/s, step 192 ms; session
# 10: 286k, 138 ms) a regression of this session's changes? Interleaved A/B at top-4096 (24 cells a step, the
# setting of throughput.py) with each change reverted alone, the host profile of the default and of old4; the
# top-4096 settings of throughput.py again; the fixed compiled test of the reverse-sum kernel.
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "reverse_sum" \
  > $OUT/gpu_tests_s11_4.log 2>&1
echo "tests rc=$?"; tail -1 $OUT/gpu_tests_s11_4.log
timeout 200 python3 benchmarks/train_ab.py --k 4096 --cells 24 --rounds 20 --profile --profile-arms default old4 \
  --out $OUT/train_ab_s11_call4_top4096_h200.json --arms default \
  "old4:fused._NORM_BWD_2D=[2,16,4];fused._CONV_BWD_VARIANT=rows2d;fused._CONV_DX_BLOCK=[32,128,4];fused._REV_GATHER_MIN_WIDTH=0" \
  ablation_norm_bwd_tiles_2x16 ablation_conv_bwd_rows2d ablation_conv_dx_32x128 ablation_rev_gather_all \
  ablation_dda_torch transformer_varlen > $OUT/ab_s11_4.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab_s11_4.log | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | paste - - | cut -c1-300 | tail -9
mkdir -p $OUT/tp4096
timeout 150 python3 benchmarks/throughput.py --out $OUT/tp4096 --budget-s 120 --only real_top4096 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/tp4096/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^\[ok\]" $OUT/tp4096/throughput_h200.log | cut -c1-170
exit 0
