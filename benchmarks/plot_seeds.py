"""Figure of the seed runs from their committed summaries (no benchmark is run; only the JSON is read).

Reads ``biology_summary.json``, ``biology_summary<suffix>.json`` and ``biology_compare<suffix>_vs_default.json``
(``aggregate.py`` and ``aggregate.py --compare-suffix``) in ``--dir`` and writes ``biology_seeds.png`` there:

- (a) integration, main table (pbmc68k, curated labels): bio conservation per method, every seed as a dot
  and the mean +- s.d. over seeds, default ranking and the variant side by side;
- (b) annotation: macro-F1 (classes with >= 5 test cells), the same way;
- (c) the 2-layer model minus its own 0-layer baseline (same probe), per score: mean paired difference over
  seeds with its 95% t-interval, default ranking and the variant.

Usage::

    python benchmarks/plot_seeds.py --dir benchmarks/results/seeds_h200
    python benchmarks/plot_seeds.py --dir benchmarks/results/seeds_gpu_eps1e-8_h100 --suffix none \
        --title "5 seeds on an H100, AdamW eps 1e-8"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seed_tables import ANNOTATION, INTEGRATION

SHORT = {
    "PCA (50) + LR": "PCA + LR",
    "GeneMamba fine-tuned": "GM fine-tuned",
    "GeneMamba embedding + LR": "GM probe",
    "GeneMamba 0-layer embedding + LR": "GM 0-layer probe",
    "GeneMamba random init embedding + LR": "GM rand. init probe",
    "GeneMamba 0-layer random init embedding + LR": "GM 0-layer rand. init probe",
    "GeneMamba": "GM (2 layers)",
    "GeneMamba random init": "GM rand. init",
    "GM 0-layer random init": "GM 0-layer rand. init",
}
# (table, score, 2-layer method, its 0-layer baseline, label)
GAPS = [
    ("integration_pbmc68k", "Bio conservation", "GeneMamba", "GM 0-layer", "integration: bio conservation"),
    ("integration_pbmc68k", "KMeans NMI", "GeneMamba", "GM 0-layer", "integration: KMeans NMI"),
    ("integration_two_batch", "Bio conservation", "GeneMamba", "GM 0-layer", "two-batch (indicative): bio"),
    ("integration_two_batch", "Batch correction", "GeneMamba", "GM 0-layer", "two-batch (indicative): batch"),
    ("annotation", "accuracy", "GeneMamba embedding + LR", "GeneMamba 0-layer embedding + LR", "probe: accuracy"),
    ("annotation", "macro_f1", "GeneMamba embedding + LR", "GeneMamba 0-layer embedding + LR", "probe: macro-F1"),
]


def _means(summary: dict, table: str, score: str) -> dict[str, dict]:
    return {m["method"]: m for m in summary["tables"][table]["means"] if m["score"] == score}


def _gap(summary: dict, table: str, score: str, method: str, ref: str) -> dict | None:
    return next(
        (
            d
            for d in summary["tables"][table]["paired_differences"]
            if d["method"] == method and d["reference"] == ref and d["score"] == score
        ),
        None,
    )


def _dots(ax, summaries: list[tuple[str, dict, str]], table: str, score: str, methods: list[str]) -> None:
    width = 0.36
    for k, (label, summary, color) in enumerate(summaries):
        means = _means(summary, table, score)
        ax.errorbar([], [], yerr=[], fmt="o", color=color, ms=5, capsize=3, label=label)
        for i, method in enumerate(methods):
            if method not in means:
                continue
            m = means[method]
            x = i + (k - (len(summaries) - 1) / 2) * width
            v = np.array(list(m["per_seed"].values()), float)
            ax.scatter(np.full(v.size, x), v, s=10, color=color, alpha=0.5, linewidths=0)
            ax.errorbar(x, m["mean"], yerr=m["sd"], fmt="o", color=color, ms=5, capsize=3)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([SHORT.get(m, m) for m in methods], rotation=35, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="folder holding the biology_summary*.json")
    parser.add_argument(
        "--suffix", default="_tierandom", help="the variant shown next to the default ('none': the default alone)"
    )
    parser.add_argument("--variant-label", default='tie_break="random"')
    parser.add_argument("--out", type=Path, default=None, help="default: <dir>/biology_seeds.png")
    parser.add_argument("--title", default=None, help="a line above the panels (e.g. the machine and the settings)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alone = args.suffix.lower() == "none"
    for name in ("biology_summary.json", *(() if alone else (f"biology_summary{args.suffix}.json",))):
        if not (args.dir / name).is_file():
            raise SystemExit(
                f"no {name} in {args.dir}: write it with aggregate.py --out-dir {args.dir} (--suffix {args.suffix} for "
                "the variant), or pass --dir / --suffix of summaries that exist (the H200 seeds: "
                "benchmarks/results/seeds_h200)"
            )
    base = json.loads((args.dir / "biology_summary.json").read_text())
    n = len(base["tables"]["integration_pbmc68k"]["seeds"])
    runs = [("default ranking", base, "tab:blue")]
    if not alone:
        variant = json.loads((args.dir / f"biology_summary{args.suffix}.json").read_text())
        runs.append((args.variant_label, variant, "tab:orange"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.15, 1.1]})
    _dots(axes[0], runs, "integration_pbmc68k", "Bio conservation", INTEGRATION)
    axes[0].set_title(f"(a) integration, pbmc68k curated labels\nbio conservation ({n} seeds)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper right", title="mean +- s.d.; dots: seeds", title_fontsize=8)
    _dots(axes[1], runs, "annotation", "macro_f1", ANNOTATION)
    axes[1].set_title(f"(b) annotation, macro-F1 (classes with >= 5 test cells)\n({n} seeds x splits)", fontsize=10)

    ax = axes[2]
    for k, (_, summary, color) in enumerate(runs):
        for i, (table, score, method, ref, _label) in enumerate(GAPS):
            d = _gap(summary, table, score, method, ref)
            if d is None:
                continue
            y = i if len(runs) == 1 else i + (0.18 if k == 0 else -0.18)
            m, lo, hi = d["mean_difference"], d["ci95_low"], d["ci95_high"]
            ax.errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", color=color, ms=5, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(GAPS)))
    ax.set_yticklabels([g[4] for g in GAPS], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("2-layer minus its 0-layer baseline (paired by seed)", fontsize=9)
    ax.set_title("(c) 2-layer - 0-layer: mean and 95% t-interval", fontsize=10)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    out = args.out or args.dir / "biology_seeds.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
