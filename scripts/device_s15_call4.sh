#!/usr/bin/env bash
# Session 15, device call 4 (H200): the full throughput run with the session's defaults (C B^T in bf16, the db
# cumsum fold, the lean backward) to refresh throughput_h200.json and its PNG; the new ablations run after it.
source scripts/device_lib.sh
full_run 245 300
exit 0
