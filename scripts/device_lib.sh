#!/usr/bin/env bash
# Helpers the device scripts source (from the repository root): `pick LOG` prints each arm's median step time and
# its ratio to the reference arm from a benchmarks/train_ab.py log.
pick() {
  grep -v Warn "$1" \
    | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]' \
    | sed 's/"switches": {.*}, "model"/"model"/' | cut -c1-200 | tail -"${2:-14}"
}

# `full_run BUDGET_S TIMEOUT_S [ARGS...]`: benchmarks/throughput.py's full run into $OUT (the pinned autotune winners), then
# its issue-14 targets and the real-cell and named ablation rows.
full_run() {
  local budget=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/throughput.py --out "$OUT" --budget-s "$budget" "$@" \
    --autotune pin:benchmarks/results/throughput_h200_s7_final.json > "$OUT/throughput.log" 2>&1
  echo "throughput rc=$?"; grep "^target" "$OUT/throughput.log" | tail -4
  python3 - <<'PY'
import glob, json, os
d = json.load(open(sorted(glob.glob(os.environ["OUT"] + "/throughput_h[0-9]*.json"))[0]))
for r in d["results"]:
    if r["setting"].startswith(("real_top2048", "real_top4096", "ablation_cb", "ablation_fat", "ablation_a_per")):
        print(r["setting"], r["model"], round(r.get("cells_per_s", 0) or 0, 1), r.get("peak_mem_gib"))
print(d.get("ratios_genemamba_over_transformer_varlen"))
PY
}

# `show_profile JSON`: the GPU time, wall time and host enqueue time of each profiled arm of a train_ab.py result, and
# its ten largest kernels.
show_profile() {
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for arm, p in d.get("profile", {}).items():
    print(arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], "enq", p["host"]["enqueue_ms"])
    for k in p["top_kernels"][:10]:
        print("  ", k["us"], k["calls"], k["name"][:60])
PY
}
