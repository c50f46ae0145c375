#!/usr/bin/env bash
# Session 13, device call 4 (H200, the session's last): the full throughput run with the new default (the d(CB)+ddA
# pass's split decay) to refresh benchmarks/results/throughput_h200.json and its PNG.
timeout 290 python3 benchmarks/throughput.py --out $OUT --budget-s 230 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_h200.log 2>&1
echo "throughput rc=$?"; grep "^target" $OUT/throughput_h200.log | tail -4
exit 0
