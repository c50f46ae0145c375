#!/usr/bin/env bash
# Create (or reuse) the project virtual environment in .venv and install genemamba-scvi into it.
# torch is pinned to the CPU wheel 2.13.0 first so that no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[test,docs]"
