#!/usr/bin/env bash
# Session 23, device call 4: today's CPU changes on the GPU path. The mamba-ssm >= 2.3 check must accept the
# machine's mamba-ssm (2.3.2.post1; else backend "auto" would fall back to PyTorch), the training runner moved and
# now turns Ctrl-C into a KeyboardInterrupt: the public API's GPU tests, and the fused training kernels' tests.
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY'
import mamba_ssm
from genemamba_scvi.nn.ssd import load_mamba_ssm_ops, resolve_backend
ops = load_mamba_ssm_ops()
print("mamba_ssm", mamba_ssm.__version__, "chunk_scan:", ops["chunk_scan"] is not None, "error:", ops["error"])
print("auto on cuda ->", resolve_backend("auto", device="cuda"))
PY
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_model_training.py -k "ctrl_c" 2>&1 | tail -3
exit 0
