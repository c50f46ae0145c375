#!/usr/bin/env bash
# Session 20, device call 1 (predictions: benchmarks/NOTES_throughput.md section 22). At most 8 files under $OUT.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
timeout 80 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
timeout 110 python3 -m pytest -q -p no:cacheprovider -x tests/test_pretrained_paths.py > $OUT/tests_s20.log 2>&1
echo "pretrained-path tests on a GPU machine rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/tests_s20.log | head -12
timeout 150 python3 benchmarks/api_speed.py --skip-first-call --cells 10000 --out $OUT > $OUT/api_speed_s20.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*": [0-9.]' $OUT/api_speed_s20.log | head -12
full_run 215 245 --only top2048,top4096
case "$GPU" in
  *H200*)
    timeout 80 python3 benchmarks/train_ab.py --fresh --k 4096 --cells 24 --rounds 20 --warmup-rounds 3 \
      --out $OUT/train_ab_s20_fresh_4096_vs_transformer.json --arms default transformer_varlen > $OUT/ab_s20.log 2>&1
    echo "ab4096 vs transformer rc=$?"; pick $OUT/ab_s20.log ;;
esac
exit 0
