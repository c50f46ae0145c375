#!/usr/bin/env bash
# Session 33, device call 1 (predictions: benchmarks/NOTES_throughput.md section 35): section 34's queued call 2 cut
# to the budget left after failed starts. On an H200 the deliverable run only; on an H100 the public API's GPU tests
# (train_runs on the GPU, the default inference batch against the free memory) and the API batch A/B 199 vs 512.
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  full_run 170 240 --only real_,full_L2048,full_L8192,stress --no-profile
  exit 0
fi
timeout 240 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s33.log 2>&1
echo "model gpu tests rc=$?"; tail -3 $OUT/gpu_model_tests_s33.log
timeout 130 python3 benchmarks/embed_batch_size.py --out $OUT --sizes 199,512 --rounds 3 > $OUT/embed_batch_size.log 2>&1
echo "embed_batch_size rc=$?"; tail -1 $OUT/embed_batch_size.log | cut -c1-700
exit 0
