"""Why does the layered GeneMamba not beat its 0-layer baseline? Small controlled runs with learning curves.

One run pre-trains GeneMamba with 0 and ``--n-layers`` Bi-Mamba layers on the same cells, with one recipe
(``--tie-break``, ``--lr``, ``--steps``), then measures on those cells (eval mode, fixed masks):

- masked-gene accuracy split by how the selected token was corrupted (``<mask>`` 80%, random gene 10%, kept
  10%: the "copy" cases) and, for ``<mask>`` positions, by the raw count of the hidden gene (1 vs >= 2): with
  ``tie_break="median"`` the order of count-1 genes is a fixed gene order shared by every cell;
- how much of the cell embedding is sequence length / sequencing depth: cross-validated R^2 of a ridge
  regression of log(genes in the sequence) and log(total counts) on the embedding, overall and within each
  batch;
- how much is biology: 15-nearest-neighbour accuracy (5-fold) of the cell labels, and the fraction of
  neighbours from the other batch among cells of the lineages both batches share;
- each for three poolings of the same hidden states: mean over all real tokens (the model's), mean over
  tokens of count >= 2, mean over the first 32 tokens.

Data: ``--data panel``: the 1,211 cells / 764 genes of ``integration.py`` (both data sets); ``--data
celltypist``: the 447 training cells of ``rank_reconstruction.py`` (9,791-gene vocabulary).

Usage::

    python benchmarks/diagnosis.py --data panel --tie-break median --seed 0
    python benchmarks/diagnosis.py --data panel --tie-break random --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def token_counts(model, adata, tokens_all: np.ndarray) -> np.ndarray:
    """Raw count of the gene at every token position ``[cells, L]`` (0 at pads)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.layers["counts"])
    col_of = np.full(len(model.vocab_), -1)
    ids = model._match_genes(adata, warn_unknown=False)
    col_of[ids[ids >= 0]] = np.nonzero(ids >= 0)[0]
    out = np.zeros(tokens_all.shape, np.float32)
    for i in range(tokens_all.shape[0]):
        t = tokens_all[i]
        real = t >= model.vocab_.n_special
        out[i, real] = np.asarray(X[i, col_of[t[real]]].todense()).ravel()
    return out


