#!/usr/bin/env bash
# Session 19, device call 1: session 16's queued call (device_s16_call1.sh) with timeouts trimmed to one 600 s call.
# Also the public API's GPU tests first (session 17's from_pretrained-on-the-GPU test among them).
# Predictions: benchmarks/NOTES_throughput.md sections 19 (queued) and 20, and section 21 (this session).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 70 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -2
timeout 50 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py tests/test_nn_fused.py \
  tests/test_nn_fused_weights.py -k "lean_launches or weights_once or linear_low or merge" 2>&1 | tail -2
timeout 90 python3 benchmarks/train_ab.py --fresh --k 2048 --cells 48 --rounds 20 --warmup-rounds 3 \
  --out $OUT/train_ab_s19_call1_fresh_48_weights_once.json --arms default \
  "wonce:fused_weights._WEIGHTS_ONCE=true" "mbmm:fused_merge._MERGE_BMM=true" \
  "both:fused_weights._WEIGHTS_ONCE=true;fused_merge._MERGE_BMM=true" transformer_varlen > $OUT/ab_s19_1w.log 2>&1
echo "ab48 weights-once rc=$?"; pick $OUT/ab_s19_1w.log
timeout 175 python3 benchmarks/throughput.py --out $OUT --budget-s 150 --only top4096 --steps 20 --no-profile \
  --autotune pin:benchmarks/results/throughput_h200_s7_final.json > $OUT/throughput_4096_s19.log 2>&1
echo "throughput rc=$?"; grep -E "real_top4096_train|ratio" $OUT/throughput_4096_s19.log | tail -6
S14="s14:fused_split._LEAN_LAUNCHES=false;fused_ssd_bwd._CB_IN_BF16=false;fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM=false"
timeout 90 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 20 --warmup-rounds 3 \
  --out $OUT/train_ab_s19_call1_fresh_4096_mamba_only.json --arms default "$S14" \
  notlean:fused_split._LEAN_LAUNCHES=false > $OUT/ab_s19_1a.log 2>&1
echo "ab4096 mamba-only rc=$?"; pick $OUT/ab_s19_1a.log
timeout 75 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 20 --warmup-rounds 3 \
  --out $OUT/train_ab_s19_call1_fresh_4096_vs_transformer.json --arms default transformer_varlen > $OUT/ab_s19_1b.log 2>&1
echo "ab4096 vs transformer rc=$?"; pick $OUT/ab_s19_1b.log
exit 0
