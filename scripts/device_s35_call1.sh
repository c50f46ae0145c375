#!/usr/bin/env bash
# Session 35, device call 1 (predictions: benchmarks/NOTES_throughput.md section 37). The fused AdamW of the training
# plan through the rest of the public API: on an H200 the deliverable run first; then the model and pre-training GPU
# tests; then benchmarks/api_speed.py (train() against the encoder's own fused steps).
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  full_run 170 240 --only real_,full_L2048,full_L8192,stress --no-profile
fi
timeout 200 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s35.log 2>&1
echo "model gpu tests rc=$?"; tail -3 $OUT/gpu_model_tests_s35.log | cut -c1-600
timeout 130 python3 -m pytest -q tests/test_pretrain_gpu.py -p no:cacheprovider > $OUT/gpu_pretrain_tests_s35.log 2>&1
echo "pretrain gpu tests rc=$?"; tail -3 $OUT/gpu_pretrain_tests_s35.log | cut -c1-600
[[ "$gpu" == *H200* ]] && exit 0
timeout 200 python3 benchmarks/api_speed.py --out $OUT --skip-first-call --cells 4000 > $OUT/api_speed.log 2>&1
echo "api_speed rc=$?"; grep -v Warn $OUT/api_speed.log | tail -6 | cut -c1-400
exit 0
