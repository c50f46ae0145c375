#!/usr/bin/env bash
# Session 15, device call 5 (H200): why throughput.py's default ran slower than in session 14 on real cells (never-met
# packed lengths every step) while the A/B on 8 reused batches ran faster. 1) the weight-gradient GEMM with an fp32
# output vs bf16 + cast on new and repeated lengths; 2) A/B with a new batch for every arm and round (--fresh), at
# top-2048 x 48 and top-4096 x 24: default, fp32-output GEMMs off, lean off, session 14's switches, the transformer.
source scripts/device_lib.sh
timeout 60 python3 benchmarks/launch_overhead.py --gemm --n 40 --out $OUT/gemm_new_shapes_s15_h200.json 2>&1 | tail -2
ARMS="default transformer_varlen nomm:fused_split._GRAD_GEMM_FP32_OUT=false notlean:fused_split._LEAN_LAUNCHES=false"
S14="s14:fused_split._LEAN_LAUNCHES=false;fused_ssd_bwd._CB_IN_BF16=false;fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=false"
timeout 150 python3 benchmarks/train_ab.py --fresh --k 2048 --cells 48 --rounds 16 --warmup-rounds 3 \
  --out $OUT/train_ab_s15_call5_fresh_48cells_h200.json --arms $ARMS "$S14" > $OUT/ab_s15_5a.log 2>&1
echo "ab48 fresh rc=$?"; pick $OUT/ab_s15_5a.log
timeout 120 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 16 --warmup-rounds 3 \
  --out $OUT/train_ab_s15_call5_fresh_4096x24_h200.json --arms $ARMS "$S14" > $OUT/ab_s15_5b.log 2>&1
echo "ab4096 fresh rc=$?"; pick $OUT/ab_s15_5b.log
exit 0
