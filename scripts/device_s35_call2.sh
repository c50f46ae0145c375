#!/usr/bin/env bash
# Session 35, device call 2 (NOTES section 37): the plan's fused AdamW inside train() against foreach, alternating
# runs on the same model and cells; the steady API arms repeated.
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
timeout 420 python3 benchmarks/api_speed.py --out $OUT --skip-first-call --cells 4000 --graphs-batches 48 \
  --compare fused_adamw > $OUT/api_speed_fused.log 2>&1
echo "api_speed rc=$?"; grep -v Warn $OUT/api_speed_fused.log | grep "summary\|ratio\|real_tokens_per_s\"" | tail -8 | cut -c1-400
exit 0
