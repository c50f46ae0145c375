#!/usr/bin/env bash
# Session 15, device call 6 (H200): the weight_grad / merge GPU tests with the fp32-output GEMMs now off by
# default (and on, by parameter), then the full throughput run with the session's final defaults.
source scripts/device_lib.sh
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "weight_grad or gate_merge_train" 2>&1 | tail -2
full_run 240 290
exit 0
