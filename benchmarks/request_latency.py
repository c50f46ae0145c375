"""Latency of small requests to a loaded model (a service's calls): the gene-match cache on and off, same run.

A service builds an AnnData per request (the same gene list each time) and calls ``get_latent_representation``.
Each call matched the request's genes to the vocabulary afresh; the model now keeps the match of its last gene lists
(``model._genes._GENE_MATCH_CACHE``). Here a tiny model (2 x 32, top-256: the serving probe's) embeds requests of
1, 3 and 50 cells of the shipped 559-cell sample with all its 32,786 genes, on one CPU thread, alternating the two
arms request by request; written: ``request_latency.json`` (median ms per request size and arm, and their ratio).

    python benchmarks/request_latency.py --out benchmarks/results/request_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "request_latency.json")
    p.add_argument("--requests", type=int, default=40, help="requests per size and arm")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 50])
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    import anndata as ad
    import scvi

    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.model import _genes

    cells = load_celltypist_sample()
    detected = np.asarray((cells.layers["counts"] > 0).sum(axis=0)).ravel() >= 3
    rng = np.random.default_rng(0)

    def request(n: int) -> ad.AnnData:
        rows = rng.integers(0, cells.n_obs, size=n)
        x = cells.layers["counts"][rows].copy()
        query = ad.AnnData(x, var=cells.var[[]].copy())
        query.layers["counts"] = x
        return query

    result = {
        "what": __doc__.split("\n")[0],
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "genes_per_request": int(cells.n_vars),
        "requests_per_size_and_arm": args.requests,
        "vocabularies": {
            "all_genes": "the model set up on all 32,786 genes of the sample: every request gene is in its vocabulary",
            "detected_genes": "the model set up on the genes detected in >= 3 cells: most request genes are unknown "
            "to it (a full Cell Ranger matrix sent to a model of fewer genes)",
        },
    }
    for vocab, genes in (("all_genes", slice(None)), ("detected_genes", detected)):
        scvi.settings.seed = 0
        train = cells[:, genes].copy()
        GeneMambaModel.setup_anndata(train, layer="counts")
        model = GeneMambaModel(train, n_layers=2, d_model=32, max_genes=256)
        times: dict[str, dict[int, list[float]]] = {"cache": {}, "no_cache": {}}
        for n in args.sizes:
            for arm in times:
                times[arm][n] = []
            for i in range(args.requests * 2 + 4):
                arm = ("cache", "no_cache")[i % 2]
                _genes._GENE_MATCH_CACHE = arm == "cache"
                query = request(n)
                t0 = time.perf_counter()
                model.get_latent_representation(query, progress_bar=False)
                if i >= 4:  # the first two of each arm: warm-up
                    times[arm][n].append(time.perf_counter() - t0)
        _genes._GENE_MATCH_CACHE = True
        median = {arm: {str(n): 1000 * float(np.median(v)) for n, v in by.items()} for arm, by in times.items()}
        ratio = {str(n): median["no_cache"][str(n)] / median["cache"][str(n)] for n in args.sizes}
        result[vocab] = {"vocabulary_genes": int(train.n_vars), "median_ms": median, "no_cache_over_cache": ratio}
        print(vocab, json.dumps(result[vocab]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
