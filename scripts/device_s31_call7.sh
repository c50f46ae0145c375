#!/usr/bin/env bash
# Session 31, device call 7 (NOTES section 33; ~370 s of budget left): on an H200 the deliverable run first (the
# real-cell settings with the packed transformer, a short budget), then train()'s background-tokenization A/B (2
# repeats); on an H100 call 6 (the A/B with 4 repeats, then the model GPU tests).
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  source scripts/device_lib.sh
  full_run 100 150 --only real_ --no-profile
  timeout 90 python3 benchmarks/api_speed.py --skip-steady --skip-first-call --cells 2000 --graphs-batches 48 \
    --compare prefetch --graphs-repeats 2 --graphs-warmup 8 --graphs-steps 30 --out $OUT > $OUT/prefetch_train_s31.log 2>&1
  echo "prefetch compare rc=$?"; grep -E '"on_over_off"' $OUT/prefetch_train_s31.log | tail -2
else
  bash scripts/device_s31_call6.sh
fi
exit 0
