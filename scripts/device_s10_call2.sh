#!/usr/bin/env bash
# Session 10, device call 2 (H200): Triton launch overhead and the cached launcher; A/B of the three new levers
# (cached launches, conv dx with cell bounds, merge bias gradient in the kernel); compiled tests of what changed.
timeout 150 python3 benchmarks/launch_overhead.py --out $OUT/launch_overhead_s10_h200.json > $OUT/launch.log 2>&1
echo "launch rc=$?"; grep -v Warn $OUT/launch.log | cut -c1-700 | tail -3
timeout 200 python3 benchmarks/train_ab.py --rounds 20 --profile --profile-arms default \
  --out $OUT/train_ab_s10_call2_h200.json --arms default ablation_triton_launch ablation_conv_dx_cell_ids \
  ablation_merge_db_sum transformer_varlen > $OUT/ab2.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab2.log | cut -c1-700 | tail -7
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/test_nn_launch.py tests/test_nn_fused.py \
  tests/test_nn_training_kernels.py -k "launch or conv_both or gate_merge or encoder_training" \
  > $OUT/gpu_tests2.log 2>&1
echo "tests rc=$?"; tail -4 $OUT/gpu_tests2.log
exit 0
