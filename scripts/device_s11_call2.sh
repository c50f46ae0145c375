#!/usr/bin/env bash
# Session 11, device call 2 (H200): the new defaults (call 1's four winners) against the old ones, and launch shapes
# of every training kernel that has a switch, one interleaved A/B (predictions: benchmarks/NOTES_throughput.md §15);
# then the public API's steady state (api_speed, not re-run since session 6).
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_nn_fused.py -k "rev_rows" > $OUT/gpu_tests_s11_2.log 2>&1
echo "tests rc=$?"; tail -1 $OUT/gpu_tests_s11_2.log
timeout 330 python3 benchmarks/train_ab.py --rounds 16 --out $OUT/train_ab_s11_call2_h200.json --arms default \
  "old4:fused._NORM_BWD_2D=[2,16,4];fused._CONV_BWD_VARIANT=rows2d;fused._CONV_DX_BLOCK=[32,128,4];fused._REV_GATHER_MIN_WIDTH=0" \
  transformer_varlen \
  "norm1x16:fused._NORM_BWD_2D=[1,16,4]" "norm1x64:fused._NORM_BWD_2D=[1,64,4]" "norm1x32w8:fused._NORM_BWD_2D=[1,32,8]" \
  "tok2dw4:fused._CONV_BWD_TOK2D_BLOCK=[16,64,8,4]" "tok2d16i:fused._CONV_BWD_TOK2D_BLOCK=[16,64,16,8]" \
  "tok2d32:fused._CONV_BWD_TOK2D_BLOCK=[32,64,8,8]" "tok2d128:fused._CONV_BWD_TOK2D_BLOCK=[16,128,8,8]" \
  "dx16x64:fused._CONV_DX_BLOCK=[16,64,4]" "dx8:fused._CONV_DX_BLOCK=[8,128,4]" \
  "merge32:fused_merge._MERGE_BLOCK=[32,128]" "merge8:fused_merge._MERGE_BLOCK=[8,128]" \
  "addnorm2x8:fused_norm._ADD_NORM_BLOCK=[2,8,4]" "addnorm4x8w8:fused_norm._ADD_NORM_BLOCK=[4,8,8]" \
  "states512:fused_ssd_bwd._STATES_BLOCK=512" "states2048:fused_ssd_bwd._STATES_BLOCK=2048" \
  "dcbw8:fused_ssd_bwd.DCB_DDA_CONFIG={\"BM\":64,\"BN\":64,\"num_warps\":8,\"num_stages\":2}" \
  "convfwd32:fused._CONV_TOK_BLOCK=[32,128,4]" "convfwd8:fused._CONV_TOK_BLOCK=[8,128,4]" \
  "normfwd4:fused._NORM_FWD_TOK_ROWS=4" > $OUT/ab_s11_2.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab_s11_2.log | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | paste - - | cut -c1-300 | tail -24
timeout 170 python3 benchmarks/api_speed.py --skip-first-call --cells 8000 --out $OUT > $OUT/api_speed_h200_s11.log 2>&1
echo "api rc=$?"; grep -v Warn $OUT/api_speed_h200_s11.log | head -2 | cut -c1-600
exit 0
