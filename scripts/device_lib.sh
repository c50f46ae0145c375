#!/usr/bin/env bash
# Helpers the device scripts source (from the repository root): `pick LOG` prints each arm's median step time and
# its ratio to the reference arm from a benchmarks/train_ab.py log.
pick() {
  grep -v Warn "$1" \
    | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' \
    | sed 's/"switches": {.*}, "model"/"model"/' | cut -c1-200 | tail -"${2:-14}"
}
