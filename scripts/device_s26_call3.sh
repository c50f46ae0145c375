#!/usr/bin/env bash
# Session 26, device call 3: call 2's new user-session GPU test, its device assertion moved after train (a new
# model is built on the CPU, as scvi-tools' models are; call 2 failed on that line before the round trip ran).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py > $OUT/gpu_tests_model_s26_call3.log 2>&1
echo "model gpu tests rc=$?"; grep -E "passed|failed|^FAILED|^E " $OUT/gpu_tests_model_s26_call3.log | tail -12
exit 0
