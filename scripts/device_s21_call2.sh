#!/usr/bin/env bash
# Session 21, device call 2 (predictions: benchmarks/NOTES_throughput.md section 23, call 2). At most 8 files.
# The embedding loop now fills one output buffer (a CPU fix); on the GPU each batch's bf16 output is copied into a
# float32 CPU slice instead of .float().cpu() + cat. Checks: the public API's GPU tests, the GPU kernel tests, and
# the API's embedding speed against the bare encoder (session 21 call 1: 0.907).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_model_gpu.py > $OUT/gpu_tests_model_s21.log 2>&1
echo "model gpu tests rc=$?"; tail -2 $OUT/gpu_tests_model_s21.log
timeout 230 python3 -m pytest -q -p no:cacheprovider -rs tests/test_nn_gpu.py tests/test_nn_training_kernels.py \
  tests/test_nn_fused.py > $OUT/gpu_tests_nn_s21.log 2>&1
echo "nn gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^SKIPPED" $OUT/gpu_tests_nn_s21.log | tail -8
timeout 110 python3 benchmarks/api_speed.py --skip-first-call --cells 4000 --out $OUT > $OUT/api_speed_s21_call2.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*(ratio|per_s)": [0-9.]' $OUT/api_speed_s21_call2.log | head -8
exit 0
