#!/usr/bin/env bash
# Session 31, device call 1 (predictions: benchmarks/NOTES_throughput.md section 33; = session 30's call 3): the public API's GPU tests (the
# new in-silico perturbation among them; the tokens of genes without a model median changed), then throughput.py's
# real-cell, full-length and stress settings with the packed transformer (the deliverable on an H200; on an H100 as in
# sessions 26-27).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 120 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s31.log 2>&1
echo "model gpu tests rc=$?"; tail -4 $OUT/gpu_model_tests_s31.log
full_run 180 230 --only real_,full_L2048,full_L8192,stress --no-profile
exit 0
