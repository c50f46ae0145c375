#!/usr/bin/env bash
# Session 13, device call 1 (H200). The SSD backward's dx pass with the heads side by side (ssd_chunk_dx,
# nn/_triton_ssd_dx.py): 1) compiled tests against mamba-ssm's kernel and the whole backward; 2) kernel timing at
# real 48- and 24-cell shapes (ssd_dx_bench.py); 3) interleaved A/B at 48 cells: default (new dx) vs mamba-ssm's dx
# vs the packed transformer, with the default's profile; 4) the GPU graph tests after session 12's review fixes
# (bf16 at the shipped dimensions; the fp32 case deselected: its mamba-ssm kernels autotune for minutes).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_nn_training_kernels.py \
  -k "dx_pass or ssd_backward or dcb or encoder_training" > $OUT/gpu_tests_s13_1_dx.log 2>&1
echo "dx tests rc=$?"; grep -E "^(FAILED|ERROR)|^E |passed|failed" $OUT/gpu_tests_s13_1_dx.log | head -12
timeout 110 python3 benchmarks/ssd_dx_bench.py --cells 48,24 --out $OUT/ssd_dx_s13_call1_h200.json > $OUT/ssd_dx_s13_1.log 2>&1
echo "dx bench rc=$?"; cut -c1-260 $OUT/ssd_dx_s13_1.log | grep -v Warn | tail -16
pick() { grep -v Warn "$1" | grep -o '^[a-z0-9_]* {.*step_time_s_median": [0-9.]*\|time_ratio_median": [0-9.]*, "time_ratio_ci95": \[[0-9., ]*\]\|^cuda_graphs.*' | cut -c1-300 | tail -8; }
timeout 200 python3 benchmarks/train_ab.py --k 2048 --cells 48 --rounds 20 \
  --out $OUT/train_ab_s13_call1_48cells_h200.json --arms default ablation_mamba_dx transformer_varlen \
  --profile --profile-arms default > $OUT/ab_s13_1.log 2>&1
echo "ab48 rc=$?"; pick $OUT/ab_s13_1.log
timeout -s ABRT 100 python3 -X faulthandler -m pytest -x -q -rA tests/test_nn_graphs.py \
  --deselect "tests/test_nn_graphs.py::test_graphed_training_matches_eager_across_updates_and_buckets[False]" \
  > $OUT/gpu_tests_s13_1_graphs.log 2>&1
echo "graph tests rc=$?"; grep -E "^(FAILED|ERROR)|^E |passed|failed" $OUT/gpu_tests_s13_1_graphs.log | head -10
exit 0
