#!/usr/bin/env bash
# Session 24, device call 1 (predictions: benchmarks/NOTES_throughput.md section 26). At most 8 files under $OUT.
# Why GeneMamba's top-4096 training steps slow down when alternating with the packed transformer (session 23: 0.20
# -> 0.29 s after 6 rounds) and vary between runs: per-round host enqueue time against wall time, and a kernel
# profile of each arm after the rounds (the slow state), with and without expandable segments; GeneMamba alone
# (profiled, the fast state); top-2048 x 48 with the enqueue times (host headroom of the issue's setting).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
AB="python3 benchmarks/train_ab.py --fresh --rounds 24 --warmup-rounds 3"
timeout 150 $AB --k 4096 --cells 24 --arms default transformer_varlen --profile \
  --out $OUT/ab4096_vs_t_s24.json > $OUT/ab4096_s24.log 2>&1
echo "ab4096 vs transformer rc=$?"; pick $OUT/ab4096_s24.log 4
PYTORCH_CUDA_ALLOC_CONF= timeout 90 $AB --k 4096 --cells 24 --arms default transformer_varlen \
  --out $OUT/ab4096_vs_t_noexp_s24.json >> $OUT/ab4096_s24.log 2>&1
echo "ab4096 vs transformer, no expandable segments rc=$?"; pick $OUT/ab4096_s24.log 4
timeout 110 $AB --k 4096 --cells 24 --arms default "same:fused._CONV_FWD_VARIANT=tokens" --profile \
  --profile-arms default --out $OUT/ab4096_mamba_s24.json >> $OUT/ab4096_s24.log 2>&1
echo "ab4096 mamba only rc=$?"; pick $OUT/ab4096_s24.log 4
timeout 100 $AB --k 2048 --cells 48 --rounds 16 --arms default transformer_varlen \
  --out $OUT/ab2048_vs_t_s24.json >> $OUT/ab4096_s24.log 2>&1
echo "ab2048 vs transformer rc=$?"; pick $OUT/ab4096_s24.log 4
python3 - <<'PY'
import json, os, numpy as np
for f in ("ab4096_vs_t_s24", "ab4096_vs_t_noexp_s24", "ab4096_mamba_s24", "ab2048_vs_t_s24"):
    try:
        d = json.load(open(f"{os.environ['OUT']}/{f}.json"))
    except Exception as e:
        print(f, "missing", e); continue
    for arm, r in d["arms"].items():
        w = np.array(r["step_times_s"]) * 1e3; e = np.array(r["enqueue_ms"])
        print(f, arm, "wall", np.round(w[:24]).astype(int).tolist(), "enq/wall", np.round(e / w, 2).tolist())
    for arm, p in d.get("profile", {}).items():
        print(f, arm, "gpu_ms", p["gpu_time_ms"], "wall", p["wall_ms_unprofiled"], "host", p["host"]["enqueue_ms"],
              p["host"]["wall_ms"], "syncs", p["host"]["host_syncs"], "idle_lb", p["gaps"].get("idle_launch_bound_us"))
PY
exit 0
