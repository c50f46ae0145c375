#!/usr/bin/env bash
# Session 10, device call 1 (H200): where the step's wall time above its GPU time goes (trace gaps, host
# enqueue time, host syncs), the full throughput run with the session-9 default, and the GPU tests not yet run.
timeout 170 python3 benchmarks/train_ab.py --rounds 16 --profile --trace-dir $OUT/traces \
  --out $OUT/train_ab_s10_call1_h200.json --arms default transformer_varlen > $OUT/ab1.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab1.log | cut -c1-1600 | tail -5
timeout 200 python3 benchmarks/throughput.py --out $OUT --budget-s 180 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target\|ratio" $OUT/throughput_h200.log | tail -8
timeout 100 python3 -m pytest -q tests/test_nn_packed.py -p no:cacheprovider -k "dummy_pad" > $OUT/gpu_tests1.log 2>&1
echo "pad test rc=$?"; tail -3 $OUT/gpu_tests1.log
timeout 110 python3 -m pytest -q tests/test_nn_training_kernels.py -p no:cacheprovider -x > $OUT/gpu_tests1b.log 2>&1
echo "kernel tests rc=$?"; tail -3 $OUT/gpu_tests1b.log
exit 0
