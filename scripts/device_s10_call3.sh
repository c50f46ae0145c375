#!/usr/bin/env bash
# Session 10, device call 3 (H200): A/B of the tuned-key autotuner path and the merge bias sum; compiled tests of
# the changed paths; launch overhead; the full throughput run with this session's default.
timeout 160 python3 benchmarks/train_ab.py --rounds 20 --profile --profile-arms default \
  --out $OUT/train_ab_s10_call3_h200.json --arms default ablation_autotuner_run ablation_merge_db_sum \
  transformer_varlen > $OUT/ab3.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab3.log | cut -c1-600 | tail -6
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_nn_autotune.py tests/test_nn_training_kernels.py \
  -k "autotune or encoder_training or gate_merge or merge_db" > $OUT/gpu_tests3.log 2>&1
echo "tests rc=$?"; tail -3 $OUT/gpu_tests3.log
timeout 100 python3 benchmarks/launch_overhead.py --out $OUT/launch_overhead_s10_call3_h200.json > $OUT/launch3.log 2>&1
echo "launch rc=$?"; grep -v Warn $OUT/launch3.log | cut -c1-500 | tail -2
timeout 220 python3 benchmarks/throughput.py --out $OUT --budget-s 170 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target" $OUT/throughput_h200.log | tail -3
exit 0
