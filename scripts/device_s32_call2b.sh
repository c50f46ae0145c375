#!/usr/bin/env bash
# Session 32, device call 2b (NOTES section 34): call 2 cut to the budget left (~390 s with a start): the public
# API's GPU tests only (train_runs on the GPU; the inference batch heuristic against the free memory).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,memory.used --format=csv,noheader
timeout 200 python3 -m pytest -q -x tests/test_model_gpu.py -p no:cacheprovider > $OUT/gpu_model_tests_s32.log 2>&1
echo "model gpu tests rc=$?"; tail -3 $OUT/gpu_model_tests_s32.log
python3 - <<'PY'
import torch
from types import SimpleNamespace
from genemamba_scvi.model._model import _inference_batch_size
enc = SimpleNamespace(d_in_proj=2 * 1024 + 2 * 64 + 16, d_model=512)
print("free GiB", torch.cuda.mem_get_info()[0] / 2**30, "batch at top-2048:", _inference_batch_size(enc, 2048, torch.device("cuda", 0)))
PY
exit 0
