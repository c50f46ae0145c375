#!/usr/bin/env bash
# Session 20, device call 1 (predictions: benchmarks/NOTES_throughput.md section 22). At most 8 files under $OUT.
# Ordered by value, since a run cut by the device budget keeps what it wrote: the public API's GPU tests, the issue's
# top-2048 deliverable run, then the public API's speed. (Trimmed to ~330 s: refused starts took 1,400 s of 1,800.)
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
full_run 140 165 --only top2048
timeout 100 python3 benchmarks/api_speed.py --skip-first-call --cells 4000 --out $OUT > $OUT/api_speed_s20.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*": [0-9.]' $OUT/api_speed_s20.log | head -12
exit 0
