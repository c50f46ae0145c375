"""Record the mamba-ssm Triton autotuning winners for GeneMamba's shapes and ship them with the package.

Runs the encoder's packed (varlen) path on real cell lengths, with plain autotuning (shipped
configurations off), for each ``--d-model``: a bf16-mixed training step (forward + backward), a bf16
inference forward and a float32 inference forward. The winners of every mamba-ssm autotuner are then
written to ``src/genemamba_scvi/nn/tuned/sm<major><minor>.json`` (see
:mod:`genemamba_scvi.nn.kernel_configs`), and a copy to ``--out``.

The autotuning keys hold ``chunk_size``, ``headdim``, ``d_state``, the number of heads and the argument
dtypes, not the batch or the number of layers, so a 2-layer encoder per width covers every depth.

Run on the GPU (see shared/gpu/README.md)::

    GENEMAMBA_TUNED_KERNELS=0 python benchmarks/tune_kernels.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

os.environ["GENEMAMBA_TUNED_KERNELS"] = "0"  # tune from scratch: nothing shipped or remembered

from genemamba_scvi.nn import GeneMambaEncoder  # noqa: E402
from genemamba_scvi.nn.kernel_configs import SHIPPED_DIR, export_tuned_configs  # noqa: E402

LENGTHS_NPY = ROOT / "benchmarks" / "data" / "celltypist_gene_counts.npy"


def batch(lengths: np.ndarray, vocab: int, device: torch.device, rng: np.random.Generator):
    """Right-padded random gene tokens with the given real lengths."""
    L = int(lengths.max())
    tokens = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.from_numpy(rng.choice(np.arange(3, vocab), size=int(n), replace=False))
    return tokens.to(device), torch.as_tensor(lengths, dtype=torch.long, device=device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--d-model", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--max-genes", type=int, default=2048)
    parser.add_argument("--cells", type=int, default=48)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "tuning needs the CUDA GPU it tunes for"
    dev = torch.device("cuda")
    rng = np.random.default_rng(0)
    counts = np.load(LENGTHS_NPY)
    lengths = np.minimum(rng.choice(counts, size=args.cells), args.max_genes).astype(np.int64)
    log = {}
    for d in args.d_model:
        torch.manual_seed(0)
        enc = GeneMambaEncoder(args.vocab, d_model=d, n_layers=2, backend="mamba_ssm").to(dev)
        assert enc.resolved_backend(dev) == "mamba_ssm"
        tokens, lens = batch(lengths, args.vocab, dev, rng)
        t0 = time.perf_counter()
        enc.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = enc(tokens, lens, packed=True)
        h.float().square().mean().backward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        enc.eval()
        with torch.inference_mode():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                enc.embed_cells(tokens, lens, packed=True)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            enc.embed_cells(tokens, lens, packed=True)
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        log[d] = {"train_bf16_s": t1 - t0, "infer_bf16_s": t2 - t1, "infer_fp32_s": t3 - t2}
        print(f"d_model {d}: tuning took {log[d]}", flush=True)

    import mamba_ssm
    import triton

    cap = torch.cuda.get_device_capability()
    kernels = export_tuned_configs()
    doc = {
        "meta": {
            "gpu": torch.cuda.get_device_name(),
            "capability": list(cap),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "mamba_ssm": mamba_ssm.__version__,
            "d_model": args.d_model,
            "modes": ["train bf16-mixed (fwd+bwd)", "inference bf16", "inference fp32"],
            "tuning_seconds": log,
            "date": time.strftime("%Y-%m-%d"),
        },
        "kernels": kernels,
    }
    path = SHIPPED_DIR / f"sm{cap[0]}{cap[1]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / path.name).write_text(path.read_text())
    n = sum(len(v) for v in kernels.values())
    print(f"wrote {path}: {n} winners of {len(kernels)} kernels")


if __name__ == "__main__":
    main()
