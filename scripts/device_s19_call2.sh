#!/usr/bin/env bash
# Session 19, device call 2 (H100): (1) the weights-once bit-identity test that failed on the GPU in call 1, with
# its traceback; (2) session 17's queued biology run (device_s17_call2.sh step 2): 5 seeds of integration and
# annotation with AdamW eps 1e-8 on the GPU, scVI / scANVI baselines included.
source scripts/device_lib.sh
timeout 45 python3 -m pytest -q -x -p no:cacheprovider --tb=short tests/test_nn_fused_weights.py \
  -k "bit_identical" > $OUT/weights_once_test.log 2>&1; echo "weights-once test rc=$?"
grep -E "^E |assert|Error|passed|failed" $OUT/weights_once_test.log | head -12
timeout 400 python3 benchmarks/run_seeds.py --out-dir /tmp/seeds --accelerator gpu --precision 32 --backend torch \
  --jobs 20 --threads 1 --deadline-s 360 --archive "$OUT/seeds_gpu_eps1e-8.tar.gz" > "$OUT/run_seeds.log" 2>&1
echo "run_seeds rc=$?"; tail -5 "$OUT/run_seeds.log"
cp /tmp/seeds/biology_summary*.json "$OUT/" 2>/dev/null; ls $OUT
exit 0
