#!/usr/bin/env bash
# Session 20, device call 1 (predictions: benchmarks/NOTES_throughput.md section 22). At most 8 files under $OUT.
# Ordered by value, since a cut run keeps what it wrote: the public API's GPU tests, the deliverable run,
# the public API's speed, then (H200 only) the top-4096 A/B against the packed transformer.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
full_run 200 230 --only top2048,top4096
timeout 120 python3 benchmarks/api_speed.py --skip-first-call --cells 8000 --out $OUT > $OUT/api_speed_s20.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*": [0-9.]' $OUT/api_speed_s20.log | head -12
case "$GPU" in
  *H200*)
    timeout 80 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 20 --warmup-rounds 3 \
      --out $OUT/train_ab_s20_fresh_4096_vs_transformer.json --arms default transformer_varlen > $OUT/ab_s20.log 2>&1
    echo "ab4096 vs transformer rc=$?"; pick $OUT/ab_s20.log ;;
esac
exit 0
