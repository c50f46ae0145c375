#!/usr/bin/env bash
# Session 23, device call 1 (predictions: benchmarks/NOTES_throughput.md section 25). At most 8 files under $OUT.
# The one-pass SSD forward's state by design: a head's channels split over programs ("p_block") and the state held
# transposed ("trans"). GPU parity tests of the SSD forward, the plain and the gated sweeps, then the inference A/B
# (default, the lean conv forward, the gated sweep's best) and, if the plain sweep's best is not the default, the
# training A/B.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_fused.py -k "ssd_varlen" 2>&1 | tail -3
CFGS='[{}, {"p_block": 32}, {"p_block": 32, "num_warps": 8}, {"p_block": 32, "heads": 2}, {"p_block": 16},
 {"trans": true}, {"trans": true, "p_block": 32}, {"trans": true, "heads": 2, "p_block": 32}]'
timeout 150 python3 benchmarks/fused_bimamba.py --sweep-ssd --ssd-configs "$CFGS" --out $OUT/ssd_split_sweep_s23.json \
  > $OUT/ssd_sweeps_s23.log 2>&1; echo "ssd sweep rc=$?"
timeout 150 python3 benchmarks/fused_bimamba.py --sweep-ssd-gated --ssd-configs "$CFGS" \
  --out $OUT/ssd_gated_sweep_s23.json >> $OUT/ssd_sweeps_s23.log 2>&1; echo "gated sweep rc=$?"
grep -v Warn $OUT/ssd_sweeps_s23.log | grep -o "^{.*'ms': [0-9.]*\|^{'rows.*\|^{.*'error.*" | cut -c1-200
best() {  # the fastest shape of a sweep ($1: file, $2: key) as a full config, or "" when it is the default
python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))[sys.argv[2]]
ok = [r for r in d["configs"] if "ms" in r]
b = min(ok, key=lambda r: r["ms"])
base = ok[0] if not any(k in ok[0] for k in ("p_block", "trans", "heads")) else None
cfg = {k: v for k, v in b.items() if k in ("Q", "num_warps", "num_stages", "heads", "p_block", "trans")}
print("" if not cfg or (base is not None and b["ms"] > base["ms"] / 1.03) else
      json.dumps({"Q": 16, "num_warps": 4, "num_stages": 2, "heads": 4, **cfg}))
PY
}
GBEST=$(best $OUT/ssd_gated_sweep_s23.json sweep_ssd_gated); PBEST=$(best $OUT/ssd_split_sweep_s23.json sweep_ssd)
echo "gated best: ${GBEST:-default}; plain best: ${PBEST:-default}"
ARMS=(default "lean:fused._CONV_FWD_VARIANT=lean")
[ -n "$GBEST" ] && ARMS+=("split:fused_ssd.SSD_FWD_CONFIG=$GBEST")
timeout 120 python3 benchmarks/train_ab.py --mode infer --cells 256 --rounds 16 --arms "${ARMS[@]}" \
  --out $OUT/infer_ab_s23_256.json > $OUT/infer_ab_s23.log 2>&1; echo "infer ab rc=$?"; pick $OUT/infer_ab_s23.log 6
if [ -n "$PBEST" ]; then
  timeout 120 python3 benchmarks/train_ab.py --fresh --rounds 16 --arms default "split:fused_ssd.SSD_FWD_CONFIG=$PBEST" \
    --out $OUT/train_ab_s23_48.json > $OUT/train_ab_s23.log 2>&1; echo "train ab rc=$?"; pick $OUT/train_ab_s23.log 4
fi
exit 0
