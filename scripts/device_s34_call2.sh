#!/usr/bin/env bash
# Session 34, device call 2 (NOTES section 36): the plan's AdamW fused on a GPU, through the public API.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 160 python3 benchmarks/pretrain_speed.py --out $OUT --rounds 2 --steps 24 > $OUT/pretrain_speed.log 2>&1
echo "pretrain_speed rc=$?"; grep '^{' $OUT/pretrain_speed.log | tail -1 | cut -c1-600
