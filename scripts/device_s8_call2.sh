#!/usr/bin/env bash
# Session 8, device call 2 (H200): why the fused SSD-backward variants give NaN on the real batch, and launch
# shapes with 2-4 pipeline stages for ssd_chunk_bwd. Run from the repository root with $OUT set.
G=benchmarks/training_grad_check.py
timeout 100 python3 $G --out $OUT/anomaly_s8_h200.json --anomaly fused_dda fused_intra > $OUT/anomaly.log 2>&1
echo "anomaly rc=$?"; grep -E "^(fused|default)|Error|returned" $OUT/anomaly.log | tail -c 2500
timeout 100 python3 $G --out $OUT/training_grad_check_proj_s8_h200.json --loss proj --steps 2 --steps-config fused_dda > $OUT/proj.log 2>&1
echo "proj rc=$?"; python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/training_grad_check_proj_s8_h200.json"))
for b, r in d["batches"].items():
    for c, v in r.items():
        if isinstance(v, dict):
            print(b, c, v["n_nonfinite"], v["median_rel_vs_session6"], v["worst_rel_vs_session6"][:2])
print(d.get("default_steps"))
PY
exit 0
  --configs "32,8,2,1;32,8,3,1;16,4,2,1;64,8,2,1;32,8,4,1" > $OUT/bench2.log 2>&1
echo "bench rc=$?"; grep -o '"BN[^}]*}' $OUT/bench2.log | head; grep -o '"ms": [0-9.]*' $OUT/bench2.log; grep mamba $OUT/bench2.log | head -2
