#!/usr/bin/env bash
# Session 9, device call 4 (H200): the segmented-scan per-sequence ddA sum, compiled tests, grads, A/B + profile.
timeout 150 python3 -m pytest -q tests/test_nn_training_kernels.py -p no:cacheprovider \
  -k "reverse_sum or dcb_pass or chunk_bwd_pass or ssd_backward_with_state_walks or dcb_ddacs_equals" > $OUT/gpu_tests4.log 2>&1
echo "tests rc=$?"; tail -3 $OUT/gpu_tests4.log
timeout 90 python3 benchmarks/training_grad_check.py --out $OUT/training_grad_check_s9_call4_h200.json --steps 0 \
  --configs fused_dda fused_both --batch real_top2048_48 > $OUT/grad4.log 2>&1
echo "grad rc=$?"; grep -o '"fused_[a-z]*": {"loss[^]]*\]' $OUT/grad4.log | cut -c1-200; grep -o '"median_rel_vs_session6": [0-9.e-]*' $OUT/grad4.log
timeout 150 python3 benchmarks/train_ab.py --rounds 24 --profile --out $OUT/train_ab_s9_call4_h200.json --arms default \
  "fused:fused_ssd_bwd._SSD_BWD_DDA=fused" transformer_varlen > $OUT/ab4.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab4.log | cut -c1-900 | tail -6
exit 0
