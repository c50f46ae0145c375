#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default: tokenize the shipped 559-cell real sample,
# pre-train a tiny GeneMamba on CPU, write obsm["X_genemamba"], print a UMAP / scib summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/env.sh
.venv/bin/genemamba demo --out demo_output --overwrite "$@"
