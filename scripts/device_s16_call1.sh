#!/usr/bin/env bash
# Queued by session 15 for the next session's first device call (H200): the open top-4096 training question.
# 1) throughput.py at top-4096 only, 20 timed steps (not 5), with the session-15 ablations on the same batches;
# 2) fresh-batch A/B at top-4096 x 24 without the transformer arm (does alternating with it slow GeneMamba?);
# 3) the same with the transformer arm, for the paired ratio.
source scripts/device_lib.sh
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py tests/test_nn_fused.py \
  tests/test_nn_fused_weights.py -k "lean_launches or weights_once or linear_low or merge" 2>&1 | tail -2
timeout 120 python3 benchmarks/train_ab.py --fresh --k 2048 --cells 48 --rounds 20 --warmup-rounds 3 \
  --out $OUT/train_ab_s16_call1_fresh_48_weights_once_h200.json --arms default \
  "wonce:fused_weights._WEIGHTS_ONCE=true" "mbmm:fused_merge._MERGE_BMM=true" \
  "both:fused_weights._WEIGHTS_ONCE=true;fused_merge._MERGE_BMM=true" transformer_varlen > $OUT/ab_s16_1w.log 2>&1
echo "ab48 weights-once rc=$?"; pick $OUT/ab_s16_1w.log
timeout 200 python3 benchmarks/throughput.py --out $OUT --budget-s 170 --only top4096 --steps 20 \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_4096_s16.log 2>&1
echo "throughput rc=$?"; grep -E "real_top4096_train|ratio" $OUT/throughput_4096_s16.log | tail -6
S14="s14:fused_split._LEAN_LAUNCHES=false;fused_ssd_bwd._CB_IN_BF16=false;fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=false"
timeout 120 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 30 --warmup-rounds 3 \
  --out $OUT/train_ab_s16_call1_fresh_4096_mamba_only_h200.json --arms default "$S14" \
  notlean:fused_split._LEAN_LAUNCHES=false > $OUT/ab_s16_1a.log 2>&1
echo "ab4096 mamba-only rc=$?"; pick $OUT/ab_s16_1a.log
timeout 120 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 30 --warmup-rounds 3 \
  --out $OUT/train_ab_s16_call1_fresh_4096_vs_transformer_h200.json --arms default transformer_varlen > $OUT/ab_s16_1b.log 2>&1
echo "ab4096 vs transformer rc=$?"; pick $OUT/ab_s16_1b.log
exit 0
