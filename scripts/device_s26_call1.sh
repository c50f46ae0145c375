#!/usr/bin/env bash
# Session 26, device call 1: session 25's queued call 3 (predictions: NOTES_throughput.md sections 27-28), then throughput.py.
# Call 2 found a GeneMamba training step host-bound or nearly so (enqueue 0.7-1.0 of wall). CUDA graphs of the
# encoder's pass (nn/graphs.py, opt-in since session 12, when 48 cells gained nothing) against eager and the packed
# transformer on today's kernels: top-2048 x 48 and top-4096 x 24, batches reused (each bucket captured in warm-up).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
AB="python3 benchmarks/train_ab.py --rounds 16 --warmup-rounds 8 --batches 4"
G="graphs:encoder._CUDA_GRAPHS=true"
timeout 130 $AB --k 2048 --cells 48 --arms default "$G" transformer_varlen \
  --out $OUT/ab2048_graphs_s26.json > $OUT/ab_graphs_s26.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab_graphs_s26.log 6; grep "^cuda_graphs" $OUT/ab_graphs_s26.log | cut -c1-300
timeout 110 $AB --k 4096 --cells 24 --arms default "$G" transformer_varlen \
  --out $OUT/ab4096_graphs_s26.json >> $OUT/ab_graphs_s26.log 2>&1
echo "ab4096x24 rc=$?"; pick $OUT/ab_graphs_s26.log 6; grep "^cuda_graphs" $OUT/ab_graphs_s26.log | tail -1 | cut -c1-300
# then throughput.py's real-cell, full-length and stress settings (the deliverable, on whichever card came)
full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
exit 0
