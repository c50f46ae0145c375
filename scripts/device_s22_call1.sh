#!/usr/bin/env bash
# Session 22, device call 1 (predictions: benchmarks/NOTES_throughput.md section 24). At most 8 files under $OUT.
# The lean conv kernels: GPU parity tests, kernel sweeps (forward: tokens vs lean; backward: tokens2d vs lean2d),
# then interleaved A/B of the whole model in training (fresh batches) and inference; last, the re-bounded state-walk
# test of session 21.
source scripts/device_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_fused.py -k "conv" 2>&1 | tail -3
timeout 80 python3 benchmarks/fused_bimamba.py --sweep-conv --conv-fwd-only --out $OUT/conv_fwd_sweep_s22.json \
  > $OUT/sweeps_s22.log 2>&1; echo "fwd sweep rc=$?"
timeout 80 python3 benchmarks/fused_bimamba.py --sweep-conv --conv-bwd-only tokens2d,lean2d --conv-cells 48 \
  --out $OUT/conv_bwd_sweep_s22.json >> $OUT/sweeps_s22.log 2>&1; echo "bwd sweep rc=$?"
grep -E "fwd_tokens|fwd_lean|'bwd'" $OUT/sweeps_s22.log | grep -o "'kernel': '[a-z_]*', \('variant': '[a-z0-9]*', \)\?'config': ([0-9, ]*)\(, 'max_abs_diff_vs_rows': [0-9.e-]*\)\?, 'ms': [0-9.]*" | head -40
LEAN='lean:fused._CONV_FWD_VARIANT=lean;fused._CONV_BWD_VARIANT=lean2d'
timeout 110 python3 benchmarks/train_ab.py --fresh --rounds 16 --arms default "$LEAN" \
  --out $OUT/train_ab_s22_lean_fresh_48.json > $OUT/train_ab_s22.log 2>&1; echo "train ab rc=$?"; pick $OUT/train_ab_s22.log 4
timeout 90 python3 benchmarks/train_ab.py --mode infer --cells 256 --rounds 16 --arms default "$LEAN" \
  --out $OUT/infer_ab_s22_lean_256.json > $OUT/infer_ab_s22.log 2>&1; echo "infer ab rc=$?"; pick $OUT/infer_ab_s22.log 4
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py -k "state_walks" 2>&1 | tail -3
exit 0
