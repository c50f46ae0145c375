#!/usr/bin/env bash
# Session 11, device call 1 (H200): first the compiled tests of the kernels folded after the last GPU run (conv
# kernels with _cell_bounds/_token_block/_tap_weights/_silu_grad, the dx-bounds pass, "tokens2d"), then the ten-arm
# interleaved A/B queued in session 10 (predictions: benchmarks/NOTES_throughput.md, end of section 14).
timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/test_nn_fused.py tests/test_nn_training_kernels.py \
  tests/test_nn_packed.py -k "conv_both or encoder_training or gate_merge or dummy_pad" > $OUT/gpu_tests_s11_1.log 2>&1
echo "tests rc=$?"; tail -4 $OUT/gpu_tests_s11_1.log
timeout 360 python3 benchmarks/train_ab.py --rounds 20 --out $OUT/train_ab_s11_call1_h200.json --arms default \
  ablation_norm_bwd_tiles_1x32 ablation_rev_scatter ablation_norm_by_row "tok2d:fused._CONV_BWD_VARIANT=tokens2d" \
  "dx16:fused._CONV_DX_BLOCK=[16,128,4]" "dxw8:fused._CONV_DX_BLOCK=[32,128,8]" \
  "norm2x16w8:fused._NORM_BWD_2D=[2,16,8]" "dcbw4:fused_ssd_bwd.DCB_DDA_CONFIG={\"BM\":64,\"BN\":64,\"num_warps\":4,\"num_stages\":2}" \
  transformer_varlen > $OUT/ab_s11_1.log 2>&1
echo "ab rc=$?"; grep -v Warn $OUT/ab_s11_1.log | cut -c1-420 | tail -14
exit 0
