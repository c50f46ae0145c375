#!/usr/bin/env bash
# Session 29, device call 2 (predictions: benchmarks/NOTES_throughput.md section 31): call 1 cut to the device time
# left after refused starts. On an H200, the deliverable only (throughput.py's real-cell, full-length and stress
# settings, with the packed transformer); on an H100, the dx A/B only (our dx kernel against mamba-ssm's at
# top-2048 x 48, fresh batches, 8 timed rounds, no profile).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
else
  timeout 170 python3 benchmarks/train_ab.py --rounds 8 --warmup-rounds 3 --batches 4 --fresh --k 2048 --cells 48 \
    --arms default "dxheads:fused_ssd_bwd._SSD_BWD_DX=heads" --out $OUT/ab2048x48_dx_s29.json > $OUT/ab2048_dx_s29.log 2>&1
  echo "ab2048x48 rc=$?"; pick $OUT/ab2048_dx_s29.log 4
fi
exit 0
