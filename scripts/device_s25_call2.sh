#!/usr/bin/env bash
# Session 25, device call 2 (predictions: benchmarks/NOTES_throughput.md section 27). At most 8 files under $OUT.
# Where the host's time goes in a training step and whether throughput.py's order of settings brings the slow
# top-4096 state (host_profile.py: per-step enqueue / wall / allocator / GC, a sampled profile of every thread,
# steps with GC off and after empty_cache). (A fresh-process A/B was dropped: device time.)
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 220 python3 benchmarks/host_profile.py --out $OUT/host_profile_s25.json > $OUT/host_profile_s25.log 2>&1
echo "host_profile rc=$?"; grep -v Warn $OUT/host_profile_s25.log | grep "^top\|^ab" | cut -c1-300
python3 - <<'PY'
import json, os
d = json.load(open(f"{os.environ['OUT']}/host_profile_s25.json"))
for r in d["sequence"]:
    print(r["setting"], r["model"], [(s["wall_ms"], s["enqueue_ms"]) for s in r["steps"]][2:8])
    print("   ", [{k: v for k, v in s.items() if k not in ("wall_ms", "enqueue_ms")} for s in r["steps"]][2:8])
print("objects", d["python_objects"], "fused_failed", d["fused_failed"])
h = d["host_samples_genemamba"]
print("threads", h["samples_per_thread"])
for row in h["by_own"][:25]:
    print("own", row["samples"], row["where"][:150])
for row in d["host_functions_genemamba"]["by_own_time"][:15]:
    print("main", row)
PY
exit 0
