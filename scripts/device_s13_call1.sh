#!/usr/bin/env bash
# Queued for the next session's first device call (H200): written in session 12, NOT yet run.
# 1) the GPU graph tests after session 12's review fixes (they ran on CPU with an eager stand-in only), the fp32
#    parity case included (its mamba-ssm kernels autotune: give it time); 2) interleaved A/B at 32 cells (train()'s
#    default batch): eager vs graphs with 1,024- and 512-token buckets vs the packed transformer.
timeout -s ABRT 300 python3 -X faulthandler -m pytest -x -q -rA tests/test_nn_graphs.py > $OUT/gpu_tests_s13_1_graphs.log 2>&1
echo "graph tests rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|^E |passed|failed" $OUT/gpu_tests_s13_1_graphs.log | head -20
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]\|^cuda_graphs.*' | cut -c1-300 | tail -8; }
timeout 200 python3 benchmarks/train_ab.py --k 2048 --cells 32 --rounds 20 --warmup-rounds 16 --batches 8 \
  --out $OUT/train_ab_s13_call1_32cells_h200.json --arms default "graphs:encoder._CUDA_GRAPHS=true" \
  "graphs512:encoder._CUDA_GRAPHS=true;encoder._GRAPH_BUCKET_TOKENS=512" transformer_varlen > $OUT/ab_s13_1.log 2>&1
echo "ab32 rc=$?"; pick $OUT/ab_s13_1.log
exit 0
