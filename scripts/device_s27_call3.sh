#!/usr/bin/env bash
# Session 27, device call 3 (predictions: benchmarks/NOTES_throughput.md section 29): the public API's and the kernels'
# GPU tests after this session's and session 26's late changes (the torch backend's scan walks unbind, the reference
# of the parity tests; config.json's keys from one constant; CLI stops).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py > $OUT/gpu_tests_model_s27.log 2>&1
echo "model gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/gpu_tests_model_s27.log | tail -12
timeout 330 python3 -m pytest -q -p no:cacheprovider -rs --durations=3 tests/test_nn_gpu.py tests/test_nn_graphs.py \
  > $OUT/gpu_tests_nn_s27.log 2>&1
echo "nn gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^SKIPPED" $OUT/gpu_tests_nn_s27.log | tail -8
exit 0
