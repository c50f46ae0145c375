#!/usr/bin/env bash
# Session 10, device call 4 (H200): interleaved A/B of the ablations that ran faster than the default in two
# sequential full runs (throughput.py runs the default first): norm backward tiles 1 x 32, the scatter-add
# reversed-row backward, the gated-norm forward by row; and the untimed session-10 candidates: the "tokens2d" conv
# backward, two spill-free shapes of the conv dx pass, the gated-norm backward 2 x 16 with 8 warps and the fused
# d(CB)+ddA with 4 warps (the defaults spill 596, 856 and 2,696 bytes a thread: kernel_registers_s10.json).
timeout 300 python3 benchmarks/train_ab.py --rounds 20 --out $OUT/train_ab_s10_call4_h200.json --arms default \
  ablation_norm_bwd_tiles_1x32 ablation_rev_scatter ablation_norm_by_row "tok2d:fused._CONV_BWD_VARIANT=tokens2d" \
  "dx16:fused._CONV_DX_BLOCK=[16,128,4]" "dxw8:fused._CONV_DX_BLOCK=[32,128,8]" \
  "norm2x16w8:fused._NORM_BWD_2D=[2,16,8]" "dcbw4:fused_ssd_bwd.DCB_DDA_CONFIG={\"BM\":64,\"BN\":64,\"num_warps\":4,\"num_stages\":2}" \
  transformer_varlen > $OUT/ab4.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab4.log | cut -c1-420 | tail -12
exit 0
