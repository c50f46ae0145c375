#!/usr/bin/env bash
# Session 10, device call 4 (H200): interleaved A/B of the ablations that ran faster than the default in two
# sequential full runs (throughput.py runs the default first): norm backward tiles 1 x 32, the scatter-add
# reversed-row backward, the gated-norm forward by row; and the untimed session-10 candidates: the "tokens2d" conv
# backward, and two spill-free shapes of the conv dx pass (benchmarks/results/kernel_registers_s10.json).
timeout 300 python3 benchmarks/train_ab.py --rounds 20 --out $OUT/train_ab_s10_call4_h200.json --arms default \
  ablation_norm_bwd_tiles_1x32 ablation_rev_scatter ablation_norm_by_row "tok2d:fused._CONV_BWD_VARIANT=tokens2d" \
  "dx16:fused._CONV_DX_BLOCK=[16,128,4]" "dxw8:fused._CONV_DX_BLOCK=[32,128,8]" \
  transformer_varlen > $OUT/ab4.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab4.log | cut -c1-420 | tail -6
exit 0
