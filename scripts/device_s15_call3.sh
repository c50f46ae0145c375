#!/usr/bin/env bash
# Session 15, device call 3 (H200): GPU tests of the lean backward (weight_grad, norms, merge, the encoder's fused
# training step against the torch backend, dt_both); the census again; interleaved A/B at 48 cells: the new default
# against session 14's launches (s14: the three session-15 switches off), lean off alone, the packed transformer.
timeout 150 python3 -m pytest -v -p no:cacheprovider tests/test_nn_training_kernels.py tests/test_nn_fused.py \
  -k "weight_grad or add_rms_norm or gate_merge_train or fused_path_equals_the_torch or dt_both or gated_norm_out_proj" \
  > $OUT/gpu_tests_s15_3.log 2>&1
echo "tests rc=$?"; grep -cE "PASSED" $OUT/gpu_tests_s15_3.log; grep -E "FAILED|ERROR" $OUT/gpu_tests_s15_3.log | cut -c1-200 | head -8
source scripts/device_lib.sh
timeout 120 python3 benchmarks/launch_overhead.py --census --out $OUT/launch_census_s15_call3_h200.json > $OUT/census_s15_3.log 2>&1
echo "census rc=$?"; grep -E "^(genemamba|transformer)" $OUT/census_s15_3.log
timeout 260 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 --warmup-rounds 4 \
  --out $OUT/train_ab_s15_call3_48cells_h200.json --arms default transformer_varlen \
  "s14:fused_split._LEAN_LAUNCHES=false;fused_ssd_bwd._CB_IN_BF16=false;fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=false" \
  "notlean:fused_split._LEAN_LAUNCHES=false" --profile --profile-arms default s14 > $OUT/ab_s15_3.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s15_3.log
exit 0
