#!/usr/bin/env bash
# Session 22, device call 2 (predictions: benchmarks/NOTES_throughput.md section 24). At most 8 files under $OUT.
# The one-pass SSD forward holds 255 registers a thread and spills (offline sm_90 count): 2 programs (8 head chains)
# an SM. Sweep Triton's maxnreg (more programs an SM, more spilling) and 8 heads a program; then the inference A/B of
# the fastest shape against the default, and the state-walk test of session 21 (its last run was cut).
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
CFGS='[{}, {"maxnreg": 232}, {"maxnreg": 208}, {"maxnreg": 184}, {"maxnreg": 168}, {"maxnreg": 144}, {"maxnreg": 128},
 {"num_stages": 1, "maxnreg": 168}, {"heads": 8, "num_warps": 8}, {"heads": 8, "num_warps": 8, "maxnreg": 128},
 {"heads": 2, "maxnreg": 128}, {"heads": 4, "num_warps": 8, "maxnreg": 128}]'
timeout 300 python3 benchmarks/fused_bimamba.py --sweep-ssd --ssd-configs "$CFGS" --out $OUT/ssd_maxnreg_sweep_s22.json \
  > $OUT/ssd_sweep_s22.log 2>&1; echo "ssd sweep rc=$?"
grep -o "{'maxnreg.*\|{'heads.*\|{'num_stages.*\|{'rel_diff.*" $OUT/ssd_sweep_s22.log | cut -c1-170 | head -14
BEST=$(python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/ssd_maxnreg_sweep_s22.json"))["sweep_ssd"]
base = {"Q": 16, "num_warps": 4, "num_stages": 2, "heads": 4}
ok = [r for r in d["configs"] if "ms" in r]
best = min(ok, key=lambda r: r["ms"])
print(json.dumps({**base, **{k: v for k, v in best.items() if k in ("Q", "num_warps", "num_stages", "heads", "maxnreg")}}))
PY
)
echo "best: $BEST"
timeout 100 python3 benchmarks/train_ab.py --mode infer --cells 256 --rounds 16 --arms default "best:fused_ssd.SSD_FWD_CONFIG=$BEST" \
  --out $OUT/infer_ab_s22_ssd_best_256.json > $OUT/infer_ab_ssd_s22.log 2>&1; echo "infer ab rc=$?"; pick $OUT/infer_ab_ssd_s22.log 4
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "state_walks" 2>&1 | tail -3
exit 0
