#!/usr/bin/env bash
# Session 32, device call 2 (predictions: benchmarks/NOTES_throughput.md section 34): the API's new inference batch
# (40% of free memory, no x2 slack: 512 cells at top-2048 on an 80 GB card) against the old choice (199 cells) in
# the same rounds; the public API's GPU tests (train_runs on the GPU, the batch heuristic). On an H200 the deliverable
# run replaces the tests.
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  full_run 180 250 --only real_,full_L2048,full_L8192,stress --no-profile
else
  timeout 240 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s32.log 2>&1
  echo "model gpu tests rc=$?"; tail -3 $OUT/gpu_model_tests_s32.log
fi
timeout 170 python3 benchmarks/embed_batch_size.py --out $OUT --sizes 199,512 --rounds 4 > $OUT/embed_batch_size.log 2>&1
echo "embed_batch_size rc=$?"; tail -1 $OUT/embed_batch_size.log | cut -c1-700
exit 0
