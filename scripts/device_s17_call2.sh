#!/usr/bin/env bash
# Queued by session 17 (no device lent) for a later session's device call, after device_s16_call1.sh:
# 1) the public API's GPU tests, with session 17's test that from_pretrained places official weights on the GPU;
# 2) the biology seed tables of docs/biology.md re-run on the H200 with AdamW's eps 1e-8 (session 16's fix; the
#    tables there were measured with scvi-tools' 0.01): 5 seeds of integration and annotation, scVI / scANVI
#    baselines included, as the run of benchmarks/results/seeds_h200/ (321 s then).
source scripts/device_lib.sh
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model_gpu.py 2>&1 | tail -3
timeout 420 python3 benchmarks/run_seeds.py --out-dir /tmp/seeds --accelerator gpu --precision 32 --backend torch \
  --jobs 20 --threads 1 --deadline-s 380 --archive "$OUT/seeds_h200_eps1e-8.tar.gz" > "$OUT/run_seeds.log" 2>&1
echo "run_seeds rc=$?"; tail -5 "$OUT/run_seeds.log"
cp /tmp/seeds/biology_summary*.json /tmp/seeds/run_seeds_manifest.json "$OUT/" 2>/dev/null
exit 0
