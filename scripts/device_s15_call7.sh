#!/usr/bin/env bash
# Session 15, device call 7 (H200, short, the budget's rest): top-4096 x 24 training with a new batch for every arm
# and round, 30 rounds: the final default against lean off, session 14's switches and the packed transformer.
source scripts/device_lib.sh
S14="s14:fused_split._LEAN_LAUNCHES=false;fused_ssd_bwd._CB_IN_BF16=false;fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=false"
timeout 120 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 30 --warmup-rounds 3 \
  --out $OUT/train_ab_s15_call7_fresh_4096x24_h200.json --arms default transformer_varlen \
  notlean:fused_split._LEAN_LAUNCHES=false "$S14" > $OUT/ab_s15_7.log 2>&1
echo "ab4096 fresh rc=$?"; pick $OUT/ab_s15_7.log
exit 0
