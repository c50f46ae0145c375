#!/usr/bin/env bash
# Session 9, device call 1 (H200): is the fused SSD-backward variants' NaN a memory corruption?
# (1) saved-tensor checksums + node-output watch, (2) the same check without PyTorch's caching allocator,
# (3) compute-sanitizer memcheck of one backward of each path without the caching allocator.
# Run from the repository root with $OUT set.
G=benchmarks/training_grad_check.py
timeout 200 python3 $G --out $OUT/watch_s9_h200.json --watch session6 fused_dda default > $OUT/watch.log 2>&1
echo "watch rc=$?"; grep -E "^(session6|fused|default)|Error" $OUT/watch.log | cut -c1-1500
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 python3 $G --out $OUT/training_grad_check_nocache_s9_h200.json \
  --configs fused_dda --batch real_top2048_48 --steps 0 > $OUT/nocache.log 2>&1
echo "nocache rc=$?"; grep -E "^real|Error" $OUT/nocache.log | cut -c1-1200
which compute-sanitizer || ls /usr/local/cuda/bin | head -3
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 260 compute-sanitizer --tool memcheck --print-limit 12 \
  python3 $G --out $OUT/training_grad_check_memcheck_s9_h200.json --configs fused_dda --batch real_top2048_48 \
  --steps 0 > $OUT/memcheck.log 2>&1
echo "memcheck rc=$?"; grep -E "Invalid|ERROR SUMMARY|at 0x|by thread|Address|^real" $OUT/memcheck.log | head -40 | cut -c1-300
exit 0
