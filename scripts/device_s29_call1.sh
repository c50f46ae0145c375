#!/usr/bin/env bash
# Session 29, device call 1 (predictions: benchmarks/NOTES_throughput.md section 31; session 28's call 1, which never ran). At most 8 files under $OUT.
# (1) section 29's queued A/B at the issue's training shape, top-2048 x 48, fresh batches: our dx kernel ("heads")
# and our fused intra-chunk backward ("fused") against mamba-ssm's dx kernel (the largest kernel of the step), with
# the packed transformer in the same rounds; (2) on an H200 only, throughput.py's real-cell, full-length and stress
# settings.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 200 python3 benchmarks/train_ab.py --rounds 12 --warmup-rounds 5 --batches 4 --fresh --k 2048 --cells 48 \
  --arms default "dxheads:fused_ssd_bwd._SSD_BWD_DX=heads" "intra:fused_ssd_bwd._SSD_BWD_INTRA=fused" \
  transformer_varlen --profile --profile-arms default dxheads --out $OUT/ab2048x48_dx_s29.json > $OUT/ab2048_dx_s29.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab2048_dx_s29.log 8
show_profile $OUT/ab2048x48_dx_s29.json
# the deliverable only on the card (sessions 26-27 re-ran it on H100s; the device budget is short)
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
fi
exit 0
