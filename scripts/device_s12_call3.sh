#!/usr/bin/env bash
# Session 12, device call 3 (H200). 1) the GPU graph tests, verbose, each in a process of its own with a stack dump
# on timeout (call 2's run failed one and hung without a report); 2) the public API: model.train(batch_size=32)
# with cuda_graphs off and on, alternating, same model and cells.
for t in "matches_eager_across_updates_and_buckets and False" "matches_eager_across_updates_and_buckets and True" \
         "kept_output" "accumulate" "moving_parameters"; do
  timeout -s ABRT 75 python3 -X faulthandler -m pytest -x -q -rA tests/test_nn_graphs.py -k "$t" \
    >> $OUT/gpu_tests_s12_3_graphs.log 2>&1
  echo "[$t] rc=$?"
done
grep -E "^(PASSED|FAILED|ERROR)|Error|assert|Timeout|File .*genemamba" $OUT/gpu_tests_s12_3_graphs.log | head -30
timeout 330 python3 benchmarks/api_speed.py --skip-steady --skip-first-call --cells 8000 --graphs-batches 32 \
  --graphs-warmup 25 --graphs-steps 40 --graphs-repeats 2 --out $OUT/api > $OUT/api_s12_3.log 2>&1
echo "api rc=$?"; grep '^{' $OUT/api_s12_3.log | cut -c1-400 | tail -6
exit 0
