#!/usr/bin/env bash
# Session 11, device call 5 (H200): one head per SSD-forward program below 264 programs (2 per SM) at the small-batch
# settings where the one-pass scan's serial walk is latency-bound: top-4096 with 24 cells (196 programs at 4 heads)
# and top-2048 with 24 cells (same count).
timeout 110 python3 benchmarks/train_ab.py --k 4096 --cells 24 --rounds 16 --batches 6 \
  --out $OUT/train_ab_s11_call5_top4096_h200.json --arms default "ssd1h:fused_ssd._SSD_MIN_PROGRAMS=264" \
  transformer_varlen > $OUT/ab_s11_5a.log 2>&1
echo "ab4096 rc=$?"; grep -v Warn $OUT/ab_s11_5a.log | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | paste - - | cut -c1-260 | tail -3
timeout 90 python3 benchmarks/train_ab.py --k 2048 --cells 24 --rounds 16 --batches 6 \
  --out $OUT/train_ab_s11_call5_top2048_24cells_h200.json --arms default "ssd1h:fused_ssd._SSD_MIN_PROGRAMS=264" \
  transformer_varlen > $OUT/ab_s11_5b.log 2>&1
echo "ab2048 rc=$?"; grep -v Warn $OUT/ab_s11_5b.log | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' | paste - - | cut -c1-260 | tail -3
exit 0
