#!/usr/bin/env bash
# Session 23, device call 3 (predictions: benchmarks/NOTES_throughput.md section 25). At most 8 files under $OUT.
# Top-4096 training on one machine, twice in a row with 30 timed steps each (call 2's 12-step run gave
# 0.93x where session 21's gave 1.075x on the same batches): run-to-run spread against the packed transformer.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
for i in 1 2; do
  mkdir -p $OUT/run$i
  timeout 230 python3 benchmarks/throughput.py --out $OUT/run$i --budget-s 200 --only top4096_train --real-steps 30 \
    --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/run$i/throughput_4096.log 2>&1
  echo "run $i rc=$?"; grep -E "ratio" $OUT/run$i/throughput_4096.log | tail -3 | cut -c1-300
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv,noheader
done
exit 0
