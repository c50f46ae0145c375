#!/usr/bin/env bash
# Session 27, device call 2 (predictions: benchmarks/NOTES_throughput.md section 29): why api_speed's bare-encoder
# embedding arm runs at 643-766 cells/s (the API at 904-972 on the same batches; session 21's bare arm 1,090-1,111).
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 200 python3 benchmarks/embed_paths.py --out $OUT --rounds 3 > $OUT/embed_paths_s27.log 2>&1
echo "embed_paths rc=$?"; tail -c 1500 $OUT/embed_paths_s27.log
exit 0
