#!/usr/bin/env bash
# Session 31, device call 5 (predictions: benchmarks/NOTES_throughput.md section 33): the embedding loop's background
# tokenization on a GPU, A/B in embed_paths.py's rounds (api vs api_plain), then api_speed.py; the model GPU tests.
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 220 python3 benchmarks/embed_paths.py --out $OUT --rounds 5 > $OUT/embed_paths_s31.log 2>&1
echo "embed_paths rc=$?"; tail -c 1200 $OUT/embed_paths_s31.log
timeout 150 python3 benchmarks/api_speed.py --skip-first-call --cells 4000 --out $OUT > $OUT/api_speed_s31b.log 2>&1
echo "api rc=$?"; grep -E '"(api_|encoder_)[a-z_]*(ratio|per_s)": [0-9.]' $OUT/api_speed_s31b.log | head -8
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_model_gpu.py tests/test_prefetch.py > $OUT/gpu_model_tests_s31b.log 2>&1
echo "model gpu tests rc=$?"; tail -n 2 $OUT/gpu_model_tests_s31b.log
exit 0
