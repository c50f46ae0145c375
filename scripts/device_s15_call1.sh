#!/usr/bin/env bash
# Queued by session 14 for the next session's first device call (H200). 1) the compiled tests session 14 could not
# run: A at once under activation checkpointing (after the _run_fused fix), dt_both, the bf16 C B^T option; 2) an
# interleaved A/B at 48 cells with 16 warm-up rounds: default vs C B^T in bf16 vs per-layer A vs the packed
# transformer, with the default's profile.
timeout 120 python3 -m pytest -v -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "every_layers or dt_both or cb_in_bf16 or db_cumsum" > $OUT/gpu_tests_s15_1.log 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR" $OUT/gpu_tests_s15_1.log | cut -c1-150 | head -8
source scripts/device_lib.sh
timeout 250 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 --warmup-rounds 4 \
  --out $OUT/train_ab_s15_call1_48cells_h200.json --arms default transformer_varlen "cb16:fused_ssd_bwd._CB_IN_BF16=true" \
  "perlayerA:fused_ssd._A_ONCE=false" "dbfold:fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=true" --profile --profile-arms default cb16 > $OUT/ab_s15_1.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s15_1.log
exit 0
