#!/usr/bin/env bash
# Session 35, device call 3 (NOTES section 37): this session's changes to the network layers' checks
# (PathwayInfoNCE's id range read, BiMambaBlock's lengths), the schedule record and the corpus digest, on the GPU
# through the pre-training and model GPU tests; benchmarks/nan_reach.py on mamba-ssm's kernels.
# (the deliverable run does not fit the ~400 s of budget left after the failed starts: tests only, on any card)
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
timeout 130 python3 -m pytest -q tests/test_pretrain_gpu.py -p no:cacheprovider > $OUT/gpu_pretrain_tests_s35c3.log 2>&1
echo "pretrain gpu tests rc=$?"; tail -2 $OUT/gpu_pretrain_tests_s35c3.log | cut -c1-600
timeout 60 python3 benchmarks/nan_reach.py --out $OUT > $OUT/nan_reach.log 2>&1; echo "nan_reach rc=$?"; tail -1 $OUT/nan_reach.log
timeout 200 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s35c3.log 2>&1
echo "model gpu tests rc=$?"; tail -2 $OUT/gpu_model_tests_s35c3.log | cut -c1-600
exit 0