def evaluate(model, adata, seed: int, batch_size: int = 64) -> dict:
    """Masked-gene accuracy by corruption type and count, and three pooled embeddings, on all cells."""
    import torch

    module = model.module.eval()
    vocab = model.vocab_
    toks, lens = [], []
    for t, n in C.iter_tokens(model, adata, None, batch_size):
        toks.append(t)
        lens.append(n)
    width = max(t.shape[1] for t in toks)
    tokens = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in toks])
    lengths = torch.cat(lens)
    counts = token_counts(model, adata, tokens.numpy())
    gen = torch.Generator().manual_seed(seed)
    L = tokens.shape[1]
    real = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    sel = (torch.rand(tokens.shape, generator=gen) < 0.15) & real
    u = torch.rand(tokens.shape, generator=gen)
    kind = torch.where(u < 0.8, 0, torch.where(u < 0.9, 1, 2))  # 0 mask, 1 random gene, 2 kept
    rand_tok = torch.randint(vocab.n_special, len(vocab), tokens.shape, generator=gen)
    inputs = torch.where(sel & (kind == 0), torch.full_like(tokens, vocab.mask_id), tokens)
    inputs = torch.where(sel & (kind == 1), rand_tok, inputs)
    hits, nll, pooled = [], [], {"mean_all": [], "mean_count_ge2": [], "mean_first32": []}
    with torch.inference_mode():
        for s in range(0, tokens.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            h = module.encoder(inputs[sl], lengths[sl])
            logits = module.lm_head(h[sel[sl]]).float()
            target = tokens[sl][sel[sl]]
            hits.append((logits.argmax(-1) == target).numpy())
            nll.append(torch.nn.functional.cross_entropy(logits, target, reduction="none").numpy())
            hc = module.encoder(tokens[sl], lengths[sl])  # unmasked input for the cell embedding
            r = real[sl].unsqueeze(-1).float()
            c2 = (torch.as_tensor(counts[sl.start : sl.start + hc.shape[0]]) >= 2).unsqueeze(-1).float() * r
            f32 = (torch.arange(L) < 32).view(1, L, 1).float() * r
            for k, w in (("mean_all", r), ("mean_count_ge2", c2), ("mean_first32", f32)):
                pooled[k].append(((hc * w).sum(1) / w.sum(1).clamp(min=1)).numpy())
    hits, nll = np.concatenate(hits), np.concatenate(nll)
    k = kind[sel].numpy()
    c = counts[sel.numpy()]
    acc = {
        "all_selected": float(hits.mean()),
        "masked": float(hits[k == 0].mean()),
        "random_replaced": float(hits[k == 1].mean()),
        "kept_copy": float(hits[k == 2].mean()),
        "masked_count1": float(hits[(k == 0) & (c == 1)].mean()),
        "masked_count_ge2": float(hits[(k == 0) & (c >= 2)].mean()),
        "nll_masked": float(nll[k == 0].mean()),
        "nll_masked_count1": float(nll[(k == 0) & (c == 1)].mean()),
        "nll_masked_count_ge2": float(nll[(k == 0) & (c >= 2)].mean()),
        "fraction_tokens_count1": float((counts[real.numpy()] == 1).mean()),
    }
    return {"accuracy": acc, "embeddings": {k: np.concatenate(v) for k, v in pooled.items()}, "lengths": lengths}


def cv_r2(z: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = cross_val_predict(
        make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        z,
        y,
        cv=KFold(5, shuffle=True, random_state=seed),
    )
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def knn_scores(z: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, y = np.unique(labels, return_inverse=True)
    n_splits = min(5, int(np.bincount(y).min())) if np.bincount(y).min() >= 2 else 2
    cv = StratifiedKFold(max(n_splits, 2), shuffle=True, random_state=seed)
    keep = np.isin(y, np.nonzero(np.bincount(y) >= cv.n_splits)[0])
    clf = make_pipeline(StandardScaler(), KNeighborsClassifier(15))
    return float(cross_val_score(clf, z[keep], y[keep], cv=cv).mean())


def batch_mixing(z: np.ndarray, batch: np.ndarray, lineage: np.ndarray, shared: list[str]) -> float:
    """Fraction of 15 nearest neighbours from the other batch, over cells of lineages both batches have."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    zs = StandardScaler().fit_transform(z)
    nn = NearestNeighbors(n_neighbors=16).fit(zs)
    idx = nn.kneighbors(zs, return_distance=False)[:, 1:]
    other = batch[idx] != batch[:, None]
    cells = np.isin(lineage, shared)
    return float(other[cells].mean())


def embedding_report(ev: dict, adata, seed: int) -> dict:
    X = adata.layers["counts"]
    depth = np.log(np.asarray(X.sum(axis=1)).ravel())
    n_seq = np.log(ev["lengths"].numpy().astype(float))
    out = {}
    has_batch = "batch" in adata.obs and adata.obs["batch"].nunique() > 1
    for name, z in ev["embeddings"].items():
        r = {"r2_log_length": cv_r2(z, n_seq, seed), "r2_log_depth": cv_r2(z, depth, seed)}
        if has_batch:
            b = adata.obs["batch"].astype(str).to_numpy()
            for bb in np.unique(b):
                m = b == bb
                r[f"r2_log_depth_within_{bb}"] = cv_r2(z[m], depth[m], seed)
                r[f"r2_log_length_within_{bb}"] = cv_r2(z[m], n_seq[m], seed)
            pb = b == "pbmc68k"
            cell_type = adata.obs["cell_type"].astype(str).to_numpy()
            r["knn_acc_pbmc68k_bulk_labels"] = knn_scores(z[pb], cell_type[pb], seed)
            lin = adata.obs["lineage"].astype(str).to_numpy()
            r["knn_acc_lineage_both_batches"] = knn_scores(z, lin, seed)
            r["other_batch_neighbour_fraction_shared_lineages"] = batch_mixing(z, b, lin, ["T", "NK", "Monocyte"])
        out[name] = r
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--data", default="panel", choices=["panel", "celltypist"])
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="models to train (default: 0 and 2)")
    parser.add_argument("--tag", default=None, help="output name (default from the settings)")
    parser.add_argument(
        "--out-proj-init-scale",
        type=float,
        default=None,
        help="multiply each layer's mixer out_proj weight by this at init (0: the layers start as identities, "
        "the model as its 0-layer baseline); default: unchanged",
    )
    parser.add_argument("--skip-embedding", action="store_true", help="masked-gene accuracy only (no embedding report)")
    args = parser.parse_args(argv)
    C.quiet()
    C.set_threads(args.threads)
    t_start = time.perf_counter()
    if args.data == "panel":
        adata, _ = C.load_combined(seed=0)
        data_name = C.combined_data_name(adata)
    else:
        full, train_mask, _, data_name = C.celltypist_split(0.2, 0)
        adata = full[train_mask].copy()
    layers = args.layers if args.layers is not None else [0, args.n_layers]
    runs = {}
    for n_layers in layers:
        cfg = C.PretrainConfig.from_args(args, n_layers=n_layers)
        model, info = C.pretrain_genemamba(adata.copy(), cfg, data_name, args)
        ev = evaluate(model, adata, seed=args.seed)
        runs[f"{n_layers}L"] = {
            "accuracy": ev["accuracy"],
            "embedding": None if args.skip_embedding else embedding_report(ev, adata, args.seed),
            "learning_curve_per_epoch": info.get("history_per_epoch"),
            "final_train_metrics": info.get("final_train_metrics"),
            "wall_seconds": info.get("wall_seconds"),
            "n_parameters_non_embedding": info.get("n_parameters_non_embedding"),
            "config": info.get("config"),
            "code_version": info.get("code_version"),
        }
        print(n_layers, "layers", ev["accuracy"])
        for k, v in (runs[f"{n_layers}L"]["embedding"] or {}).items():
            print("  ", k, {a: round(b, 3) for a, b in v.items()})
    tag = args.tag or f"{args.data}_tie{args.tie_break}_lr{args.lr:g}_steps{C.resolve_steps(args)}_seed{args.seed}"
    if args.out_proj_init_scale is not None and args.tag is None:
        tag += f"_outproj{args.out_proj_init_scale:g}"
    if args.layers is not None and args.tag is None:
        tag += "_layers" + "-".join(map(str, layers))
    out = {
        "benchmark": "diagnosis",
        "data": data_name,
        "recipe": {
            "tie_break": args.tie_break,
            "lr": args.lr,
            "steps": C.resolve_steps(args),
            "seed": args.seed,
            **({"out_proj_init_scale": args.out_proj_init_scale} if args.out_proj_init_scale is not None else {}),
        },
        "runs": runs,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "environment": C.environment(),
    }
    out_dir = args.out_dir / "diagnosis"
    out_dir.mkdir(parents=True, exist_ok=True)
    C.write_json(out_dir / f"{tag}.json", out)
    return out


if __name__ == "__main__":
    main()
