#!/usr/bin/env bash
# Set up .venv, then lint (ruff), run the test suite and build the docs (executing the tutorials).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 tests
if [ "${SKIP_DOCS:-0}" != "1" ]; then
  .venv/bin/sphinx-build -W --keep-going -b html -q docs docs/_build/html
fi
