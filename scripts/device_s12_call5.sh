#!/usr/bin/env bash
# Session 12, device call 5 (H200, the budget's last ~270 s): the GPU graph tests after the review's fixes
# (pending = autograd node, replay counter, gradient copies, once_differentiable, signature over all tensors).
timeout -s ABRT 120 python3 -X faulthandler -m pytest -x -q -rA tests/test_nn_graphs.py \
  --deselect "tests/test_nn_graphs.py::test_graphed_training_matches_eager_across_updates_and_buckets[False]" \
  > $OUT/gpu_tests_s12_5_graphs.log 2>&1
echo "graph tests rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|^E |passed|failed" $OUT/gpu_tests_s12_5_graphs.log | head -20
exit 0
