"""Registers and spills of this package's conv and merge kernels for an H100/H200, compiled offline (no GPU).

Triton compiles a kernel for ``sm_90a`` without a device (``triton.compile`` with a ``GPUTarget``) and ships
``ptxas``; ``ptxas -v`` then reports registers per thread and spill stores for each launch shape, and the PTX shows
whether the dots became Hopper warpgroup MMAs (``wgmma``) or Ampere-style ``mma.sync``. A shape that
spills, or that holds ~255 registers a thread (one block of 4 warps per SM quadrant at most), is a candidate to
change before spending device time on timing it. Runs on the CPU; writes a JSON (``--out``).

Usage::

    TRITON_INTERPRET=0 python benchmarks/kernel_registers.py --out benchmarks/results/kernel_registers.json
    # the SSD forward's chunk loop counted (session 23):
    TRITON_INTERPRET=0 python benchmarks/kernel_registers.py --only fwd --sass --out .../kernel_sass_s23.json
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

_SSD_FWD = dict(x_ptr="*bf16", dt_ptr="*bf16", dt_bias_ptr="*fp32", A_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16",
                D_ptr="*fp32", y_ptr="*bf16", cu_ptr="*i64", order_ptr="*i64", z_ptr="*bf16",
                ssq_ptr="*fp32", items_ptr="*i64", states_ptr="*fp32", decay_ptr="*fp32")  # fmt: skip
_SSD_FWD_CONSTS = dict(P=64, N=64, Q=16, HB=4, HAS_D=True, HAS_DT_BIAS=True, DT_SOFTPLUS=True, NUM_STAGES=2,
                       INTERPRET=False, DT_TOKEN=True)  # fmt: skip
#: The one-pass SSD forward (``--sass`` counts its chunk loop), plain and gated (inference).
CASES += [
    ("_triton_ssd", "ssd_varlen_heads_fwd_kernel", {**_SSD_FWD_CONSTS, "GATE": gate}, _SSD_FWD,
     [({}, {"num_warps": 4, "num_stages": 2})])
    for gate in (False, True)
] + [  # long sequences split over programs (session 24): the walk from a folded state, and the segments' states
    ("_triton_ssd", "ssd_varlen_heads_fwd_kernel", {**_SSD_FWD_CONSTS, "GATE": False, "SPLIT": True}, _SSD_FWD,
     [({}, {"num_warps": 4, "num_stages": 2})]),
    ("_triton_ssd", "ssd_split_states_kernel", {k: v for k, v in _SSD_FWD_CONSTS.items() if k != "HAS_D"}, _SSD_FWD,
     [({}, {"num_warps": 4, "num_stages": 2})]),
] + [
    ("_triton_bimamba", "conv_both_fwd_tok_kernel", dict(K=4, HAS_BIAS=True, SILU=True, LEAN=True), {},
     [(dict(BLOCK_R=16, BLOCK_C=128), 4)]),
]  # fmt: skip

#: SASS opcodes counted in a kernel's longest loop (``--sass``)
_OPS = ("HMMA", "BAR", "STS", "LDS", "LDSM", "LDL", "STL", "SHFL", "PRMT", "F2FP", "MUFU", "LDG", "LDGSTS", "STG")


def loop_sass(cubin: bytes) -> dict:
    """Instructions of the longest loop (a backward branch) of a compiled kernel and its opcode counts."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([str(cuobjdump), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
    addr = [int(re.match(r"\s+/\*([0-9a-f]{4})\*/", ln).group(1), 16) for ln in lines]
    best = (0, 0, -1)
    for i, ln in enumerate(lines):
        m = re.search(r"BRA .*?0x([0-9a-f]+)", ln)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in addr:
            j = addr.index(int(m.group(1), 16))
            best = max(best, (i - j + 1, j, i))
    ops: dict[str, int] = {}
    for ln in lines[best[1] : best[2] + 1]:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", ln)
        if m:
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
    return {"loop_instructions": best[0], "loop_ops": {k: ops.get(k, 0) for k in _OPS}}


def registers(fn, constexprs: dict, options: dict, types: dict, sass: bool = False) -> dict:
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
        **(loop_sass(compiled.asm["cubin"]) if sass else {}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_registers.json"))
    p.add_argument("--only", default="", help="only kernels whose name contains this")
    p.add_argument("--sass", action="store_true", help="also count the SASS instructions of each kernel's longest loop")
    p.add_argument("--src", default=None, help="the package's src/ folder to compile from (another commit's worktree)")
    a = p.parse_args(argv)
    if a.src:
        sys.path.insert(0, str(Path(a.src).resolve()))
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter has nothing to compile")
    import importlib

    import triton

    rows = []
    for mod, name, consts, types, shapes in CASES:
        if a.only not in name:
            continue
        fn = getattr(importlib.import_module(f"genemamba_scvi.nn.{mod}"), name, None)
        if fn is None:  # a kernel of other code (--src)
            print(f"skipped {name}: not in this code", flush=True)
            continue
        unknown = [k for k in consts if k not in fn.arg_names]
        if unknown:  # a variant of other code (see CASES)
            print(f"skipped {name} {consts}: no {unknown} in this code", flush=True)
            continue
        for over, opts in shapes:
            opts = {"num_warps": opts} if isinstance(opts, int) else opts
            rec = {"kernel": name, "constexprs": {**consts, **over}, **opts}
            rec.update(registers(fn, {**consts, **over}, opts, types, sass=a.sass))
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    import genemamba_scvi

    src = str(Path(genemamba_scvi.__file__).parents[1])
    out = {"target": "sm_90a (H100/H200), compiled offline", "triton": triton.__version__, "src": src, "kernels": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
