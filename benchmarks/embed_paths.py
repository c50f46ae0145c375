"""The embedding paths of one model on the same batches, interleaved: which one is slow, and why.

``api_speed.py`` found the bare encoder's embedding (``GeneMambaEncoder.embed_cells(..., packed=True)`` under
``torch.inference_mode``) at 643-766 cells/s on an H100 in sessions 26-27, slower than ``get_latent_representation``
on the same batches (904-972) and than session 21's 1,090-1,111. Here each arm embeds every cell of the same
pre-moved batches (the API's own loader and batch size), after one untimed pass of every arm (every Triton
specialisation compiled), in rounds whose arm order rotates:

- ``module``: what ``get_latent_representation`` computes per batch (``module.inference`` under ``torch.no_grad``:
  packed forward, unpacked to the padded batch, padded pooling), tokens already on the device;
- ``embed_cells``: ``encoder.embed_cells(packed=True)`` under ``torch.inference_mode`` (api_speed's bare arm);
- ``embed_cells_no_grad``: the same under ``torch.no_grad``;
- ``forward_only``: ``pack_tokens`` + ``forward_packed`` under ``torch.inference_mode``, no pooling;
- ``pool_padded``: ``forward_packed``, then unpacked and pooled as the module does, under ``torch.inference_mode``;
- ``api``: ``model.get_latent_representation()`` (tokenisation and transfers included; on a GPU the next batch is
  tokenized in a background thread, session 31);
- ``api_plain``: the same with that thread off (``genemamba_scvi._prefetch.PREFETCH_ON_GPU = False``: tokenisation
  between the batches, as in sessions 5-30).

Every arm runs under the API's autocast. Written: ``embed_paths_<gpu>.json`` (cells/s per arm and round, the median
of each arm's per-round ratio to ``module``, and the largest difference of each arm's embeddings from ``module``'s).

    python benchmarks/embed_paths.py --out $OUT            # GPU
    python benchmarks/embed_paths.py --smoke --out /tmp/e  # CPU, tiny (checks the script)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_speed import _sync, eval_model


def _arms(model, batches: list[tuple[torch.Tensor, torch.Tensor]], precision: str) -> dict[str, Any]:
    """Each arm: a function embedding every batch, returning the ``[cells, d]`` float32 embeddings."""
    from genemamba_scvi._precision import inference_autocast
    from genemamba_scvi.nn import pack_tokens, pool_hidden, unpack_hidden

    module, enc, dev = model.module, model.module.encoder, model._device()
    packed = enc.resolved_backend(dev) == "mamba_ssm"

    def run(one, grad_mode):
        def arm():
            out = []
            with grad_mode(), inference_autocast(precision, dev):
                for tokens, lengths in batches:
                    out.append(one(tokens, lengths).float())
            return torch.cat(out)

        return arm

    def forward_only(tokens, lengths):
        tp, cu = pack_tokens(tokens, lengths)
        h = enc.forward_packed(tp, cu, max_seqlen=tokens.shape[1])
        return h[:1].expand(len(lengths), -1)  # shape only: the pooling is what this arm leaves out

    def pool_padded(tokens, lengths):
        tp, cu = pack_tokens(tokens, lengths)
        h = enc.forward_packed(tp, cu, max_seqlen=tokens.shape[1])
        return pool_hidden(unpack_hidden(h, lengths, tokens.shape[1]), lengths, enc.pooling)

    def api():
        return torch.from_numpy(model.get_latent_representation(progress_bar=False)).to(dev)

    def api_plain():
        from genemamba_scvi import _prefetch

        _prefetch.PREFETCH_ON_GPU = False
        try:
            return api()
        finally:
            _prefetch.PREFETCH_ON_GPU = True

    arms = {
        "module": run(lambda t, n: module.inference(t, n)["z"], torch.no_grad),
        "embed_cells": run(lambda t, n: enc.embed_cells(t, n, packed=packed), torch.inference_mode),
        "embed_cells_no_grad": run(lambda t, n: enc.embed_cells(t, n, packed=packed), torch.no_grad),
        "api": api,
        "api_plain": api_plain,
    }
    if packed:  # the packed functions' arms (the torch backend on a GPU embeds the padded batch)
        arms["forward_only"] = run(forward_only, torch.inference_mode)
        arms["pool_padded"] = run(pool_padded, torch.inference_mode)
    return arms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny model and data (CPU)")
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    cfg = {"d_model": 512, "n_layers": 24, "max_genes": 2048}
    if args.smoke:
        cfg, args.cells, args.rounds = {"d_model": 32, "n_layers": 2, "max_genes": 256}, 200, 2
    from genemamba_scvi._precision import resolve_precision

    adata, model = eval_model(args.cells, cfg)
    dev = model._device()
    precision = resolve_precision("auto", dev.type == "cuda")
    bs = model._inference_batch_size(dev)
    batches = [(b["tokens"].to(dev), b["lengths"].to(dev)) for b in model._token_loader(adata, None, bs)]
    arms = _arms(model, batches, precision)
    names = list(arms)
    reference = arms["module"]().cpu()
    max_abs = {}
    for name in names:  # one untimed pass each: every shape's kernels compiled before the timed rounds
        z = arms[name]().cpu()
        if name != "forward_only":
            max_abs[name] = float((z - reference).abs().max())
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync()
            t0 = time.perf_counter()
            arms[name]()
            _sync()
            rates[name].append(adata.n_obs / (time.perf_counter() - t0))
    ratio = {n: float(np.median(np.array(rates[n]) / np.array(rates["module"]))) for n in names}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {
        "gpu": gpu,
        "torch": torch.__version__,
        "setting": {**cfg, "cells": args.cells, "batch_size": bs, "precision": precision, "rounds": args.rounds},
        "batches": len(batches),
        "cells_per_s": rates,
        "cells_per_s_median": {n: float(np.median(v)) for n, v in rates.items()},
        "ratio_to_module_median": ratio,
        "max_abs_diff_to_module": max_abs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu_smoke" if gpu == "cpu" else gpu.split()[-1].lower()
    (out / f"embed_paths_{tag}.json").write_text(json.dumps(result, indent=1))
    keys = ("cells_per_s_median", "ratio_to_module_median", "max_abs_diff_to_module")
    print(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
