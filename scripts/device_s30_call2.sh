#!/usr/bin/env bash
# Session 30, device call 2 (predictions: benchmarks/NOTES_throughput.md section 32): call 1 cut to the card
# and its deliverable (refused starts took part of the budget). On an H200: throughput.py's real-cell, full-length and
# stress settings with the packed transformer, then, in what is left of the limit, the dx A/B (6 rounds). On an H100:
# the dx A/B only.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
fi
timeout 150 python3 benchmarks/train_ab.py --rounds 6 --warmup-rounds 3 --batches 4 --fresh --k 2048 --cells 48 \
  --arms default "dxheads:fused_ssd_bwd._SSD_BWD_DX=heads" transformer_varlen \
  --out $OUT/ab2048x48_dx_s30.json > $OUT/ab2048_dx_s30.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab2048_dx_s30.log 6
exit 0
