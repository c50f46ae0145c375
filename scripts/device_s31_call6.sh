#!/usr/bin/env bash
# Session 31, device call 6 (predictions: benchmarks/NOTES_throughput.md section 33): train()'s background
# tokenization on a GPU, alternating on/off runs; then the model GPU tests and the prefetch tests.
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 260 python3 benchmarks/api_speed.py --skip-steady --skip-first-call --cells 4000 --graphs-batches 48 \
  --compare prefetch --graphs-repeats 4 --graphs-warmup 10 --graphs-steps 40 --out $OUT > $OUT/prefetch_train_s31.log 2>&1
echo "prefetch compare rc=$?"; grep -E '"on_over_off"|real_tokens_per_s' $OUT/prefetch_train_s31.log | cut -c1-160 | tail -10
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py tests/test_prefetch.py > $OUT/gpu_model_tests_s31c.log 2>&1
echo "model gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/gpu_model_tests_s31c.log | tail -6
exit 0
