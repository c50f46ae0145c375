"""Where a non-finite value in one cell reaches: the other cells of a batch, padded and packed, per backend.

One embedding row (a gene only cell 1 holds) is set to NaN; each backend embeds the 4 cells padded and packed, and
the result says which cells' embeddings stayed finite. The pure-PyTorch chunked scan lets it reach the cells that
share cell 1's chunks when packed (its masked products are 0 x NaN; nn probe, session 35); this records whether
mamba-ssm's kernels (GPU) do the same. Writes ``nan_reach_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from genemamba_scvi.nn import GeneMambaEncoder
from genemamba_scvi.nn.ssd import mamba_ssm_available


def run(device: str) -> dict:
    backends = ["torch"] + (["mamba_ssm"] if device == "cuda" and mamba_ssm_available() else [])
    lengths = torch.tensor([40, 30, 50, 20])
    tokens = torch.zeros(4, 50, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, :n] = torch.randint(10, 200, (n,), generator=g)
    tokens[1, 5] = 300  # the only cell with gene 300
    rows = []
    for backend in backends:
        torch.manual_seed(0)
        enc = GeneMambaEncoder(301, d_model=64, n_layers=2, headdim=32, chunk_size=64, backend=backend).to(device)
        enc.eval()
        with torch.no_grad():
            enc.embedding.weight[300] = float("nan")
            for packed in (False, True):
                z = enc.embed_cells(tokens.to(device), lengths.to(device), packed=packed)
                rows.append({"backend": backend, "packed": packed,
                             "finite_cells": torch.isfinite(z).all(1).cpu().tolist()})  # fmt: skip
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "nan_gene_in_cell": 1,
            "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = run(device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"nan_reach_{device}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
