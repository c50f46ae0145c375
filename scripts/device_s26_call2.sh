#!/usr/bin/env bash
# Session 26, device call 2 (predictions: benchmarks/NOTES_throughput.md section 28). At most 8 files under $OUT.
# The public API's GPU path after sessions 22-26's changes (model GPU tests last ran in session 21), with a new
# test of a user's GPU session (train, head, predict, save, load on GPU and CPU); the nn GPU and graph tests; the
# API's embedding and training speed against the bare encoder (api_speed.py).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 170 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py > $OUT/gpu_tests_model_s26.log 2>&1
echo "model gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/gpu_tests_model_s26.log | tail -12
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_nn_gpu.py tests/test_nn_graphs.py \
  > $OUT/gpu_tests_nn_s26.log 2>&1
echo "nn gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^SKIPPED" $OUT/gpu_tests_nn_s26.log | tail -8
timeout 120 python3 benchmarks/api_speed.py --skip-first-call --cells 4000 --out $OUT > $OUT/api_speed_s26.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*(ratio|per_s)": [0-9.]' $OUT/api_speed_s26.log | head -8
exit 0
