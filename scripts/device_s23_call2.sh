#!/usr/bin/env bash
# Session 23, device call 2, on an H200 (predictions: benchmarks/NOTES_throughput.md section 25). At most 8 files.
# The card: the deliverable run (top-2048 and top-4096 against the packed transformer, pinned autotune) with
# today's code, then the open H200 question of session 15: the fresh top-4096 A/B against the transformer (0.83
# there) with the allocator's calls per arm, and without the transformer arm.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
full_run 230 260 --only top2048,top4096
timeout 110 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 24 --warmup-rounds 3 \
  --arms default transformer_varlen --out $OUT/train_ab_s23_fresh_4096_vs_transformer.json > $OUT/ab4096_s23.log 2>&1
echo "ab4096 vs transformer rc=$?"; pick $OUT/ab4096_s23.log 4
grep -o '"allocator": {[^}]*}' $OUT/ab4096_s23.log | head -2
timeout 80 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 24 --warmup-rounds 3 \
  --arms default "lean:fused._CONV_FWD_VARIANT=lean" --out $OUT/train_ab_s23_fresh_4096_mamba_only.json \
  > $OUT/ab4096_mamba_s23.log 2>&1
echo "ab4096 mamba-only rc=$?"; pick $OUT/ab4096_mamba_s23.log 4
grep -o '"allocator": {[^}]*}' $OUT/ab4096_mamba_s23.log | head -2
exit 0
