#!/usr/bin/env bash
# Session 12, device call 2 (H200). 1) the graph tests alone (a failed capture would poison the process), then the conv
# kernel tests in a process of their own; 2) interleaved A/B with 1,024-token buckets: 32 cells (train()'s default
# batch size) and 48 cells, default (eager) vs graphs vs the packed transformer.
timeout 120 python3 -m pytest -q tests/test_nn_graphs.py > $OUT/gpu_tests_s12_2_graphs.log 2>&1
echo "graph tests rc=$?"; tail -3 $OUT/gpu_tests_s12_2_graphs.log
timeout 170 python3 -m pytest -q tests/test_nn_fused.py -k conv > $OUT/gpu_tests_s12_2_conv.log 2>&1
echo "conv tests rc=$?"; tail -2 $OUT/gpu_tests_s12_2_conv.log
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]\|^cuda_graphs.*' | cut -c1-300 | tail -6; }
for cells in 32 48; do
  timeout 110 python3 benchmarks/train_ab.py --k 2048 --cells $cells --rounds 20 --warmup-rounds 16 --batches 8 \
    --out $OUT/train_ab_s12_call2_${cells}cells_h200.json --arms default "graphs:encoder._CUDA_GRAPHS=true" \
    transformer_varlen > $OUT/ab_s12_2_$cells.log 2>&1
  echo "ab$cells rc=$?"; pick $OUT/ab_s12_2_$cells.log
done
exit 0
