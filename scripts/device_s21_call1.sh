#!/usr/bin/env bash
# Session 21, device call 1 (predictions: benchmarks/NOTES_throughput.md section 23). At most 8 files under $OUT.
# Session 20's call (never started) with top-4096 back in: the public API's GPU tests, the issue's deliverable run
# (top-2048 and top-4096 against the packed transformer), then the public API's speed. Ordered by value.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
full_run 230 260 --only top2048,top4096
timeout 120 python3 benchmarks/api_speed.py --skip-first-call --cells 8000 --out $OUT > $OUT/api_speed_s21.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*": [0-9.]' $OUT/api_speed_s21.log | head -12
exit 0
