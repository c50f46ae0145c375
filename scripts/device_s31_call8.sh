#!/usr/bin/env bash
# Session 31, device call 8 (NOTES section 33; ~270 s of budget left, an H100): call 6 cut short: train()'s
# background-tokenization A/B in 2 alternating repeats, then the new GPU test of it.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 110 python3 benchmarks/api_speed.py --skip-steady --skip-first-call --cells 2000 --graphs-batches 48 \
  --compare prefetch --graphs-repeats 2 --graphs-warmup 8 --graphs-steps 30 --out $OUT > $OUT/prefetch_train_s31.log 2>&1
echo "prefetch compare rc=$?"; grep -E '"on_over_off"|real_tokens_per_s' $OUT/prefetch_train_s31.log | cut -c1-150 | tail -6
timeout 80 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py -k "background or bf16_mixed" > $OUT/gpu_model_tests_s31c.log 2>&1
echo "model gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/gpu_model_tests_s31c.log | tail -6
exit 0
