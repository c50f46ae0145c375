#!/usr/bin/env bash
# Session 12, device call 1 (H200): CUDA graphs of the packed encoder's training pass (nn/graphs.py).
# 1) compiled tests: the graph tests against eager training, and the conv kernels folded after session 11's last run;
# 2) interleaved A/B, real top-2048: default (eager) vs graphs vs the packed transformer, 48 cells then 24 cells.
#    16 warm-up rounds over 8 batches: every batch's bucket is seen twice (eager, then captured) before timing.
timeout 200 python3 -m pytest -q tests/test_nn_graphs.py tests/test_nn_fused.py -k "graph or conv" \
  > $OUT/gpu_tests_s12_1.log 2>&1
echo "tests rc=$?"; tail -5 $OUT/gpu_tests_s12_1.log
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]\|^cuda_graphs.*' | cut -c1-300 | tail -6; }
timeout 200 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 --warmup-rounds 16 --batches 8 \
  --out $OUT/train_ab_s12_call1_48cells_h200.json --arms default "graphs:encoder._CUDA_GRAPHS=true" \
  transformer_varlen --profile --profile-arms default graphs > $OUT/ab_s12_1a.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s12_1a.log
timeout 150 python3 benchmarks/train_ab.py --k 2048 --cells 24 --rounds 20 --warmup-rounds 16 --batches 8 \
  --out $OUT/train_ab_s12_call1_24cells_h200.json --arms default "graphs:encoder._CUDA_GRAPHS=true" \
  transformer_varlen > $OUT/ab_s12_1b.log 2>&1
echo "ab24 rc=$?"; pick $OUT/ab_s12_1b.log
exit 0
