#!/usr/bin/env bash
# Session 34, device call 1 (predictions: benchmarks/NOTES_throughput.md section 36). Corpus pre-training on a GPU
# through the public API, never run before: its GPU tests, then benchmarks/pretrain_speed.py (the API against the
# module's own steps, and a fused AdamW). On an H200 the deliverable run comes first.
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
if [[ "$gpu" == *H200* ]]; then
  full_run 170 240 --only real_,full_L2048,full_L8192,stress --no-profile
fi
timeout 140 python3 -m pytest -q tests/test_pretrain_gpu.py -p no:cacheprovider > $OUT/gpu_pretrain_tests.log 2>&1
echo "pretrain gpu tests rc=$?"; tail -5 $OUT/gpu_pretrain_tests.log | cut -c1-600
[[ "$gpu" == *H200* ]] && exit 0
timeout 180 python3 benchmarks/pretrain_speed.py --out $OUT --rounds 2 --steps 24 > $OUT/pretrain_speed.log 2>&1
echo "pretrain_speed rc=$?"; grep -v Warn $OUT/pretrain_speed.log | tail -12 | cut -c1-400
exit 0
