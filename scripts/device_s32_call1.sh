#!/usr/bin/env bash
# Session 32, device call 1 (predictions: benchmarks/NOTES_throughput.md section 34): the inference batch size.
# On an H200 the deliverable run first (real-cell, full-length and stress settings with the packed transformer).
# Then on either card: the public API's embedding at several batch sizes (benchmarks/embed_batch_size.py), and
# throughput.py's real top-2048 inference at 128, 256 and 512 cells a batch (GeneMamba and both transformers, each
# size one process on the same machine).
source scripts/device_lib.sh
gpu=$(nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader); echo "$gpu"
sizes="128 256 512"
if [[ "$gpu" == *H200* ]]; then
  full_run 180 250 --only real_,full_L2048,full_L8192,stress --no-profile
  sizes="128 512"
fi
timeout 160 python3 benchmarks/embed_batch_size.py --out $OUT > $OUT/embed_batch_size.log 2>&1
echo "embed_batch_size rc=$?"; tail -1 $OUT/embed_batch_size.log | cut -c1-900
for n in $sizes; do
  mkdir -p $OUT/infer$n
  timeout 100 python3 benchmarks/throughput.py --out $OUT/infer$n --budget-s 80 --only real_top2048_infer \
    --infer-cells-2048 $n --no-profile --autotune pin:benchmarks/results/throughput_h200_s7_final.json \
    > $OUT/infer$n/throughput.log 2>&1
  echo "infer $n rc=$?"; grep '^\[ok\]' $OUT/infer$n/throughput.log | cut -c1-120
done
exit 0
