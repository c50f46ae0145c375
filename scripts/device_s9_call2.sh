#!/usr/bin/env bash
# Session 9, device call 2 (H200): the per-sequence ddA sum; tests compiled, gradients, interleaved A/B timing.
timeout 170 python3 -m pytest -q -x tests/test_nn_training_kernels.py -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
echo "tests rc=$?"; tail -4 $OUT/gpu_tests.log
timeout 150 python3 benchmarks/training_grad_check.py --out $OUT/training_grad_check_s9_h200.json --steps 4 \
  --steps-config fused_both > $OUT/grad.log 2>&1
echo "grad rc=$?"; python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/training_grad_check_s9_h200.json"))
for b, r in d["batches"].items():
    for c, v in r.items():
        if isinstance(v, dict):
            print(b, c, v["n_nonfinite"], "%.2e" % v["median_rel_vs_session6"], v["worst_rel_vs_session6"][:1])
print(d.get("default_steps"))
PY
timeout 200 python3 benchmarks/train_ab.py --arms default ablation_fused_dcb_ddA ablation_fused_intra_bwd \
  transformer_varlen --rounds 30 --out $OUT/train_ab_s9_call2_h200.json > $OUT/ab.log 2>&1
echo "ab rc=$?"; tail -c 3000 $OUT/ab.log
exit 0
