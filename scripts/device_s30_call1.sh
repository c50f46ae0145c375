#!/usr/bin/env bash
# Session 30, device call 1 (predictions: benchmarks/NOTES_throughput.md section 32). Section 31's queue, reordered so
# the deliverable comes first on the card: (1) on an H200, throughput.py's real-cell, full-length and stress
# settings with the packed transformer; (2) the dx / intra A/B at top-2048 x 48, fresh batches, the packed transformer
# in the same rounds (shorter on an H200, after the deliverable).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
rounds=12; limit=240
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
  rounds=6; limit=200
fi
timeout $limit python3 benchmarks/train_ab.py --rounds $rounds --warmup-rounds 3 --batches 4 --fresh --k 2048 --cells 48 \
  --arms default "dxheads:fused_ssd_bwd._SSD_BWD_DX=heads" "intra:fused_ssd_bwd._SSD_BWD_INTRA=fused" \
  transformer_varlen --out $OUT/ab2048x48_dx_s30.json > $OUT/ab2048_dx_s30.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab2048_dx_s30.log 8
exit 0
