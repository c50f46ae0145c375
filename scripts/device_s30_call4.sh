#!/usr/bin/env bash
# Session 30, device call 4 (the budget's last ~240 s): the public API's GPU tests only, the new in-silico
# perturbation's among them (prediction: 6 passed; bf16 shifts within 2e-3 of float32's).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s30.log 2>&1
echo "model gpu tests rc=$?"; tail -4 $OUT/gpu_model_tests_s30.log
exit 0
