#!/usr/bin/env bash
# Session 25, device call 1 (predictions: benchmarks/NOTES_throughput.md section 27). At most 8 files under $OUT.
# The split SSD scan where the 2x rule engages but nothing was measured (full 8 x 8192, top-2048 x 16; arm nosplit
# is the one-pass walk), the Python stacks of a training step's host synchronisations (train_ab --profile), then
# throughput.py's real-cell, full-length and stress settings with the split on (the issue's deliverable re-run).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
AB="python3 benchmarks/train_ab.py --fresh --warmup-rounds 3"
NS="nosplit:fused_ssd._SSD_SPLIT=false"
timeout 140 $AB --rounds 10 --full --k 8192 --cells 8 --arms default "$NS" --profile \
  --out $OUT/ab8192_split_s25.json > $OUT/ab_split_s25.log 2>&1
echo "ab8192 rc=$?"; pick $OUT/ab_split_s25.log 3
timeout 70 $AB --rounds 16 --k 2048 --cells 16 --arms default "$NS" \
  --out $OUT/ab2048x16_split_s25.json >> $OUT/ab_split_s25.log 2>&1
echo "ab2048x16 rc=$?"; pick $OUT/ab_split_s25.log 3
python3 - <<'PY'
import json, os
d = json.load(open(f"{os.environ['OUT']}/ab8192_split_s25.json"))
print("fused_failed", d.get("fused_failed"))
for arm, p in d.get("profile", {}).items():
    rows = [r for r in p["all_device_ops"] if "ssd_varlen" in r["name"] or "split_states" in r["name"]]
    print(arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], [(r["name"][:40], r["us"], r["calls"]) for r in rows])
    print(arm, "syncs", json.dumps(p["host"].get("host_sync_stacks"), indent=0)[:3000])
PY
full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
exit 0
