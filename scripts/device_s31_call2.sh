#!/usr/bin/env bash
# Session 31, device call 2 (NOTES section 33): on an H200 the deliverable run (section 32's queue: throughput.py's
# real-cell, full-length and stress settings with the packed transformer); on an H100 (call 1 ran it there) the
# nn-level GPU tests, last run in session 26.
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  full_run 180 230 --only real_,full_L2048,full_L8192,stress --no-profile
else
  timeout 240 python3 -m pytest -q -p no:cacheprovider -rs tests/test_nn_gpu.py tests/test_nn_graphs.py \
    tests/test_precision.py > $OUT/gpu_nn_tests_s31.log 2>&1
  echo "nn gpu tests rc=$?"; tail -4 $OUT/gpu_nn_tests_s31.log
fi
exit 0
