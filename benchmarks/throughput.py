"""Throughput of GeneMamba vs a same-width, same-depth PyTorch SDPA transformer (training and inference).

Both models go through the same data pipeline: every step draws a batch of cells whose lengths are
``min(n_expressed, k)`` of real cells (``benchmarks/data/celltypist_gene_counts.npy``: genes with a
non-zero count per cell of the shipped 559-cell celltypist sample), or full-length sequences of ``L``
tokens, as right-padded ``[batch, Lmax]`` token ids + lengths.

- **GeneMamba** (``genemamba_scvi.nn.GeneMambaEncoder``, mamba-ssm kernels on CUDA): packs the real
  tokens of the batch (``pack_tokens``, timed) and runs ``forward_packed``: pads are never computed; each
  cell and its per-cell reversal are two sequences of one varlen row, so one fused
  ``mamba_split_conv1d_scan_combined`` call per layer covers both directions; residual add + RMSNorm is
  mamba-ssm's fused Triton kernel.
- **Transformer** baseline: pre-LN, MHA (head dim 64) through ``F.scaled_dot_product_attention``
  (flash without a mask; with a key-padding mask PyTorch picks the efficient or cuDNN kernel; the math
  fallback is disabled on CUDA), MLP 4x with GELU, same ``d_model`` / ``n_layers`` / vocabulary; pads each
  batch to its longest cell.

Training step = forward + backward + fused AdamW under bf16 autocast (fp32 master weights), loss = mean
square of the final hidden states over real tokens (no head, so the encoders are compared alone).
Inference step = forward under ``torch.inference_mode`` + mean pooling to cell embeddings.

FLOPs (2 x MACs of every matmul; real tokens only for "mfu", pads included for "mfu_incl_pad")::

    GeneMamba, per real token and layer, forward (d = d_model, E = expand*d, N = d_state, P = headdim,
    H = E/P, G = ngroups, Q = chunk_size, D_in = 2E + 2GN + H):
        2 directions x [ 2*d*D_in (in_proj) + 2*E*d (out_proj)
                         + 2*(Q*G*N (C.B^T of the chunk, full block) + (Q/2)*H*P (intra-chunk scan, causal)
                              + H*P*N (chunk states) + H*P*N (states -> outputs)) ]
        + 2*(2d)*d (gate merge Linear(2d, d))
    Transformer, per token and layer, forward (n = the cell's length; Lpad for pads included):
        2*(3d^2 + d^2 + 8d^2) + 2*2*n*d (QK^T and PV, non-causal)
    training = 3 x forward; MFU = FLOPs / step time / peak dense bf16 FLOP/s of the GPU.

Memory: peak allocated during the step minus what was allocated before it (weights, optimizer state),
per real token of the step.

Run (GPU, see shared/gpu/README.md)::

    python benchmarks/throughput.py --out $OUT            # writes throughput_<gpu>.json + .png
    python benchmarks/throughput.py --smoke --out /tmp/t  # CPU, tiny model, seconds
    python benchmarks/throughput.py --plot-only benchmarks/results/throughput_h100.json

The JSON is rewritten after every measurement; ``--budget-s`` bounds the whole run (remaining settings
are skipped and recorded as such).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

LENGTHS_NPY = ROOT / "benchmarks" / "data" / "celltypist_gene_counts.npy"
SAMPLE_H5AD = "celltypist_sample_559cells_counts.h5ad"

# dense bf16 tensor-core peak (no sparsity), FLOP/s
PEAK_BF16 = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100|H800", 989.4e12),
    (r"H200", 989.4e12),
    (r"A100", 312e12),
]

TARGETS = {
    "real_train_ratio_top2048": 2.0,
    "real_train_ratio_top4096": 3.0,
    "real_infer_cells_per_s_top2048": 1500.0,
    "real_infer_ratio": 2.0,
    "full_train_ratio_L2048": 1.5,
    "full_train_ratio_L8192": 3.0,
    "mfu_train": 0.35,
    "mfu_infer": 0.50,
}


# ----------------------------------------------------------------------------------------------------
# Data: per-cell number of expressed genes
# ----------------------------------------------------------------------------------------------------
def extract_lengths(h5ad: Path, out: Path = LENGTHS_NPY) -> np.ndarray:
    """Genes with a non-zero count per cell, from the CSR ``X`` of an ``.h5ad`` read with h5py only."""
    import h5py

    with h5py.File(h5ad, "r") as f:
        X = f["X"]
        if X.attrs.get("encoding-type", "") != "csr_matrix":
            raise ValueError(f"{h5ad}: X is {X.attrs.get('encoding-type')!r}, expected csr_matrix")
        indptr = X["indptr"][:]
        nonzero = (X["data"][:] != 0).astype(np.int64)
    counts = np.add.reduceat(nonzero, indptr[:-1]) if nonzero.size else np.zeros(len(indptr) - 1, np.int64)
    counts[np.diff(indptr) == 0] = 0  # reduceat quirk on empty rows
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, counts.astype(np.int32))
    return counts


def load_lengths(path: Path = LENGTHS_NPY) -> np.ndarray:
    if path.is_file():
        return np.load(path).astype(np.int64)
    for cand in (ROOT.parent / "shared" / "data" / SAMPLE_H5AD, ROOT / "shared" / "data" / SAMPLE_H5AD):
        if cand.is_file():
            return extract_lengths(cand, path).astype(np.int64)
    raise FileNotFoundError(f"{path} missing and no {SAMPLE_H5AD} to compute it from")


# ----------------------------------------------------------------------------------------------------
# Transformer baseline
# ----------------------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(o.transpose(1, 2).reshape(B, L, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    def forward_packed(self, x: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        """Same block on packed real tokens ``[T, d]`` (cells delimited by int32 ``cu``): no pad computed.

        Attention is ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention varlen kernels, torch >= 2.10).
        """
        from torch.nn.attention.varlen import varlen_attn

        T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(T, 3, self.n_heads, d // self.n_heads).unbind(1)
        o = varlen_attn(q, k, v, cu, cu, max_len, max_len)
        x = x + self.proj(o.reshape(T, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class SDPATransformer(nn.Module):
    """Pre-LN transformer encoder (bidirectional attention), PyTorch SDPA, MLP 4x."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, head_dim: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model, padding_idx=0)
        self.layers = nn.ModuleList([TransformerBlock(d_model, d_model // head_dim) for _ in range(n_layers)])
        self.norm_f = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, has_pads: bool) -> torch.Tensor:
        x = self.embedding(tokens)
        mask = None
        if has_pads:  # additive key-padding mask in the attention dtype (the efficient kernel's native form)
            L = tokens.shape[1]
            keep = (torch.arange(L, device=tokens.device)[None] < lengths[:, None])[:, None, None, :]
            dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            mask = torch.zeros(keep.shape, dtype=dt, device=x.device).masked_fill(~keep, float("-inf"))
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm_f(x)

    def forward_packed(self, tokens: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
        """``[T, d]`` hidden states of packed cells (the ``transformer_varlen`` baseline: same weights)."""
        x = self.embedding(tokens)
        cu = cu.to(torch.int32)
        for layer in self.layers:
            x = layer.forward_packed(x, cu, max_len)
        return self.norm_f(x)


# ----------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------
def mamba_flops_per_token_layer(cfg: dict[str, Any]) -> float:
    d, E, N, P, G, Q = (
        cfg["d_model"],
        cfg["expand"] * cfg["d_model"],
        cfg["d_state"],
        cfg["headdim"],
        1,
        cfg["chunk_size"],
    )
    H = E // P
    d_in = 2 * E + 2 * G * N + H
    direction = 2 * d * d_in + 2 * E * d + 2 * (Q * G * N + (Q / 2) * H * P + H * P * N + H * P * N)
    return 2 * direction + 2 * (2 * d) * d


def mamba_forward_flops(lengths: np.ndarray, cfg: dict[str, Any]) -> float:
    return float(lengths.sum()) * cfg["n_layers"] * mamba_flops_per_token_layer(cfg)


def transformer_forward_flops(lengths: np.ndarray, cfg: dict[str, Any], pad_to: int | None = None) -> float:
    d, nl = cfg["d_model"], cfg["n_layers"]
    if pad_to is None:
        n = lengths.astype(np.float64)
        return float(nl * (n.sum() * 2 * 12 * d * d + (n * n).sum() * 4 * d))
    tokens = len(lengths) * pad_to
    return float(nl * (tokens * 2 * 12 * d * d + tokens * pad_to * 4 * d))


def peak_flops(name: str) -> float | None:
    for pat, val in PEAK_BF16:
        if re.search(pat, name):
            return val
    return None


# ----------------------------------------------------------------------------------------------------
# mamba-ssm Triton autotuning: prune / pin / dump
# ----------------------------------------------------------------------------------------------------
def _tuners() -> dict[str, Any]:
    """The mamba-ssm autotuners (the package's own lookup, :mod:`genemamba_scvi.nn.kernel_configs`)."""
    from genemamba_scvi.nn.kernel_configs import autotuners

    return autotuners()


def _sig(cfg: Any) -> str:
    return json.dumps({"kw": sorted((k, v) for k, v in cfg.kwargs.items()), "w": cfg.num_warps, "s": cfg.num_stages})


def configure_autotune(policy: str, pinned: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """``full``: the kernels' own config lists; ``prune``: drop 2-warp configs of the matmul kernels;
    ``pin``: keep only the winners recorded by an earlier run (configs kept with their pre-hooks)."""
    info: dict[str, Any] = {"policy": policy, "n_configs_before": 0, "n_configs_after": 0}
    for name, t in _tuners().items():
        cfgs = list(t.configs)
        info["n_configs_before"] += len(cfgs)
        keep = cfgs
        if policy in ("prune", "pin") and any("BLOCK_SIZE_M" in c.kwargs for c in cfgs):
            keep = [c for c in cfgs if c.num_warps >= 4] or cfgs
        if policy == "pin" and pinned and name in pinned:
            sel = [c for c in cfgs if _sig(c) in set(pinned[name])]
            keep = sel or keep
        t.configs = keep
        info["n_configs_after"] += len(keep)
    return info


def autotune_winners() -> dict[str, list[str]]:
    out = {}
    for name, t in _tuners().items():
        cache = getattr(t, "cache", None) or {}
        wins = sorted({_sig(c) for c in cache.values()})
        if wins:
            out[name] = wins
    return out


# ----------------------------------------------------------------------------------------------------
# Benchmark machinery
# ----------------------------------------------------------------------------------------------------
#: Ablations of one BiMambaBlock switch: setting kind -> (class attribute, value during the setting, note).
def _switch(name: str) -> tuple[Any, str]:
    """``(owner, attribute)`` of an ablation switch: ``BiMambaBlock``'s, or a module's of ``genemamba_scvi.nn`` for
    ``"<module>.<name>"`` (``"fused._NORM_FWD_VARIANT"``)."""
    if "." in name:
        import importlib

        mod, attr = name.split(".", 1)
        return importlib.import_module(f"genemamba_scvi.nn.{mod}"), attr
    from genemamba_scvi.nn import BiMambaBlock

    return BiMambaBlock, name


BLOCK_ABLATIONS = {  # setting kind -> (switches set for the run: BiMambaBlock's, or "fused.<name>"; note)
    "ablation_gather_then_project": (
        {"project_once": False},
        "tokens gathered into the two-direction row, then in_proj on 2T rows",
    ),
    "ablation_unfused_both": (
        {"fused_both": False, "fused_merge": False},
        "projection gathered into the [2T] row, then mamba_split_conv1d_scan_combined; merge in torch",
    ),
    "ablation_mamba_ssd": (
        {"fused_ssd": False},
        "fused path with mamba-ssm's chunked SSD forward instead of nn.fused.ssd_varlen",
    ),
    "ablation_conv_in_scan": (
        {"fused_conv_ssd": True},
        "inference: causal conv inside the scan (nn.fused.ssd_conv_varlen), not conv_both then ssd_varlen",
    ),
    "ablation_unfused_merge": (
        {"fused_merge": False},
        "inference: gated merge in torch (gather, two addmm, sigmoid, lerp), not nn.fused.gate_merge_both",
    ),
    "ablation_unfused_training": (
        {"fused_both_training": False},
        "training through mamba_split_conv1d_scan_combined (not nn.fused.mixer_both)",
    ),
    "ablation_merge_then_norm": (
        {"merge_add_norm": False},
        "inference: the merge pass, then the stream's add + RMSNorm (encoder._ADD_NORM; not gate_merge_add_norm)",
    ),
    "ablation_norm_by_row": (
        {"fused._NORM_FWD_VARIANT": "rows"},
        "gated-norm forward with one program per row, not by token (both rows of a token, its gate read once)",
    ),
    "ablation_ssd_one_head_small": (
        {"fused_ssd._SSD_MIN_PROGRAMS": 528},
        "one head per SSD program when a batch gives fewer than 528 (4 per H200 SM) programs at 4 heads",
    ),
    "ablation_rev_scatter": (
        {"fused._REV_ROWS_GATHER": False},
        "training: the reversed rows' backward as autograd's scatter-add (index_add) for wide rows as well",
    ),
    "ablation_rev_gather_all": (
        {"fused._REV_GATHER_MIN_WIDTH": 0},
        "training: the reversed rows' backward as a gather (a Python autograd function) for narrow rows (dt) too",
    ),
    "ablation_conv_bwd_rows2d": (
        {"fused._CONV_BWD_VARIANT": "rows2d"},
        "training: conv backward's first pass by row with 2-D tiles (a reversal index per row), not by token",
    ),
    "ablation_conv_dx_32x128": (
        {"fused._CONV_DX_BLOCK": (32, 128, 4)},
        "training: the conv backward's second pass in 32 x 128 tiles with 4 warps (spills; default 16 x 128)",
    ),
    "ablation_conv_bwd_span": (
        {"fused._CONV_BWD_VARIANT": "span"},
        "training: conv backward taps checked against each token's distances to its cell's ends (no seq load per tap)",
    ),
    "ablation_conv_bwd_3d": (
        {"fused._CONV_BWD_VARIANT": "bf16dpre"},
        "training: conv backward's first kernel with one [rows, channels, taps] tile (not one 2-D tile per tap)",
    ),
    "ablation_state_walk_serial": (
        {"fused_ssd_bwd._SSD_BWD_STATES": "mamba"},
        "training: mamba-ssm's SSD backward with its serial state walks over all chunks (not one walk per run)",
    ),
    "ablation_conv_dx_cell_ids": (
        {"fused._CONV_DX_BOUNDS": False},
        "training: the conv backward's second pass checks taps with one cell-id load per tap, not the cell bounds",
    ),
    "ablation_dda_torch": (
        {"fused_ssd_bwd._DDA_IN_REV_SUM": False},
        "training: the inter-chunk share of d(dt*A) by six torch ops, not in the pairs' reverse-sum kernel",
    ),
    "ablation_merge_db_sum": (
        {"fused_merge._MERGE_DB_IN_KERNEL": False},
        "training: the gate bias' gradient as a column sum of the [T, d] bf16 gradient, not the kernel's block sums",
    ),
    "ablation_mamba_dcb_ddA": (
        {"fused_ssd_bwd._SSD_BWD_DDA": "mamba"},
        "training: mamba-ssm's d(CB) and ddA kernels, not one pass (ssd_dcb_ddacs) + the per-sequence reverse sum",
    ),
    "ablation_dt_torch": (
        {"fused_split._DT_BOTH_KERNEL": False},
        "training: dt of both directions by index_select + cat (autograd's index_add_ backward), not dt_both's kernel",
    ),
    "ablation_dcb_fp32": (
        {"fused_ssd_bwd._DCB_IN_DOT_DTYPE": False},
        "training: d(C B^T) stored in fp32, not in the bf16 that mamba-ssm's _bmm_chunk_bwd rounds it to",
    ),
    "ablation_split_sum": (
        {"fused_ssd_bwd._SSD_NO_SPLIT_SUM": False},
        "training: mamba-ssm's dB / dC wrappers with their sum over one head split, not the split-free launch",
    ),
    "ablation_cb_fp32": (
        {"fused_ssd_bwd._CB_IN_BF16": False},
        "training: C B^T of the chunks recomputed in fp32 for the SSD backward, not in bf16",
    ),
    "ablation_db_cumsum_torch": (
        {"fused_ssd_bwd._DB_CUMSUM_IN_REV_SUM": False},
        "training: the db kernel's ddA shares summed by a torch.cumsum, not inside the reverse-sum kernel",
    ),
    "ablation_fat_launches": (
        {"fused_split._LEAN_LAUNCHES": False},
        "training: zero-filled partial sums, weights cast again in the backward, bf16 weight gradients then cast",
    ),
    "option_weights_once": (
        {"fused_weights._WEIGHTS_ONCE": True},
        "training/inference: every layer's GEMM weights cast to bf16 once per batch (an option, off by default)",
    ),
    "option_merge_bmm": (
        {"fused_merge._MERGE_BMM": True},
        "training/inference: the merge's GEMM pairs as one batched GEMM each, the bias in the kernel (an option)",
    ),
    "ablation_a_per_layer": (
        {"fused_ssd._A_ONCE": False},
        "training: each layer's -exp(A_log) in its own forward (two launches), not all layers' from one stack",
    ),
    "ablation_dcb_decay_per_pair": (
        {"fused_ssd_bwd.DCB_DDA_CONFIG": {"BM": 64, "BN": 64, "num_warps": 2, "num_stages": 2, "split": False}},
        "training: the d(CB)+ddA pass with the decay per pair on every tile, not split on the tiles below the diagonal",
    ),
    "ablation_heads_dx": (
        {"fused_ssd_bwd._SSD_BWD_DX": "heads"},
        "training: dx, ddt, dD by ssd_chunk_dx (the heads of a tile side by side), not mamba-ssm's dx kernel",
    ),
    "ablation_fused_intra_bwd": (
        {"fused_ssd_bwd._SSD_BWD_INTRA": "fused"},
        "training: dx, ddt, dD, d(CB) and the pairs' ddA in one pass (ssd_chunk_bwd), not mamba-ssm's three kernels",
    ),
    "ablation_mamba_intra_bwd": (
        {"fused_ssd_bwd._SSD_BWD_INTRA": "mamba"},
        "training: mamba-ssm's dx, d(CB) and ddA kernels, not the one-pass intra-chunk backward (ssd_chunk_bwd)",
    ),
    "ablation_split_cat": (
        {"fused._SPLIT_GRAD_IN_PLACE": False},
        "training: torch.split of the projection (autograd concatenates the z, xBC, dt grads), not split_projection",
    ),
    "ablation_norm_bwd_by_token": (
        {"fused._NORM_BWD_VARIANT": "rows"},
        "training: gated-norm backward one token at a time with 1-D vectors (not [tokens, group] tiles)",
    ),
    "ablation_norm_bwd_tiles_4x8": (
        {"fused._NORM_BWD_2D": (4, 8, 8)},
        "training: gated-norm backward tiles of 4 tokens, 8 blocks a program, 8 warps (default 1 x 32, 4 warps)",
    ),
    "ablation_norm_bwd_tiles_2x16": (
        {"fused._NORM_BWD_2D": (2, 16, 4)},
        "training: gated-norm backward tiles of 2 tokens, 16 blocks a program, 4 warps (spills; default 1 x 32)",
    ),
    "ablation_mamba_add_norm": (
        {"encoder._ADD_NORM": "mamba"},
        "training: the stream's add + RMSNorm by mamba-ssm's rms_norm_fn (not nn.fused_norm.add_rms_norm)",
    ),
    "ablation_torch_merge_training": (
        {"fused_merge_training": False},
        "training: the gate merge in torch (gather, addmm, sigmoid, lerp; autograd's backward), not gate_merge_train",
    ),
    "ablation_folded_norm": (
        {"fold_norm": True},
        "inference: gated RMSNorm folded into the scan (ssd_varlen_both with z) and the merge, not its own pass",
    ),
}


def fused_failures() -> dict[str, str]:
    """The fused Bi-Mamba kernels' failures in this process (device -> error; empty when they ran)."""
    from genemamba_scvi.nn import bimamba

    return dict(bimamba._FUSED_FAILED)


def _has_varlen_attn() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except Exception:
        return False
    return True


def gpu_tag(name: str) -> str:
    m = re.search(r"(H100|H200|H800|A100|L40S|L4|A10G|GH200|B200)", name)
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t_start = time.perf_counter()
        self.dev = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.cuda = self.dev.type == "cuda"
        self.amp = torch.bfloat16 if (self.cuda or args.dtype == "bf16") and args.dtype != "fp32" else None
        self.rng = np.random.default_rng(args.seed)
        self.counts = load_lengths(Path(args.lengths))
        self.results: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.fatal: str | None = None
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.gpu_name = torch.cuda.get_device_name(0) if self.cuda else f"CPU ({platform.processor() or 'cpu'})"
        tag = gpu_tag(self.gpu_name) if self.cuda else "cpu"
        if args.smoke:
            tag += "_smoke"
        self.json_path = self.out_dir / f"throughput_{tag}.json"
        self.png_path = self.out_dir / f"throughput_{tag}.png"
        self.cfg = self._model_cfg()
        self.meta: dict[str, Any] = {}
        self.autotune: dict[str, Any] = {}
        self.sdpa_restrict = True  # no silent fallback to the O(L^2)-memory math kernel

    # -- config ----------------------------------------------------------------------------------------
    def _model_cfg(self) -> dict[str, Any]:
        a = self.args
        if a.smoke:
            return dict(vocab=500, d_model=64, n_layers=2, d_state=16, headdim=32, expand=2, chunk_size=32)
        return dict(
            vocab=a.vocab,
            d_model=a.d_model,
            n_layers=a.n_layers,
            d_state=64,
            headdim=64,
            expand=2,
            chunk_size=a.chunk_size,
        )

    def settings(self) -> list[dict[str, Any]]:
        a = self.args
        if a.smoke:
            ks, Ls, tr_cells, inf_cells, tr_tok, inf_tok = (64, 128), (32, 64, 128, 256), 6, 12, 512, 1024
            real = [("real", k, m, tr_cells if m == "train" else inf_cells) for k in ks for m in ("train", "infer")]
            full = [
                ("full", L, m, max(1, (tr_tok if m == "train" else inf_tok) // L))
                for m in ("train", "infer")
                for L in Ls
            ]
            extra = [
                ("ablation_gather_then_project", 64, "train", tr_cells),
                ("ablation_unfused_training", 64, "train", tr_cells),
                ("ablation_no_fused_norm", 64, "train", tr_cells),
                ("stress", 128, "infer", 40),
            ]
        else:
            real = [
                ("real", 2048, "train", a.train_cells_2048),
                ("real", 2048, "infer", a.infer_cells_2048),
                ("real", 4096, "train", a.train_cells_4096),
                ("real", 4096, "infer", a.infer_cells_4096),
            ]
            tt, it = a.train_tokens, a.infer_tokens
            order = [
                (2048, "train"),
                (8192, "train"),
                (2048, "infer"),
                (8192, "infer"),
                (1024, "train"),
                (4096, "train"),
                (1024, "infer"),
                (4096, "infer"),
            ]
            full = [("full", L, m, max(1, (tt if m == "train" else it) // L)) for L, m in order]
            extra = [
                ("ablation_dt_torch", 2048, "train", a.train_cells_2048),
                ("ablation_dcb_fp32", 2048, "train", a.train_cells_2048),
                ("ablation_split_sum", 2048, "train", a.train_cells_2048),
                ("ablation_a_per_layer", 2048, "train", a.train_cells_2048),
                ("ablation_cb_fp32", 2048, "train", a.train_cells_2048),
                ("ablation_fat_launches", 2048, "train", a.train_cells_2048),
                ("ablation_gather_then_project", 2048, "train", a.train_cells_2048),
                ("ablation_gather_then_project", 2048, "infer", a.infer_cells_2048),
                ("ablation_unfused_training", 2048, "train", a.train_cells_2048),
                ("ablation_unfused_both", 2048, "infer", a.infer_cells_2048),
                ("ablation_mamba_ssd", 2048, "infer", a.infer_cells_2048),
                ("ablation_conv_in_scan", 2048, "infer", a.infer_cells_2048),
                ("ablation_unfused_merge", 2048, "infer", a.infer_cells_2048),
                ("ablation_folded_norm", 2048, "infer", a.infer_cells_2048),
                ("ablation_merge_then_norm", 2048, "infer", a.infer_cells_2048),
                ("ablation_norm_by_row", 2048, "infer", a.infer_cells_2048),
                ("ablation_norm_by_row", 2048, "train", a.train_cells_2048),
                ("ablation_ssd_one_head_small", 2048, "train", a.train_cells_2048),
                ("ablation_rev_gather_all", 2048, "train", a.train_cells_2048),
                ("ablation_conv_bwd_rows2d", 2048, "train", a.train_cells_2048),
                ("ablation_conv_dx_32x128", 2048, "train", a.train_cells_2048),
                ("ablation_conv_bwd_span", 2048, "train", a.train_cells_2048),
                ("ablation_conv_bwd_3d", 2048, "train", a.train_cells_2048),
                ("ablation_state_walk_serial", 2048, "train", a.train_cells_2048),
                ("ablation_mamba_dcb_ddA", 2048, "train", a.train_cells_2048),
                ("ablation_conv_dx_cell_ids", 2048, "train", a.train_cells_2048),
                ("ablation_merge_db_sum", 2048, "train", a.train_cells_2048),
                ("ablation_dda_torch", 2048, "train", a.train_cells_2048),
                ("ablation_split_cat", 2048, "train", a.train_cells_2048),
                ("ablation_heads_dx", 2048, "train", a.train_cells_2048),
                ("ablation_dcb_decay_per_pair", 2048, "train", a.train_cells_2048),
                ("ablation_fused_intra_bwd", 2048, "train", a.train_cells_2048),
                ("ablation_mamba_intra_bwd", 2048, "train", a.train_cells_2048),
                ("ablation_norm_bwd_by_token", 2048, "train", a.train_cells_2048),
                ("ablation_norm_bwd_tiles_4x8", 2048, "train", a.train_cells_2048),
                ("ablation_norm_bwd_tiles_2x16", 2048, "train", a.train_cells_2048),
                ("ablation_mamba_add_norm", 2048, "train", a.train_cells_2048),
                ("ablation_torch_merge_training", 2048, "train", a.train_cells_2048),
                ("ablation_no_fused_norm", 2048, "train", a.train_cells_2048),
                ("stress", 4096, "infer", a.stress_cells),
            ]
        out = []
        for kind, n, mode, cells in real + full + extra:
            name = f"{kind}_{'top' if kind != 'full' else 'L'}{n}_{mode}"
            if a.only and not any(sub in name for sub in a.only.split(",")):
                continue
            out.append(dict(kind=kind, n=n, mode=mode, cells=cells, name=name))
        return out

    # -- models ----------------------------------------------------------------------------------------
    def build(self) -> None:
        from genemamba_scvi.nn import BiMambaBlock, GeneMambaEncoder, causal_conv1d_available, mamba_ssm_available
        from genemamba_scvi.nn import fused as fused_mod

        c = self.cfg
        torch.manual_seed(0)
        backend = "auto" if self.args.backend == "auto" else self.args.backend
        self.mamba = GeneMambaEncoder(
            c["vocab"],
            d_model=c["d_model"],
            n_layers=c["n_layers"],
            d_state=c["d_state"],
            headdim=c["headdim"],
            expand=c["expand"],
            chunk_size=c["chunk_size"],
            backend=backend,
        ).to(self.dev)
        self.transformer = SDPATransformer(c["vocab"], c["d_model"], c["n_layers"], head_dim=min(64, c["d_model"])).to(
            self.dev
        )
        fused = dict(fused=True) if self.cuda else {}
        self.opt = {
            "genemamba": torch.optim.AdamW(self.mamba.parameters(), lr=1e-4, **fused),
            "transformer": torch.optim.AdamW(self.transformer.parameters(), lr=1e-4, **fused),
        }
        resolved = self.mamba.resolved_backend(self.dev)
        self.meta["models"] = {
            "genemamba": {
                "params": sum(p.numel() for p in self.mamba.parameters()),
                "params_without_embedding": sum(
                    p.numel() for n, p in self.mamba.named_parameters() if "embedding" not in n
                ),
                "backend": resolved,
                "fused_conv_scan_norm_outproj": bool(resolved == "mamba_ssm" and causal_conv1d_available()),
                "fused_add_rmsnorm": bool(self.mamba._use_fused_add_norm(self.dev)),
                "fused_bimamba_both_inference": bool(BiMambaBlock.fused_both and resolved == "mamba_ssm" and self.cuda),
                "fused_bimamba_both_training": bool(
                    BiMambaBlock.fused_both_training and resolved == "mamba_ssm" and self.cuda
                ),
                "fused_ssd_forward": bool(BiMambaBlock.fused_ssd),
                "ssd_fwd_config": dict(fused_mod.SSD_FWD_CONFIG),
                "conv_bwd": [fused_mod._CONV_BWD_VARIANT, list(fused_mod._CONV_BWD_BLOCK)],
                "pack_multiple": self.mamba._pack_multiple(self.dev),
                "path": "forward_packed: real tokens only, both directions in one varlen call per layer",
                "mamba_ssm_importable": bool(self.cuda and mamba_ssm_available()),
            },
            "transformer": {
                "params": sum(p.numel() for p in self.transformer.parameters()),
                "params_without_embedding": sum(
                    p.numel() for n, p in self.transformer.named_parameters() if "embedding" not in n
                ),
                "backend": "torch SDPA (flash without mask; efficient/cuDNN with key-padding mask; "
                "math disabled on CUDA)",
                "heads": c["d_model"] // min(64, c["d_model"]),
            },
        }
        if self.cuda:
            self.meta["models"]["transformer"]["sdpa_kernels_seen"] = self._probe_sdpa()

    def _probe_sdpa(self) -> dict[str, list[str]]:
        """Names of the attention kernels that SDPA runs with and without a padding mask (profiler)."""
        out: dict[str, list[str]] = {}
        try:
            from torch.profiler import ProfilerActivity, profile

            blk = self.transformer.layers[0]
            x = torch.randn(2, 256, self.cfg["d_model"], device=self.dev)
            lengths = torch.tensor([256, 100], device=self.dev)
            for label, mask in (
                ("no_mask", None),
                ("key_padding_mask", (torch.arange(256, device=self.dev)[None] < lengths[:, None])[:, None, None, :]),
            ):
                with self._sdpa_ctx(), torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
                    blk(x, mask)
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        blk(x, mask)
                        torch.cuda.synchronize()
                names = {
                    e.name for e in prof.events() if re.search(r"flash|fmha|attention|cudnn|sdpa|mha", e.name, re.I)
                }
                out[label] = sorted(n[:120] for n in names)[:6]
        except Exception as err:
            out["error"] = [repr(err)[:300]]
        return out

    def _sdpa_ctx(self):
        if not self.cuda or not self.sdpa_restrict:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backs = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            backs.append(SDPBackend.CUDNN_ATTENTION)
        return sdpa_kernel(backs)

    # -- batches ---------------------------------------------------------------------------------------
    def make_batch(self, s: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """A batch of setting ``s``: cell lengths drawn from ``rng`` (default: the runner's stream), random tokens."""
        if s["kind"] == "full":
            lens = np.full(s["cells"], s["n"], dtype=np.int64)
        else:
            lens = np.minimum((rng or self.rng).choice(self.counts, size=s["cells"], replace=True), s["n"]).astype(
                np.int64
            )
            lens = np.maximum(lens, 1)
        Lmax = int(lens.max())
        lengths = torch.from_numpy(lens).to(self.dev)
        tokens = torch.randint(3, self.cfg["vocab"], (len(lens), Lmax), device=self.dev)
        tokens.masked_fill_(torch.arange(Lmax, device=self.dev)[None] >= lengths[:, None], 0)
        return dict(tokens=tokens, lengths=lengths, lens=lens, Lmax=Lmax, has_pads=bool((lens < Lmax).any()))

    # -- steps -----------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp)

    def step(self, model: str, mode: str, b: dict[str, Any]) -> None:
        try:
            self._step(model, mode, b)
        except RuntimeError as err:
            if model != "transformer" or not self.sdpa_restrict or "kernel" not in str(err).lower():  # padded only
                raise
            self.sdpa_restrict = False
            self.notes.append(f"SDPA: no flash/efficient/cuDNN kernel applied ({str(err)[:200]}); math kernel allowed")
            self._step(model, mode, b)

    def _step(self, model: str, mode: str, b: dict[str, Any]) -> None:
        from torch.profiler import record_function  # phase labels for train_ab's trace (free when not profiling)

        from genemamba_scvi.nn import pack_tokens, pool_hidden, pool_packed

        if mode == "train":
            opt = self.opt[model.removesuffix("_varlen")]
            opt.zero_grad(set_to_none=True)
            with self._autocast(), self._sdpa_ctx(), record_function("phase:forward"):
                if model == "genemamba":
                    tp, cu = pack_tokens(b["tokens"], b["lengths"])
                    h = self.mamba.forward_packed(tp, cu, b["Lmax"])
                    loss = h.float().square().mean()
                elif model == "transformer_varlen":
                    tp, cu = pack_tokens(b["tokens"], b["lengths"])
                    h = self.transformer.forward_packed(tp, cu, b["Lmax"])
                    loss = h.float().square().mean()
                else:
                    h = self.transformer(b["tokens"], b["lengths"], b["has_pads"])
                    mask = torch.arange(b["Lmax"], device=self.dev)[None] < b["lengths"][:, None]
                    loss = (h.float().square().mean(-1) * mask).sum() / mask.sum()
            with record_function("phase:backward"):
                loss.backward()
            with record_function("phase:optimizer"):
                opt.step()
        else:
            with torch.inference_mode(), self._autocast(), self._sdpa_ctx():
                if model == "genemamba":
                    tp, cu = pack_tokens(b["tokens"], b["lengths"])
                    emb = pool_packed(self.mamba.forward_packed(tp, cu, b["Lmax"]), cu)
                elif model == "transformer_varlen":
                    tp, cu = pack_tokens(b["tokens"], b["lengths"])
                    emb = pool_packed(self.transformer.forward_packed(tp, cu, b["Lmax"]), cu)
                else:
                    emb = pool_hidden(self.transformer(b["tokens"], b["lengths"], b["has_pads"]), b["lengths"])
                emb.float().sum().item() if not self.cuda else None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, s: dict[str, Any], model: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
        a = self.args
        rec: dict[str, Any] = dict(
            setting=s["name"], kind=s["kind"], n=s["n"], mode=s["mode"], model=model, cells_per_step=s["cells"]
        )
        times, mem_act, mem_peak, real_tok, pad_tok = [], [], [], [], []
        t_first = None
        n_warm = a.warmup
        for i, b in enumerate(batches):
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            self._sync()
            t0 = time.perf_counter()
            self.step(model, s["mode"], b)
            self._sync()
            dt = time.perf_counter() - t0
            if i == 0:
                t_first = dt
            if i < n_warm:
                continue
            times.append(dt)
            real_tok.append(int(b["lens"].sum()))
            pad_tok.append(len(b["lens"]) * b["Lmax"])
            if self.cuda:
                peak = torch.cuda.max_memory_allocated()
                mem_peak.append(peak)
                mem_act.append((peak - before) / real_tok[-1])
        total_t = float(np.sum(times))
        lens_all = np.concatenate([b["lens"] for b in batches[n_warm:]])
        mult = 3.0 if s["mode"] == "train" else 1.0
        if model == "genemamba":
            flops = mult * mamba_forward_flops(lens_all, self.cfg)
            flops_pad = flops
        elif model == "transformer_varlen":
            flops = flops_pad = mult * transformer_forward_flops(lens_all, self.cfg)
        else:
            flops = mult * transformer_forward_flops(lens_all, self.cfg)
            flops_pad = mult * sum(transformer_forward_flops(b["lens"], self.cfg, b["Lmax"]) for b in batches[n_warm:])
        pk = self.meta.get("peak_flops")
        rec.update(
            steps=len(times),
            first_step_s=round(t_first, 3) if t_first is not None else None,
            step_time_s_median=float(np.median(times)),
            step_time_s_mean=total_t / len(times),
            real_tokens_per_step=float(np.mean(real_tok)),
            computed_tokens_per_step=float(np.mean(pad_tok)) if model == "transformer" else float(np.mean(real_tok)),
            padding_efficiency=float(np.sum(real_tok) / np.sum(pad_tok)),
            tokens_per_s=float(np.sum(real_tok) / total_t),
            # robust to one slow step (a Triton compilation, an allocator stall): the median of the per-step rates
            tokens_per_s_median_step=float(np.median(np.asarray(real_tok) / np.asarray(times))),
            cells_per_s=float(len(times) * s["cells"] / total_t),
            tflops_per_s=flops / total_t / 1e12,
            mfu=(flops / total_t / pk) if pk else None,
            mfu_incl_pad=(flops_pad / total_t / pk) if pk else None,
            step_times_s=[round(t, 5) for t in times],
            real_tokens_each_step=real_tok,
        )
        if mem_peak:
            rec.update(
                peak_mem_gib=max(mem_peak) / 2**30,
                act_mem_bytes_per_real_token=float(np.median(mem_act)),
            )
        if model == "genemamba":
            rec["mixer_calls_split_into"] = self.mamba.last_n_sub_batches
        return rec

    # -- output ----------------------------------------------------------------------------------------
    def ratios(self, baseline: str = "transformer") -> dict[str, Any]:
        by = {}
        for r in self.results:
            if "tokens_per_s" in r:
                by[(r["setting"], r["model"])] = r
        out = {}
        for (setting, model), r in by.items():
            if model != "genemamba" or (setting, baseline) not in by:
                continue
            t = by[(setting, baseline)]
            out[setting] = {
                "tokens_per_s_ratio": r["tokens_per_s"] / t["tokens_per_s"],
                "cells_per_s_ratio": r["cells_per_s"] / t["cells_per_s"],
                "act_mem_per_real_token_ratio": (
                    r["act_mem_bytes_per_real_token"] / t["act_mem_bytes_per_real_token"]
                    if "act_mem_bytes_per_real_token" in r and "act_mem_bytes_per_real_token" in t
                    else None
                ),
            }
        return out

    def targets(self, ratios: dict[str, Any]) -> dict[str, Any]:
        by = {(r["setting"], r["model"]): r for r in self.results if "tokens_per_s" in r}
        T = TARGETS
        out: dict[str, Any] = {}

        def chk(name, value, target, higher=True):
            if value is None:
                out[name] = {"target": target, "value": None, "met": None}
            else:
                out[name] = {
                    "target": target,
                    "value": value,
                    "met": bool(value >= target if higher else value <= target),
                }

        g = lambda s, k: ratios.get(s, {}).get(k)
        chk(
            "real_train_tokens_ratio_top2048",
            g("real_top2048_train", "tokens_per_s_ratio"),
            T["real_train_ratio_top2048"],
        )
        chk(
            "real_train_tokens_ratio_top4096",
            g("real_top4096_train", "tokens_per_s_ratio"),
            T["real_train_ratio_top4096"],
        )
        r = by.get(("real_top2048_infer", "genemamba"))
        chk("real_infer_cells_per_s_top2048", r["cells_per_s"] if r else None, T["real_infer_cells_per_s_top2048"])
        chk("real_infer_cells_ratio_top2048", g("real_top2048_infer", "cells_per_s_ratio"), T["real_infer_ratio"])
        chk("real_infer_cells_ratio_top4096", g("real_top4096_infer", "cells_per_s_ratio"), T["real_infer_ratio"])
        chk("full_train_tokens_ratio_L2048", g("full_L2048_train", "tokens_per_s_ratio"), T["full_train_ratio_L2048"])
        chk("full_train_tokens_ratio_L8192", g("full_L8192_train", "tokens_per_s_ratio"), T["full_train_ratio_L8192"])
        mt = [
            r["mfu"]
            for (s, m), r in by.items()
            if m == "genemamba" and r["mode"] == "train" and r.get("mfu") and r["kind"] in ("real", "full")
        ]
        mi = [
            r["mfu"]
            for (s, m), r in by.items()
            if m == "genemamba" and r["mode"] == "infer" and r.get("mfu") and r["kind"] in ("real", "full")
        ]
        chk("mfu_train_best", max(mt) if mt else None, T["mfu_train"])
        chk("mfu_infer_best", max(mi) if mi else None, T["mfu_infer"])
        mem = {s: v["act_mem_per_real_token_ratio"] for s, v in ratios.items() if v.get("act_mem_per_real_token_ratio")}
        chk("act_mem_per_real_token_ratio_worst", max(mem.values()) if mem else None, 1.0, higher=False)
        return out

    def targets_packed(self) -> dict[str, Any]:
        """Issue 14's targets against the packed (varlen) transformer, real top-2048 cells."""
        rv = self.ratios("transformer_varlen")
        by = {(r["setting"], r["model"]): r for r in self.results if "tokens_per_s" in r}
        inf = by.get(("real_top2048_infer", "genemamba"))
        tr = rv.get("real_top2048_train", {}).get("tokens_per_s_ratio")
        ir = rv.get("real_top2048_infer", {}).get("cells_per_s_ratio")

        def chk(target: float, value: float | None) -> dict[str, Any]:
            return {"target": target, "value": value, "met": None if value is None else value >= target}

        return {
            "train_tokens_ratio_vs_varlen_top2048": chk(1.0, tr),
            "infer_cells_ratio_vs_varlen_top2048": chk(1.3, ir),
            "infer_cells_per_s_top2048": chk(1200, inf["cells_per_s"] if inf else None),
        }

    def write(self, complete: bool = False) -> None:
        ratios = self.ratios()
        doc = {
            "what": "GeneMamba (packed, mamba-ssm kernels) vs same-width/depth PyTorch SDPA transformer: "
            "training (fwd+bwd+AdamW) and inference throughput on real-cell lengths and full-length sequences",
            "gpu": self.gpu_name,
            **self.meta,
            "config": {
                **self.cfg,
                "dtype": "bf16 autocast" if self.amp else "fp32",
                "warmup_steps": self.args.warmup,
                "timed_steps": self.args.steps,
                "timed_steps_real_settings": self.args.real_steps,
                "seed": self.args.seed,
                "smoke": self.args.smoke,
            },
            "lengths_source": f"{LENGTHS_NPY.relative_to(ROOT)}: genes with non-zero counts per cell of the shipped "
            f"{SAMPLE_H5AD} ({len(self.counts)} cells, median {int(np.median(self.counts))}); cell length = min(n, k)",
            "flops_formula": FLOPS_DOC,
            "memory": "act_mem_bytes_per_real_token = (peak allocated during the step - allocated before it) "
            "/ real tokens",
            "autotune": self.autotune,
            "results": self.results,
            "ratios_genemamba_over_transformer": ratios,
            "ratios_genemamba_over_transformer_varlen": self.ratios("transformer_varlen"),
            "targets_issue14": self.targets_packed(),
            "targets": self.targets(ratios),
            "notes": self.notes,
            # the devices on which the fused kernels raised: from then on GeneMamba ran mamba-ssm's layer, so its
            # numbers are not the fused path's (session 24, call 3: a kernel that failed to compile on the GPU)
            "fused_failed": fused_failures(),
            "fatal": self.fatal,
            "elapsed_s": round(time.perf_counter() - self.t_start, 1),
            "complete": complete,
        }
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
        tmp.replace(self.json_path)

    # -- main loop -------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def run(self) -> None:
        a = self.args
        self.meta.update(versions())
        self.meta["peak_flops"] = peak_flops(self.gpu_name) if self.cuda else None
        if self.cuda and not a.smoke:
            pinned = None
            if a.autotune.startswith("pin:"):
                pinned = json.loads(Path(a.autotune[4:]).read_text()).get("autotune", {}).get("winners")
            self.autotune = configure_autotune(a.autotune.split(":")[0], pinned)
            if pinned:
                self.autotune["pinned_from"] = a.autotune[4:]
                self.autotune["pinned"] = pinned
        from genemamba_scvi.nn import fused, fused_ssd_bwd

        for path, key, cfg in ((a.ssd_sweep, "sweep_ssd", fused.SSD_FWD_CONFIG),
                               (a.conv_ssd_sweep, "sweep_conv_ssd", fused.SSD_CONV_FWD_CONFIG),
                               (a.ssd_bwd_sweep, "sweep_ssd_bwd", fused_ssd_bwd.DCB_DDA_CONFIG)):  # fmt: skip
            if path:  # the launch shape of ssd_varlen / ssd_conv_varlen: the fastest of a fused_bimamba.py sweep
                best = json.loads(Path(path).read_text())[key]["best"]
                cfg.update({k: best[k] for k in cfg if k in best})
        if a.conv_sweep:  # conv_both's forward: the fastest variant and shape of a fused_bimamba.py --sweep-conv
            rows = [r for r in json.loads(Path(a.conv_sweep).read_text())["sweep_conv"] if "ms" in r]
            best = min((r for r in rows if r["kernel"] in ("fwd", "fwd_tokens")), key=lambda r: r["ms"])
            if best["kernel"] == "fwd_tokens":
                fused._CONV_FWD_VARIANT, fused._CONV_TOK_BLOCK = "tokens", tuple(best["config"])
            else:
                fused._CONV_FWD_VARIANT, fused._CONV_BLOCK = "rows", tuple(best["config"][:2])
        if self.cuda:
            self.meta["conv_fwd"] = {"variant": fused._CONV_FWD_VARIANT, "rows": fused._CONV_BLOCK,
                                     "tokens": fused._CONV_TOK_BLOCK}  # fmt: skip
            cfgs = {"ssd_varlen": fused.SSD_FWD_CONFIG, "ssd_conv_varlen": fused.SSD_CONV_FWD_CONFIG}
            cfgs["ssd_dcb_ddacs"] = fused_ssd_bwd.DCB_DDA_CONFIG
            self.meta["ssd_configs"] = {k: dict(v) for k, v in cfgs.items()}
        self.build()
        self.write()
        if not a.no_prewarm:
            self.prewarm()
            self.write()
        est_step = {"genemamba": 1.0, "transformer": 1.0, "transformer_varlen": 1.0}
        for s in self.settings():
            profile_now = a.profile_first or s["kind"] == "ablation_no_fused_norm"
            if profile_now and not a.no_profile and "profile" not in self.meta:
                if self.elapsed() + 15 < a.budget_s:
                    self.meta["profile"] = self.profile()
                    self.write()
            if self.fatal:
                break
            models = ["genemamba", "transformer"]
            if s["kind"] == "real" and self.cuda and _has_varlen_attn():
                models.append("transformer_varlen")
            if s["kind"] in BLOCK_ABLATIONS or s["kind"] in ("ablation_no_fused_norm", "stress"):
                models = ["genemamba"]
            batches = None
            for model in models:
                n_steps = a.warmup + (a.real_steps if s["kind"] == "real" else a.steps)
                need = est_step[model] * n_steps * 1.2 + 2
                if self.elapsed() + need > a.budget_s:
                    self.results.append(
                        dict(
                            setting=s["name"],
                            model=model,
                            mode=s["mode"],
                            kind=s["kind"],
                            n=s["n"],
                            skipped=f"time budget ({self.elapsed():.0f}s used, ~{need:.0f}s needed)",
                        )
                    )
                    print(f"[skip] {s['name']} {model}: budget", flush=True)
                    continue
                if batches is None:
                    # the cells of a setting's timed steps depend on (seed, n, mode, cells) only, so an ablation
                    # times the same batches as the "real" setting it is compared with
                    rng = np.random.default_rng([self.args.seed, s["n"], s["mode"] == "train", s["cells"]])
                    batches = [self.make_batch(s, rng) for _ in range(n_steps)]
                prev_fused = self.mamba.fused_add_norm
                if s["kind"] == "ablation_no_fused_norm":
                    self.mamba.fused_add_norm = False
                ablation = BLOCK_ABLATIONS.get(s["kind"])
                if ablation is not None:
                    saved_switches = {k: getattr(*_switch(k)) for k in ablation[0]}
                    for k, v in ablation[0].items():
                        setattr(*_switch(k), v)
                t0 = time.perf_counter()
                try:
                    rec = self.measure(s, model, batches)
                    if s["kind"] == "ablation_no_fused_norm":
                        rec["note"] = "fused residual-add+RMSNorm replaced by eager add + RMSNorm"
                    if ablation is not None:
                        rec["note"] = ablation[1]
                    self.results.append(rec)
                    est_step[model] = max(rec["step_time_s_median"], 0.05)
                    print(
                        f"[ok] {s['name']:28s} {model:11s} {rec['tokens_per_s'] / 1e3:9.1f}k real tok/s "
                        f"(median step {rec['tokens_per_s_median_step'] / 1e3:.1f}k) "
                        f"{rec['cells_per_s']:8.1f} cells/s step {rec['step_time_s_median'] * 1e3:7.1f} ms "
                        f"mfu {rec['mfu'] if rec['mfu'] is not None else float('nan'):.3f} "
                        f"mem {rec.get('peak_mem_gib', float('nan')):.1f} GiB first {rec['first_step_s']:.1f}s",
                        flush=True,
                    )
                except torch.cuda.OutOfMemoryError as err:
                    self.results.append(
                        dict(
                            setting=s["name"],
                            model=model,
                            mode=s["mode"],
                            kind=s["kind"],
                            n=s["n"],
                            cells_per_step=s["cells"],
                            error=f"OOM: {str(err)[:200]}",
                        )
                    )
                    print(f"[oom] {s['name']} {model}", flush=True)
                except Exception as err:
                    msg = f"{type(err).__name__}: {str(err)[:500]}"
                    self.results.append(
                        dict(
                            setting=s["name"],
                            model=model,
                            mode=s["mode"],
                            kind=s["kind"],
                            n=s["n"],
                            cells_per_step=s["cells"],
                            error=msg,
                        )
                    )
                    print(f"[error] {s['name']} {model}: {msg}\n{traceback.format_exc()[-1500:]}", flush=True)
                    if "CUDA error" in msg or "illegal memory" in msg or "AcceleratorError" in msg:
                        self.fatal = msg
                    elif model == "genemamba" and self.mamba._use_fused_add_norm(self.dev) and prev_fused is None:
                        self.notes.append(f"fused add+RMSNorm disabled after an error in {s['name']}: {msg[:200]}")
                        self.mamba.fused_add_norm = False
                        self.meta["models"]["genemamba"]["fused_add_rmsnorm"] = False
                finally:
                    if ablation is not None:
                        for k, v in saved_switches.items():
                            setattr(*_switch(k), v)
                    if s["kind"] == "ablation_no_fused_norm":
                        self.mamba.fused_add_norm = prev_fused
                    self.opt[model.removesuffix("_varlen")].zero_grad(set_to_none=True)
                    gc.collect()
                    if self.cuda and not self.fatal:
                        torch.cuda.empty_cache()
                if model == "genemamba" and self.cuda and "winners" not in self.autotune and s["mode"] == "train":
                    self.autotune["winners"] = autotune_winners()
                    self.autotune["first_train_step_s"] = self.results[-1].get("first_step_s")
                if model == "genemamba" and not self.fatal and "self_check" not in self.meta and s["mode"] == "train":
                    self.meta["self_check"] = self.self_check()
                self.write()
                print(f"    ({time.perf_counter() - t0:.1f}s, total {self.elapsed():.0f}s)", flush=True)
        self.write(complete=not self.fatal)
        try:
            plot(self.json_path, self.png_path)
        except Exception as err:
            print(f"plot failed: {err!r}", flush=True)
        print_table(self.json_path)

    def prewarm(self) -> None:
        """Untimed steps before any measurement: Triton autotuning (on a realistic real-cell batch) and
        compilation of every kernel specialisation the settings will meet (row lengths that are and are
        not multiples of 16 chunks), for training and inference, then the transformer's first calls."""
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        try:
            sm = self.args.smoke
            real = dict(kind="real", n=64 if sm else 2048, cells=6 if sm else self.args.train_cells_2048, mode="train")
            mult = 64 if sm else 256 * 16  # a row of a multiple of 16 chunks of 256 tokens
            full = dict(
                kind="full", n=mult, cells=max(1, (512 if sm else self.args.train_tokens) // mult), mode="train"
            )
            for mode in ("train", "infer"):
                for spec in (real, full, real):
                    b = self.make_batch({**spec, "mode": mode})
                    t1 = time.perf_counter()
                    self.step("genemamba", mode, b)
                    self._sync()
                    info.setdefault(f"genemamba_{mode}_s", []).append(round(time.perf_counter() - t1, 2))
                self.opt["genemamba"].zero_grad(set_to_none=True)
            for mode in ("train", "infer"):
                b = self.make_batch({**real, "mode": mode})
                self.step("transformer", mode, b)
                self._sync()
            self.opt["transformer"].zero_grad(set_to_none=True)
        except Exception as err:
            info["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        info["total_s"] = round(time.perf_counter() - t0, 1)
        if self.cuda:
            self.autotune["winners"] = {**self.autotune.get("pinned", {}), **autotune_winners()}
            self.autotune["prewarm_s"] = info["total_s"]
            torch.cuda.empty_cache()
        self.meta["prewarm"] = info
        print(f"[prewarm] {info}", flush=True)
        if "self_check" not in self.meta:
            self.meta["self_check"] = self.self_check()

    def profile(self) -> dict[str, Any]:
        """GPU time of one step of each model on a real top-2048 batch, by kernel family (``--profile-modes``)."""
        out: dict[str, Any] = {}
        if not self.cuda:
            return {"skipped": "CPU"}
        try:
            from torch.profiler import ProfilerActivity, profile

            families = [
                ("ssd_scan_triton", r"_chunk_scan|_chunk_state|_bmm_chunk|_state_passing|_chunk_cumsum"),
                ("causal_conv1d", r"causal_conv1d|conv1d_"),
                ("rmsnorm_layernorm", r"layer_norm|rms_norm|_layer_norm|LayerNorm|layernorm|rmsnorm"),
                ("attention", r"flash|fmha|sdpa|cudnn|attention|mha"),
                ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|cublas|Kernel2|matmul"),
                ("optimizer", r"adam|multi_tensor|fused_adam"),
                ("gather_scatter_copy", r"index|gather|scatter|copy|cat|masked|nonzero|Cat"),
                ("elementwise_reduce", r"elementwise|vectorized|reduce|Reduce|sigmoid|lerp|softplus|silu|gelu"),
            ]
            models = ["genemamba", "transformer"] + (["transformer_varlen"] if _has_varlen_attn() else [])
            cells = {"train": self.args.train_cells_2048, "infer": self.args.infer_cells_2048}
            for mode, model in [(m, x) for m in self.args.profile_modes.split(",") for x in models]:
                b = self.make_batch(dict(kind="real", n=2048, cells=cells[mode], mode=mode))
                self.step(model, mode, b)
                self._sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    self.step(model, mode, b)
                    self._sync()
                tot: dict[str, float] = {}
                top = []
                for e in prof.key_averages():
                    t = float(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) or 0)
                    if t <= 0:
                        continue
                    fam = next((f for f, pat in families if re.search(pat, e.key)), "other")
                    tot[fam] = tot.get(fam, 0.0) + t
                    top.append((t, e.key[:90], e.count))
                total = sum(tot.values()) or 1.0
                top.sort(reverse=True)
                out[model if mode == "train" else f"{model}_infer"] = {
                    "cells": cells[mode],
                    "real_tokens": int(b["lens"].sum()),
                    "gpu_time_ms": total / 1e3,
                    "share_by_family": {k: round(v / total, 3) for k, v in sorted(tot.items(), key=lambda kv: -kv[1])},
                    "top_kernels": [{"us": round(t), "calls": c, "name": n} for t, n, c in top[:48]],
                }
                self.opt[model.removesuffix("_varlen")].zero_grad(set_to_none=True)
                if model == "genemamba" and mode == "train":
                    out["genemamba_ops"] = self._profile_ops(mode, b)
                    out["genemamba_host"] = self._host_check(mode, b)
        except Exception as err:
            out["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"[profile] {json.dumps(out)[:3000]}", flush=True)
        return out

    def _profile_ops(self, mode: str, b: dict[str, Any]) -> list[dict[str, Any]]:
        """GeneMamba's step by torch operator and input shapes: which op launches the glue kernels (top 40)."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            self.step("genemamba", mode, b)
            self._sync()
        rows = []
        for e in prof.key_averages(group_by_input_shape=True):
            t = float(getattr(e, "self_device_time_total", 0) or 0)
            if t > 0 and ("::" in e.key or "Backward" in e.key) and not e.key.startswith("void"):  # torch ops
                rows.append({"us": round(t), "calls": e.count, "op": e.key[:60], "shapes": str(e.input_shapes)[:160]})
        self.opt["genemamba"].zero_grad(set_to_none=True)
        return sorted(rows, key=lambda r: -r["us"])[:40]

    def _host_check(self, mode: str, b: dict[str, Any]) -> dict[str, Any]:
        """Is GeneMamba's step bound by the host? Its wall time, the time to enqueue it, its GPU time with the
        whole step queued behind a GPU sleep (no launch gaps), and the host synchronisations inside it."""
        import warnings

        res: dict[str, Any] = {}
        walls, enq = [], []
        for _ in range(3):
            self._sync()
            t0 = time.perf_counter()
            self.step("genemamba", mode, b)
            enq.append(time.perf_counter() - t0)
            self._sync()
            walls.append(time.perf_counter() - t0)
        res["wall_ms"], res["enqueue_ms"] = 1e3 * float(np.median(walls)), 1e3 * float(np.median(enq))
        gpu = []
        for _ in range(3):
            self._sync()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(2e9))  # ~1 s of GPU spin: the host enqueues the whole step meanwhile
            e0.record()
            t0 = time.perf_counter()
            self.step("genemamba", mode, b)
            e1.record()
            enq_s = time.perf_counter() - t0
            self._sync()
            gpu.append((e0.elapsed_time(e1), enq_s))
        res["gpu_queued_ms"] = float(np.median([g for g, _ in gpu]))
        res["enqueue_during_sleep_ms"] = 1e3 * float(np.median([e for _, e in gpu]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                self.step("genemamba", mode, b)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            self._sync()
        syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
        res["host_syncs"] = len(syncs)
        res["host_sync_sites"] = {k: syncs.count(k) for k in dict.fromkeys(syncs)}
        self.opt["genemamba"].zero_grad(set_to_none=True)
        print(f"[host] {res}", flush=True)
        return res

    def self_check(self) -> dict[str, Any]:
        """Packed mamba_ssm path (bf16) vs the padded torch-backend reference on the same weights, and
        cell independence, on a small ragged batch. Runs after the first training step so that Triton
        autotuning has already seen realistic shapes."""
        out: dict[str, Any] = {}
        try:
            enc = self.mamba
            g = torch.Generator(device=self.dev).manual_seed(0)
            lens = torch.tensor(
                [300, 17, 1, 1000, 512] if not self.args.smoke else [30, 17, 1, 100, 51], device=self.dev
            )
            L = int(lens.max())
            tokens = torch.randint(3, self.cfg["vocab"], (len(lens), L), device=self.dev, generator=g)
            mask = torch.arange(L, device=self.dev)[None] < lens[:, None]
            tokens.masked_fill_(~mask, 0)
            with torch.no_grad(), self._autocast():
                packed = enc(tokens, lens, packed=True).float()
                n3 = int(lens[3])
                alone = enc(tokens[3:4, :n3], lens[3:4], packed=True).float()
                saved = (enc.backend, [layer.mixer.backend for layer in enc.layers])
                try:
                    enc.backend = "torch"
                    for layer in enc.layers:
                        layer.mixer.backend = "torch"
                    ref = enc(tokens, lens).float()
                finally:
                    enc.backend = saved[0]
                    for layer, b in zip(enc.layers, saved[1]):
                        layer.mixer.backend = b
            rel = float((packed[mask] - ref[mask]).norm() / ref[mask].norm())
            indep = float((packed[3, :n3] - alone[0]).abs().max())
            out = {
                "packed_mamba_ssm_vs_padded_torch_backend_norm_rel_bf16": rel,
                "cell_alone_vs_in_batch_max_abs": indep,
                "pass": bool(rel < 5e-2 and math.isfinite(rel)),
            }
        except Exception as err:
            out = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(f"[self-check] {out}", flush=True)
        return out


FLOPS_DOC = __doc__[__doc__.index("FLOPs (2 x MACs") : __doc__.index("Memory: peak")].strip()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("mamba_ssm", "causal_conv1d", "triton"):
        try:
            v[name] = importlib.import_module(name).__version__
        except Exception as err:
            v[name] = f"not importable ({type(err).__name__})"
    v["cuda"] = torch.version.cuda
    v["env"] = {
        k: os.environ.get(k)
        for k in ("MAMBA_DETERMINISTIC", "TRITON_CACHE_DIR", "PYTORCH_CUDA_ALLOC_CONF")
        if os.environ.get(k)
    }
    return v


# ----------------------------------------------------------------------------------------------------
# Plot and table
# ----------------------------------------------------------------------------------------------------
def plot(json_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(json_path).read_text())
    res = [r for r in doc["results"] if "tokens_per_s" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0))
    gm = doc.get("models", {}).get("genemamba", {})
    kernels = "fused Triton kernels" if gm.get("fused_bimamba_both_training") else "mamba-ssm"
    # real-cell markers: one shape and a small sideways offset per model, so equal values do not hide each other
    styles = {
        "genemamba": ("tab:green", f"GeneMamba (packed, {kernels})", "s", 0.95),
        "transformer": ("tab:blue", "Transformer (SDPA, padded)", "^", 1.0),
        "transformer_varlen": ("tab:purple", "Transformer (varlen FlashAttention, packed)", "D", 1.05),
    }
    for ax, mode in zip(axes, ("train", "infer")):
        for model, (color, label, marker, shift) in styles.items():
            full = sorted(
                (r["n"], r["tokens_per_s"])
                for r in res
                if r["kind"] == "full" and r["mode"] == mode and r["model"] == model
            )
            if full:
                ax.plot(
                    [x for x, _ in full], [y / 1e3 for _, y in full], "-o", color=color, label=f"{label}, full length L"
                )
            real = sorted(
                (r["n"], r["tokens_per_s"])
                for r in res
                if r["kind"] == "real" and r["mode"] == mode and r["model"] == model
            )
            if real:
                ax.plot(
                    [x * shift for x, _ in real],
                    [y / 1e3 for _, y in real],
                    marker,
                    ls="none",
                    ms=8,
                    mfc="none",
                    mew=1.6,
                    color=color,
                    label=f"{label}, real cells top-k (real tokens/s)",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L (full length) or k (real cells, top-k genes; markers spread sideways)")
        ax.set_ylabel("real tokens/s (thousands)")
        ax.set_title(f"{'training (fwd+bwd+AdamW)' if mode == 'train' else 'inference (forward)'}")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7.5, loc="lower center", ncol=2, frameon=False)
    c = doc["config"]
    fig.suptitle(f"{doc['gpu']}: {c['n_layers']} layers x d_model {c['d_model']}, {c['dtype']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def print_table(json_path: Path) -> None:
    doc = json.loads(Path(json_path).read_text())
    rat = doc.get("ratios_genemamba_over_transformer", {})
    print(f"\n{doc['gpu']} | torch {doc.get('torch')} | mamba_ssm {doc.get('mamba_ssm')} | elapsed {doc['elapsed_s']}s")
    print(
        f"{'setting':26s} {'model':18s} {'realtok/s':>10s} {'cells/s':>9s} {'step ms':>8s} "
        f"{'MFU':>6s} {'GiB':>6s} {'B/tok':>8s} {'ratio':>6s}"
    )
    for r in doc["results"]:
        if "tokens_per_s" not in r:
            print(f"{r['setting']:26s} {r['model']:18s} {r.get('error') or r.get('skipped')}")
            continue
        ratio = rat.get(r["setting"], {}).get("tokens_per_s_ratio") if r["model"] == "genemamba" else None
        print(
            f"{r['setting']:26s} {r['model']:18s} {r['tokens_per_s']:10.0f} {r['cells_per_s']:9.1f} "
            f"{r['step_time_s_median'] * 1e3:8.1f} {(r['mfu'] or 0):6.3f} {r.get('peak_mem_gib', 0):6.1f} "
            f"{r.get('act_mem_bytes_per_real_token', 0):8.0f} {ratio if ratio is not None else float('nan'):6.2f}"
        )
    for k, v in {**doc.get("targets", {}), **doc.get("targets_issue14", {})}.items():
        print(f"target {k:40s} {v}")


def built_runner(seed: int = 0, smoke: bool = False) -> Runner:
    """A built :class:`Runner` with this script's default settings (``smoke``: the tiny fp32 model on the CPU), for
    the scripts that time steps with it (``train_ab.py``, ``host_profile.py``)."""
    args = build_parser().parse_args(["--seed", str(seed)] + (["--smoke", "--cpu"] if smoke else []))
    if smoke:
        args.dtype = "fp32"
    run = Runner(args)
    run.build()
    return run


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (also what ``train_ab.py`` builds its :class:`Runner` from)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--smoke", "--tiny", action="store_true", help="tiny model, few steps (CPU-friendly)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "mamba_ssm"))
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=24)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--real-steps",
        type=int,
        default=12,
        help="timed steps of the real-cell settings (their batches vary a lot; session 15: 5 were too few)",
    )
    p.add_argument("--budget-s", type=float, default=330.0)
    p.add_argument("--train-cells-2048", type=int, default=48)
    p.add_argument("--train-cells-4096", type=int, default=24)
    p.add_argument("--infer-cells-2048", type=int, default=256)
    p.add_argument("--infer-cells-4096", type=int, default=128)
    p.add_argument("--train-tokens", type=int, default=65536, help="tokens per training step at full length")
    p.add_argument("--infer-tokens", type=int, default=262144, help="tokens per inference step at full length")
    p.add_argument("--stress-cells", type=int, default=512, help="cells per inference step of the stress setting")
    p.add_argument("--no-prewarm", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--profile-first", action="store_true", help="profile before the first setting")
    p.add_argument("--profile-modes", default="train,infer", help="steps to profile: train, infer or both")
    p.add_argument("--ssd-sweep", default="", help="fused_bimamba.py --sweep-ssd JSON: use its best shape")
    p.add_argument("--conv-ssd-sweep", default="", help="fused_bimamba.py --sweep-conv-ssd JSON: use its best shape")
    p.add_argument("--ssd-bwd-sweep", default="", help="fused_bimamba.py --sweep-ssd-bwd JSON: use its best shape")
    p.add_argument("--conv-sweep", default="", help="fused_bimamba.py --sweep-conv JSON: use its fastest forward")
    p.add_argument("--only", default="", help="comma-separated substrings of setting names to run")
    p.add_argument("--autotune", default="prune", help="full | prune | pin:<earlier throughput json>")
    p.add_argument("--lengths", default=str(LENGTHS_NPY))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot-only", default="", help="re-draw the PNG (and print the table) of a JSON")
    p.add_argument("--extract-lengths", default="", help="write the lengths .npy from this .h5ad and exit")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.extract_lengths:
        c = extract_lengths(Path(args.extract_lengths), Path(args.lengths))
        print(f"{len(c)} cells, median {np.median(c)}, written to {args.lengths}")
        return
    if args.plot_only:
        jp = Path(args.plot_only)
        plot(jp, jp.with_suffix(".png"))
        print_table(jp)
        return
    if args.smoke:
        args.warmup, args.steps, args.real_steps = min(args.warmup, 1), min(args.steps, 2), min(args.real_steps, 2)
        if args.dtype == "auto" and not torch.cuda.is_available():
            args.dtype = "fp32"
    Runner(args).run()


if __name__ == "__main__":
    main()
