#!/usr/bin/env bash
# Session 15, device call 2 (H200): 1) the census of one 48-cell training step's device operations by issuing
# line (genemamba and the packed transformer); 2) every parameter gradient of the 24 x 512 step with C B^T in
# bf16 (_CB_IN_BF16) against the other bf16 paths, and four AdamW steps on it.
source scripts/device_lib.sh
timeout 200 python3 benchmarks/launch_overhead.py --census --out $OUT/launch_census_s15_h200.json > $OUT/census_s15.log 2>&1
echo "census rc=$?"; head -c 6000 $OUT/census_s15.log
timeout 240 python3 benchmarks/training_grad_check.py --loss proj --configs fused_both cb_bf16 default \
  --steps-config cb_bf16 --out $OUT/training_grad_check_cb16_s15_h200.json > $OUT/grad_check_s15.log 2>&1
echo "grad rc=$?"; cut -c1-900 $OUT/grad_check_s15.log | tail -12
exit 0
