"""Registers and spills of this package's conv and merge kernels for an H100/H200, compiled offline (no GPU).

Triton compiles a kernel for ``sm_90a`` without a device (``triton.compile`` with a ``GPUTarget``) and ships
``ptxas``; ``ptxas -v`` then reports registers per thread and spill stores for each launch shape, and the PTX shows
whether the dots became Hopper warpgroup MMAs (``wgmma``) or Ampere-style ``mma.sync``. A shape that
spills, or that holds ~255 registers a thread (one block of 4 warps per SM quadrant at most), is a candidate to
change before spending device time on timing it. Runs on the CPU; writes a JSON (``--out``).

Usage::

    TRITON_INTERPRET=0 python benchmarks/kernel_registers.py --out benchmarks/results/kernel_registers.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: argument types of the kernels below (bf16 activations, fp32 weights and partial sums, int32 cell ids, int64 cu)
TYPES = dict(
    x_ptr="*bf16", w_ptr="*fp32", b_ptr="*fp32", seq_ptr="*i32", cu_ptr="*i64", rev_ptr="*i64", dout_ptr="*bf16",
    dpre_ptr="*bf16", dw_part_ptr="*fp32", db_part_ptr="*fp32", dx_ptr="*bf16", out_ptr="*bf16", out2_ptr="*bf16",
    pf_ptr="*bf16", pb_ptr="*bf16", g_ptr="*bf16", dout2_ptr="*bf16", dpf_ptr="*bf16", dpb_ptr="*bf16",
    bias_ptr="*bf16",
)  # fmt: skip
_NORM = dict(
    y_ptr="*bf16",
    z_ptr="*bf16",
    w_ptr="*fp32",
    rstd_ptr="*fp32",
    dn_ptr="*bf16",
    dy_ptr="*bf16",
    dz_ptr="*bf16",
    yn_ptr="*bf16",
    r_ptr="*fp32",
    dh_ptr="*bf16",
    dr_ptr="*fp32",
    dres_ptr="*fp32",
)
_SSD = dict(
    x_ptr="*bf16", dy_ptr="*bf16", cb_ptr="*fp32", dt_ptr="*fp32", cs_ptr="*fp32", dcb_ptr="*fp32", ddacs_ptr="*fp32",
    r_ptr="*fp32", out_ptr="*fp32", b_ptr="*bf16", dst_ptr="*fp32", d_ptr="*fp32", dx_ptr="*bf16", ddt_ptr="*fp32",
    dd_ptr="*fp32", rows_ptr="*fp32", cols_ptr="*fp32", prev_ptr="*fp32", last_ptr="*fp32", next_ptr="*fp32",
)  # fmt: skip
#: (module, kernel, constexprs, argument types over TYPES, launch shapes as (constexpr overrides, options))
CASES = [
    ("_triton_conv", "conv_both_bwd_pre2d_kernel", dict(K=4, HAS_BIAS=True, SILU=True), {},
     [(dict(BLOCK_R=16, BLOCK_C=64, ROW_ITERS=16), 4)]),
    ("_triton_conv", "conv_both_bwd_pre_tok2d_kernel", dict(K=4, HAS_BIAS=True, SILU=True), {},
     [(dict(BLOCK_R=16, BLOCK_C=64, ROW_ITERS=8), 4), (dict(BLOCK_R=16, BLOCK_C=64, ROW_ITERS=8), 8),
      (dict(BLOCK_R=16, BLOCK_C=32, ROW_ITERS=8), 4)]),
    ("_triton_bimamba", "conv_both_bwd_dx_kernel", dict(K=4), {}, [(dict(BLOCK_R=32, BLOCK_C=128), 4)]),
    ("_triton_conv", "conv_both_bwd_dx_bounds_kernel", dict(K=4), {},
     [(dict(BLOCK_R=32, BLOCK_C=128), 4), (dict(BLOCK_R=32, BLOCK_C=128), 8), (dict(BLOCK_R=16, BLOCK_C=128), 4),
      (dict(BLOCK_R=32, BLOCK_C=64), 4)]),
    ("_triton_bimamba", "conv_both_fwd_tok_kernel", dict(K=4, HAS_BIAS=True, SILU=True), {},
     [(dict(BLOCK_R=16, BLOCK_C=128), 4)]),
    ("_triton_merge", "gate_merge_bwd_kernel", dict(HAS_DB=True, HAS_BIAS=False), {},
     [(dict(BLOCK_R=16, BLOCK_D=128), 4)]),
    ("_triton_norm", "gated_norm_both_bwd2d_kernel", dict(BLOCK_G=1024), _NORM,
     [(dict(BLOCK_R=2, ROW_ITERS=16), 4), (dict(BLOCK_R=2, ROW_ITERS=16), 8), (dict(BLOCK_R=1, ROW_ITERS=32), 4),
      (dict(BLOCK_R=1, ROW_ITERS=32), 8), (dict(BLOCK_R=4, ROW_ITERS=8), 8)]),
    ("_triton_norm", "add_rms_norm_bwd_kernel", dict(HAS_DR=True, HAS_RES=True, BLOCK_D=512), _NORM,
     [(dict(BLOCK_R=4, ROW_ITERS=8), 4)]),
    ("_triton_ssd_bwd", "ssd_dcb_ddacs_kernel", dict(HPG=16, HAS_SEQ=True, INTERPRET=False, BK=64, SPLIT_DECAY=False),
     _SSD, [(dict(BM=64, BN=64), {"num_warps": w, "num_stages": 2}) for w in (2, 4, 8)]
     + [(dict(BM=64, BN=64, SPLIT_DECAY=True), {"num_warps": w, "num_stages": 2}) for w in (2, 4)]
     + [(dict(BM=64, BN=32), {"num_warps": 4, "num_stages": 2}),
        (dict(BM=32, BN=32), {"num_warps": 1, "num_stages": 2}),
        (dict(BM=32, BN=64), {"num_warps": 2, "num_stages": 2})]),
    ("_triton_ssd_dx", "ssd_dx_kernel",
     dict(H=16, HPG=16, Q=256, P=64, N=64, HAS_SEQ=True, HAS_D=True, INTERPRET=False), {**_SSD, "dst_ptr": "*bf16"},
     [(dict(BM=bm, BK=bk), {"num_warps": w, "num_stages": st})
      for bm, bk, w, st in ((64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (128, 64, 8, 2), (32, 64, 4, 2))]),
    ("_triton_ssd_bwd", "seq_rev_sum_kernel", dict(Q=256), _SSD,
     [(dict(HAS_INTER=False), {"num_warps": 4}), (dict(HAS_INTER=True), {"num_warps": 4})]),
    ("_triton_ssd_chunk_bwd", "ssd_chunk_bwd_kernel",
     dict(HPG=16, Q=256, P=64, N=64, HAS_SEQ=True, HAS_D=True, INTERPRET=False), _SSD,
     [(dict(BN=32, ROW0=0), {"num_warps": 8, "num_stages": 4}),
      (dict(BN=32, ROW0=128), {"num_warps": 8, "num_stages": 4}),
      (dict(BN=16, ROW0=0), {"num_warps": 16, "num_stages": 2})]),
]  # fmt: skip


def registers(fn, constexprs: dict, options: dict, types: dict) -> dict:
    """Compile ``fn`` for sm_90a with ``constexprs`` and report ``ptxas -v``'s registers and spill stores."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    types = {**TYPES, **types}
    missing = [n for n in names if n.endswith("_ptr") and n not in constexprs and n not in types]
    if missing:  # an untyped pointer would compile as an integer and fail deep inside Triton
        raise KeyError(f"{fn.__name__ if hasattr(fn, '__name__') else fn}: no type for {missing} (add them to TYPES)")
    signature = {n: ("constexpr" if n in constexprs else types.get(n, "i32")) for n in names}
    # what Triton's launcher tells the compiler at run time: 16-byte aligned tensors, and strides and channel counts
    # divisible by 16 (true of the model's shapes); without it loads and stores are not vectorised and the register
    # counts are those of a kernel that never runs (this script's results before session 14)
    aligned = [n for n in names if n not in constexprs and (n.endswith("_ptr") or n.startswith("stride") or n == "C")]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        out = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull], capture_output=True,
                             text=True, check=True).stderr  # fmt: skip
    regs = re.findall(r"Used (\d+) registers", out)
    spills = re.findall(r"(\d+) bytes spill stores", out)
    ptx = compiled.asm["ptx"]
    return {
        "registers": int(regs[-1]) if regs else None,
        "spill_store_bytes": int(spills[-1]) if spills else None,
        # tensor-core instructions in the PTX: Hopper's warpgroup MMA (needs 4 warps a group) or Ampere's mma.sync
        "wgmma_instructions": ptx.count("wgmma.mma_async"),
        "mma_sync_instructions": ptx.count("mma.sync"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_registers.json"))
    p.add_argument("--only", default="", help="only kernels whose name contains this")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter has nothing to compile")
    import importlib

    import triton

    rows = []
    for mod, name, consts, types, shapes in CASES:
        if a.only not in name:
            continue
        fn = getattr(importlib.import_module(f"genemamba_scvi.nn.{mod}"), name)
        for over, opts in shapes:
            opts = {"num_warps": opts} if isinstance(opts, int) else opts
            rec = {"kernel": name, "constexprs": {**consts, **over}, **opts}
            rec.update(registers(fn, {**consts, **over}, opts, types))
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    out = {"target": "sm_90a (H100/H200), compiled offline", "triton": triton.__version__, "kernels": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
