"""Do GeneMamba's gene embeddings put genes of one pathway together? AUROC on pathways the loss never saw.

Gene sets of the chosen collection (KEGG 2011 by default, or GO BP 2022) are split once with
``split_gene_sets(sets, held_out_fraction=0.2, seed=0)``: the pathway InfoNCE of every GeneMamba in these
benchmarks uses only the training 80%. For each embedding, the cosine similarity of gene pairs that share a
set is compared with random gene pairs (from the same genes) that share none: AUROC (0.5 = no signal).

Reported for the training sets (did the loss do its job?), the held-out sets, the held-out pairs that do not
also share a training set (not leak-free: most of their genes are in training sets, so the loss moved them),
and the strictly leak-free pairs: held-out sets reduced to their genes that are in no training set at all
(no gene of such a pair entered the pathway loss). The JSON records how many pairs each rule keeps.

Embeddings compared (same genes, same pairs):

- GeneMamba input gene embeddings (token embedding table) pre-trained with ``gamma = --gamma`` (0.1) and with
  ``gamma = 0`` (masked-gene loss only), same data, size and steps;
- the same model untrained (random init: the floor);
- co-expression baseline: each gene's PCA loadings (50 PCs x singular values) of the log-normalised training
  cells, i.e. what plain co-expression in these cells gives without any model.

Genes: vocabulary genes that appear in the top ``--max-genes`` of at least 5 pre-training cells (the genes the
masked-gene loss actually sees), intersected with the gene sets.

Data: the real 559-cell celltypist sample, the same 80% training cells as ``rank_reconstruction.py`` (so the
pre-trained models are shared through the cache).

Usage::

    python benchmarks/gene_pathways.py                    # KEGG, Bi-Mamba
    python benchmarks/gene_pathways.py --unidirectional   # ablation
    python benchmarks/gene_pathways.py --gene-sets go_bp  # GO biological process
    python benchmarks/gene_pathways.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def seen_genes(model, adata, min_cells: int = 5) -> set[str]:
    """Genes present in the token sequences (top-k) of at least ``min_cells`` cells of ``adata``."""
    counts = np.zeros(len(model.vocab_), np.int64)
    for tokens, lengths in C.iter_tokens(model, adata, None, 128):
        for b in range(tokens.shape[0]):
            counts[np.unique(tokens[b, : int(lengths[b])].numpy())] += 1
    names = C.gene_symbols(model)
    return {str(names[i]) for i in np.nonzero(counts >= min_cells)[0] if i >= model.vocab_.n_special}


def pca_gene_embedding(adata, n_comps: int = 50) -> pd.DataFrame:
    """Genes x PCs: loadings scaled by the singular values, from log-normalised, scaled training cells."""
    import scanpy as sc

    ln = C.log_normalize(adata)
    sc.pp.scale(ln, max_value=10)
    sc.pp.pca(ln, n_comps=n_comps, random_state=0)
    load = ln.varm["PCs"] * np.sqrt(ln.uns["pca"]["variance"])[None, :]
    return pd.DataFrame(load, index=ln.var_names.astype(str))


def pairs_within(sets: dict[str, list[str]], genes: set[str]) -> set[tuple[str, str]]:
    out = set()
    for members in sets.values():
        for a, b in combinations(sorted(set(members) & genes), 2):
            out.add((a, b))
    return out


NOT_SHARING = "held-out sets, pairs sharing no training set"
LEAK_FREE = "held-out sets, genes in no training set (leak-free)"


def _pair_stats(ev_held, ev_free, train_sets, train_pairs) -> dict:
    """How many held-out pairs each rule keeps, how many have both genes in training sets, top sets' share."""
    from collections import Counter

    from genemamba_scvi.metrics import gene_set_pairs

    in_train = {g for v in train_sets.values() for g in v}
    held_pairs = gene_set_pairs(ev_held)
    not_sharing = held_pairs - train_pairs
    both_in_train = sum(a in in_train and b in in_train for a, b in not_sharing)
    share = Counter()
    for name, members in ev_held.items():
        share[name] = len(gene_set_pairs({name: members}) - train_pairs)
    top = share.most_common(4)
    free_pairs = gene_set_pairs(ev_free)
    return {
        "held_out_pairs": len(held_pairs),
        "pairs_sharing_no_training_set": len(not_sharing),
        "of_which_both_genes_in_training_sets": both_in_train,
        "top4_sets_by_pairs_sharing_no_training_set": {k: v for k, v in top},
        "top4_share": float(sum(v for _, v in top) / max(sum(share.values()), 1)),
        "leak_free_pairs_genes_in_no_training_set": len(free_pairs),
        "leak_free_sets": len(ev_free),
        "leak_free_genes": len({g for v in ev_free.values() for g in v}),
    }


