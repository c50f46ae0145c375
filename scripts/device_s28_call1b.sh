#!/usr/bin/env bash
# Session 28, device call 1b (predictions: benchmarks/NOTES_throughput.md section 30): call 1 cut to what the last
# ~300 s of the budget can hold after refused starts: our dx kernel ("heads") against mamba-ssm's at top-2048 x 48,
# fresh batches, 8 timed rounds, no profile.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 170 python3 benchmarks/train_ab.py --rounds 8 --warmup-rounds 3 --batches 4 --fresh --k 2048 --cells 48 \
  --arms default "dxheads:fused_ssd_bwd._SSD_BWD_DX=heads" --out $OUT/ab2048x48_dx_s28.json > $OUT/ab2048_dx_s28.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab2048_dx_s28.log 4
exit 0
