#!/usr/bin/env bash
# Session 12, device call 4 (H200, last of the session's budget). 1) the GPU graph tests in bf16 at the shipped kernel
# configurations' dimensions (call 3's runs spent their time autotuning mamba-ssm for the old tiny dimensions; the
# fp32 case is deselected for the same reason); 2) the public API, model.train(batch_size=32) with cuda_graphs off
# and on after 120 warm-up steps (call 3's 25 left most buckets' eager first batch and capture inside the timing).
timeout -s ABRT 190 python3 -X faulthandler -m pytest -x -q -rA tests/test_nn_graphs.py \
  --deselect "tests/test_nn_graphs.py::test_graphed_training_matches_eager_across_updates_and_buckets[False]" \
  > $OUT/gpu_tests_s12_4_graphs.log 2>&1
echo "graph tests rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|^E |passed|failed" $OUT/gpu_tests_s12_4_graphs.log | head -20
timeout 180 python3 benchmarks/api_speed.py --skip-steady --skip-first-call --cells 8000 --graphs-batches 32 \
  --graphs-warmup 120 --graphs-steps 60 --graphs-repeats 1 --out $OUT/api > $OUT/api_s12_4.log 2>&1
echo "api rc=$?"; grep '^{' $OUT/api_s12_4.log | cut -c1-400 | tail -4
exit 0