def set_bootstrap_ci(emb, sets, exclude, n_boot: int, seed: int) -> tuple[float, float]:
    """95% interval of the AUROC when the gene sets are resampled with replacement (sets are the unit).

    A set drawn k times counts k times: ``pathway_pair_auroc(set_weights=)`` weighs each pair by the mean draw count
    of its sets (1 on average, as the point estimate counts each pair once); the genes of the drawn sets give the
    negatives. (Before session 26: a set drawn twice counted once, 50 resamples.)
    """
    from genemamba_scvi.metrics import pathway_pair_auroc

    names = list(sets)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        draws = np.bincount(rng.choice(len(names), len(names), replace=True), minlength=len(names))
        weights = {names[k]: int(c) for k, c in enumerate(draws) if c}
        try:
            seed_k = int(rng.integers(1 << 31))
            r = pathway_pair_auroc(emb, sets, exclude_pairs=exclude, seed=seed_k, set_weights=weights)
        except ValueError:  # a resample without any usable pair
            continue
        vals.append(r["auroc"])
    lo, hi = np.percentile(vals, [2.5, 97.5]) if vals else (np.nan, np.nan)
    return float(lo), float(hi)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out cells (as rank_reconstruction)")
    parser.add_argument("--min-set-size", type=int, default=5, help="evaluate sets with >= this many genes in the pool")
    parser.add_argument("--n-boot", type=int, default=1000, help="set-bootstrap resamples for the held-out 95%% CI")
    args = parser.parse_args(argv)
    C.quiet()
    C.set_threads(args.threads)
    t_start = time.perf_counter()
    from genemamba_scvi.metrics import leak_free_held_out_sets, pathway_pair_auroc

    adata, train_mask, _, data_name = C.celltypist_split(args.test_fraction, args.seed)
    train = adata[train_mask].copy()
    train_sets, held_sets = C.pathway_split(args.gene_sets)

    gammas = sorted({args.gamma, 0.0}, reverse=True)
    name = "GeneMamba_U" if args.unidirectional else "GeneMamba"
    models, infos = {}, {}
    for gamma in gammas:
        cfg = C.PretrainConfig.from_args(args, gamma=gamma)
        m, info = C.pretrain_genemamba(train.copy(), cfg, data_name, args)
        models[f"{name} gamma={gamma:g}"] = m
        infos[f"{name} gamma={gamma:g}"] = info
    cfg = C.PretrainConfig.from_args(args, steps=0)
    m, info = C.pretrain_genemamba(train.copy(), cfg, data_name, args)
    models[f"{name} untrained (random init)"] = m
    infos[f"{name} untrained (random init)"] = info

    first = next(iter(models.values()))
    pool = seen_genes(first, train, min_cells=5)
    set_genes = {g for s in list(train_sets.values()) + list(held_sets.values()) for g in s}
    pool &= set_genes
    embeddings = {k: v.get_gene_embeddings() for k, v in models.items()}
    embeddings["co-expression (PCA loadings, no model)"] = pca_gene_embedding(train)
    embeddings = {k: e.loc[e.index.isin(pool)] for k, e in embeddings.items()}
    pool = set.intersection(*(set(e.index) for e in embeddings.values()))

    def restrict(sets):
        out = {k: [g for g in v if g in pool] for k, v in sets.items()}
        return {k: v for k, v in out.items() if len(v) >= args.min_set_size}

    ev_train, ev_held = restrict(train_sets), restrict(held_sets)
    train_pairs = pairs_within(train_sets, pool)
    # strictly leak-free: held-out sets reduced to their genes that are in no training set at all
    ev_free = leak_free_held_out_sets(ev_held, train_sets, min_size=2)
    pair_stats = _pair_stats(ev_held, ev_free, train_sets, train_pairs)
    print(pair_stats)
    rows = []
    for emb_name, emb in embeddings.items():
        for split, sets, exclude in (
            ("train sets (in the loss)", ev_train, None),
            ("held-out sets", ev_held, None),
            (NOT_SHARING, ev_held, train_pairs),
            (LEAK_FREE, ev_free, None),
        ):
            r = pathway_pair_auroc(emb, sets, exclude_pairs=exclude, seed=args.seed)
            if split.startswith("held-out") and args.n_boot > 0:
                r["ci95_low"], r["ci95_high"] = set_bootstrap_ci(emb, sets, exclude, args.n_boot, args.seed)
            rows.append({"embedding": emb_name, "pairs": split, "n_sets": len(sets), **r})
    df = pd.DataFrame(rows)
    cols = ["embedding", "pairs", "auroc", "ci95_low", "ci95_high", "n_positive", "n_negative", "n_genes"]
    print(df[[c for c in cols if c in df]].round(4).to_string())

    suffix = C.run_suffix(args)
    out_dir = args.out_dir
    df.to_csv(out_dir / f"gene_pathways{suffix}.csv", index=False)
    _plot(df, out_dir / f"gene_pathways{suffix}.png", args.gene_sets)
    out = {
        "benchmark": "gene_pathways",
        "metric": "AUROC of cosine similarity, same-set gene pairs vs random pairs sharing no set",
        "ci": f"held-out rows: 2.5-97.5 percentiles over {args.n_boot} resamples of the gene sets (with replacement; "
        "a pair weighs the mean draw count of its sets)",
        "gene_sets": {
            "collection": args.gene_sets,
            "n_train_sets": len(train_sets),
            "n_held_out_sets": len(held_sets),
            "split": "split_gene_sets(held_out_fraction=0.2, seed=0)",
            "n_train_sets_evaluated": len(ev_train),
            "n_held_out_sets_evaluated": len(ev_held),
            "min_set_size_in_pool": args.min_set_size,
            "pairs": pair_stats,
            "leak_free_rule": (
                "held-out sets reduced to their genes that belong to no training set (>= 2 left); negatives are "
                "random pairs of the same genes; no gene of these pairs entered the pathway loss"
            ),
        },
        "gene_pool": {
            "n_genes": len(pool),
            "rule": "vocabulary genes in the top-k tokens of >= 5 pre-training cells and in a gene set",
        },
        "data": {"name": "celltypist_sample (real, 559 cells, raw UMI counts)", "pretraining": data_name},
        "models": infos,
        "results": df.to_dict(orient="records"),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "args": C.run_args(args),
        "environment": C.environment(),
    }
    C.write_json(out_dir / f"gene_pathways{suffix}.json", out)
    return out


def _plot(df: pd.DataFrame, path: Path, collection: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["train sets (in the loss)", "held-out sets", NOT_SHARING, LEAK_FREE]
    pivot = df.pivot(index="embedding", columns="pairs", values="auroc")[order]
    err = None
    if "ci95_low" in df:
        lo = pivot - df.pivot(index="embedding", columns="pairs", values="ci95_low")[order]
        hi = df.pivot(index="embedding", columns="pairs", values="ci95_high")[order] - pivot
        err = np.stack([lo.fillna(0).to_numpy().T, hi.fillna(0).to_numpy().T], axis=1)  # [series, 2, rows]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(pivot) + 2))
    pivot.plot.barh(ax=ax, width=0.8, xerr=err, capsize=2)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xlabel("AUROC (same-pathway vs random gene pairs, cosine similarity)")
    ax.set_ylabel("")
    ax.set_xlim(0.3, 1.0)
    ax.set_title(f"Gene embeddings vs {collection.upper()} pathways (real celltypist sample)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
