"""Label-free probe of untrained GeneMamba models: masked-gene / copy accuracy and residual-stream norms.

Used by the diagnosis in docs/biology.md (hypothesis H3: the block outputs dominate the embedding at
initialisation). 256 cells of the integration panel, random ties, d_model 64, seed 0.

Usage::

    python benchmarks/init_probe.py init0 init2   # writes results/diagnosis/init_probe.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

import _common as C
from diagnosis import evaluate

C.quiet()
C.set_threads(1)
from genemamba_scvi import GeneMambaModel  # noqa: E402

adata, _ = C.load_combined(seed=0)
sub = adata[:256].copy()


def norms(model, ad):
    enc = model.module.encoder.eval()
    toks, lens = next(iter(C.iter_tokens(model, ad, None, 64)))
    with torch.inference_mode():
        x = enc.embedding(toks)
        real = torch.arange(toks.shape[1])[None] < lens[:, None]
        from genemamba_scvi.nn.bimamba import reversal_index

        rev = reversal_index(lens, toks.shape[1])
        out = {"emb": float(x[real].norm(dim=-1).mean())}
        for i, layer in enumerate(enc.layers):
            y = layer(x, rev_index=rev, seq_idx=None, merge_linear=enc.merge)
            out[f"delta{i}"] = float((y - x)[real].norm(dim=-1).mean())
            x = y
    return out


results = {}
for path in sys.argv[1:]:
    if path.startswith("init"):
        nl = int(path[4:])
        torch.manual_seed(0)
        GeneMambaModel.setup_anndata(sub, layer="counts")
        m = GeneMambaModel(
            sub, d_model=64, n_layers=nl, max_genes=256, d_state=16, headdim=32, chunk_size=64, tie_break="random"
        )
    else:
        GeneMambaModel.setup_anndata(sub, layer="counts")
        m = GeneMambaModel.load(path, adata=sub)
    ev = evaluate(m, sub, seed=0)
    a = ev["accuracy"]
    results[path] = {
        "accuracy": {k: a[k] for k in ("all_selected", "masked", "kept_copy", "random_replaced")},
        "norms": norms(m, sub),
    }
    print(path, results[path], flush=True)
out = Path(__file__).resolve().parent / "results" / "diagnosis" / "init_probe.json"
out.write_text(json.dumps(results, indent=1))
