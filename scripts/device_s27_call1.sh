#!/usr/bin/env bash
# Session 27, device call 1 (predictions: benchmarks/NOTES_throughput.md section 29). At most 8 files under $OUT.
# (1) api_speed.py first, in a fresh machine: session 26's bare-encoder arm ran at 643 cells/s (1,090-1,137 elsewhere);
# (2) a profiled A/B at the issue's training shape, top-2048 x 48, against the packed transformer (kernel shares of
# today's step: where the remaining 1.7% is); (3) throughput.py's real-cell, full-length and stress settings.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 130 python3 benchmarks/api_speed.py --skip-first-call --cells 4000 --out $OUT > $OUT/api_speed_s27.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*(ratio|per_s)": [0-9.]' $OUT/api_speed_s27.log | head -8
timeout 120 python3 benchmarks/train_ab.py --rounds 16 --warmup-rounds 6 --batches 4 --fresh --k 2048 --cells 48 \
  --arms default transformer_varlen --profile --out $OUT/ab2048x48_profiled_s27.json > $OUT/ab2048_s27.log 2>&1
echo "ab2048x48 rc=$?"; pick $OUT/ab2048_s27.log 4
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/ab2048x48_profiled_s27.json"))
for arm, p in d.get("profile", {}).items():
    print(arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], "enq", p["host"]["enqueue_ms"])
    for k in p["top_kernels"][:12]:
        print("  ", k["us"], k["calls"], k["name"][:60])
PY
full_run 200 260 --only real_,full_L2048,full_L8192,stress --no-profile
exit 0
