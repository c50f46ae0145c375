#!/usr/bin/env bash
# Session 9, device call 3 (H200): where the fused d(CB)+ddA step's time goes (profile per arm), two launch
# shapes of ssd_dcb_ddacs in the step, then the compiled training-kernel tests.
F=fused_ssd_bwd
timeout 200 python3 benchmarks/train_ab.py --rounds 20 --profile --out $OUT/train_ab_s9_call3_h200.json --arms default \
  "fused:$F._SSD_BWD_DDA=fused" \
  "fused_64x32w4:$F._SSD_BWD_DDA=fused;$F.DCB_DDA_CONFIG={\"BM\":64,\"BN\":32,\"num_warps\":4,\"num_stages\":2}" \
  "fused_32x32w1:$F._SSD_BWD_DDA=fused;$F.DCB_DDA_CONFIG={\"BM\":32,\"BN\":32,\"num_warps\":1,\"num_stages\":2}" \
  > $OUT/ab3.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab3.log | cut -c1-1600 | tail -12
timeout 230 python3 -m pytest -q tests/test_nn_training_kernels.py -p no:cacheprovider > $OUT/gpu_tests3.log 2>&1
echo "tests rc=$?"; tail -5 $OUT/gpu_tests3.log
exit 0
