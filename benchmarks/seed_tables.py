"""Markdown tables of the seed runs, from their committed summaries (what ``docs/biology.md`` shows).

Reads ``biology_summary.json``, ``biology_summary<suffix>.json`` and ``biology_compare<suffix>_vs_default.json``
(``aggregate.py``, ``aggregate.py --suffix``, ``aggregate.py --compare-suffix``) in ``--dir`` and prints:
means +- s.d. over seeds, and paired differences ``a - b`` with their 95% t-interval over seeds, **bold** when
the interval excludes 0 (*established*). Nothing is run.

Usage::

    python benchmarks/seed_tables.py --dir benchmarks/results/seeds_h200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

INTEGRATION = ["PCA", "scVI", "GeneMamba", "GM 0-layer", "GeneMamba random init", "GM 0-layer random init"]
BIO = ["Bio conservation", "Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI"]
TWO_BATCH = ["Batch correction", "Bio conservation", "Total"]
ANNOTATION = [
    "PCA (50) + LR",
    "scANVI",
    "GeneMamba fine-tuned",
    "GeneMamba embedding + LR",
    "GeneMamba 0-layer embedding + LR",
    "GeneMamba random init embedding + LR",
    "GeneMamba 0-layer random init embedding + LR",
]
ANN_SCORES = ["accuracy", "macro_f1", "macro_f1_all_classes"]
ANN_HEAD = ["accuracy", "macro-F1 (>= 5 test cells)", "macro-F1 (all 10 classes)"]
INTEGRATION_PAIRS = [
    ("scVI", "PCA"),
    ("PCA", "GeneMamba"),
    ("scVI", "GeneMamba"),
    ("PCA", "GM 0-layer"),
    ("scVI", "GM 0-layer"),
    ("GeneMamba", "GM 0-layer"),
    ("GeneMamba", "GeneMamba random init"),
    ("GM 0-layer", "GM 0-layer random init"),
]
ANNOTATION_PAIRS = [
    ("scANVI", "PCA (50) + LR"),
    ("PCA (50) + LR", "GeneMamba fine-tuned"),
    ("scANVI", "GeneMamba fine-tuned"),
    ("GeneMamba fine-tuned", "GeneMamba embedding + LR"),
    ("GeneMamba fine-tuned", "GeneMamba 0-layer embedding + LR"),
    ("GeneMamba embedding + LR", "GeneMamba 0-layer embedding + LR"),
    ("GeneMamba embedding + LR", "GeneMamba random init embedding + LR"),
    ("GeneMamba 0-layer embedding + LR", "GeneMamba 0-layer random init embedding + LR"),
    ("GeneMamba fine-tuned", "GeneMamba 0-layer random init embedding + LR"),
]


def mean_sd(summary: dict, table: str, method: str, score: str) -> str:
    m = next((m for m in summary["tables"][table]["means"] if m["method"] == method and m["score"] == score), None)
    return "" if m is None else f"{m['mean']:.3f} ± {m['sd']:.3f}"


def fmt(d: dict | None, sign: int = 1) -> str:
    if d is None:
        return ""
    mean, lo, hi = sign * d["mean_difference"], sign * d["ci95_low"], sign * d["ci95_high"]
    lo, hi = min(lo, hi), max(lo, hi)
    cell = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return f"**{cell}**" if d["established"] else cell


def paired(summary: dict, table: str, a: str, b: str, score: str) -> str:
    """``a - b`` from the summary's paired differences (either way round)."""
    for d in summary["tables"][table]["paired_differences"]:
        if d["score"] != score:
            continue
        if d["method"] == a and d["reference"] == b:
            return fmt(d)
        if d["method"] == b and d["reference"] == a:
            return fmt(d, -1)
    return "n/a"


def means_table(summary: dict, table: str, methods: list[str], scores: list[str], head: list[str]) -> str:
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    present = {m["method"] for m in summary["tables"][table]["means"]}
    for method in (m for m in methods if m in present):
        lines.append(f"| {method} | " + " | ".join(mean_sd(summary, table, method, s) for s in scores) + " |")
    return "\n".join(lines)


def pairs_table(summary: dict, table: str, pairs, scores: list[str], head: list[str]) -> str:
    lines = ["| difference | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    present = {m["method"] for m in summary["tables"][table]["means"]}
    for a, b in pairs:
        if a in present and b in present:
            lines.append(f"| {a} − {b} | " + " | ".join(paired(summary, table, a, b, s) for s in scores) + " |")
    return "\n".join(lines)


def compare_table(cmp: dict, table: str, scores: list[str], head: list[str], rows) -> str:
    """``rows``: (kind, method, reference or None, label)."""
    lines = ["| variant − default, paired by seed | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    t = cmp["tables"][table]
    for kind, method, ref, label in rows:
        cells = []
        for s in scores:
            d = next(
                (d for d in t[kind] if d["method"] == method and d.get("reference") == ref and d["score"] == s), None
            )
            cells.append(fmt(d))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--suffix", default="_tierandom")
    args = parser.parse_args(argv)
    base = json.loads((args.dir / "biology_summary.json").read_text())
    var = json.loads((args.dir / f"biology_summary{args.suffix}.json").read_text())
    cmp = json.loads((args.dir / f"biology_compare{args.suffix}_vs_default.json").read_text())
    # (summary key, title, methods, method pairs, score columns, their headers)
    sections = (
        ("integration_pbmc68k", "integration, pbmc68k curated labels", INTEGRATION, INTEGRATION_PAIRS, BIO, BIO),
        ("integration_two_batch", "two batches, indicative", INTEGRATION, INTEGRATION_PAIRS, TWO_BATCH, TWO_BATCH),
        ("annotation", "annotation", ANNOTATION, ANNOTATION_PAIRS, ANN_SCORES, ANN_HEAD),
    )
    out = []
    for name, s in (("default", base), (args.suffix, var)):
        for key, title, methods, pairs, scores, head in sections:
            out += [
                f"### {title} ({name}): means",
                means_table(s, key, methods, scores, head),
                f"### {title} ({name}): paired differences",
                pairs_table(s, key, pairs, scores, head),
            ]
    gm_rows = [
        ("same_method", "GeneMamba", None, "GeneMamba (2 layers)"),
        ("same_method", "GM 0-layer", None, "GM 0-layer"),
        ("gap_change", "GeneMamba", "GM 0-layer", "gap GeneMamba − GM 0-layer"),
    ]
    probe_rows = [
        ("same_method", "GeneMamba embedding + LR", None, "GeneMamba probe"),
        ("same_method", "GeneMamba 0-layer embedding + LR", None, "0-layer probe"),
        ("same_method", "GeneMamba fine-tuned", None, "GeneMamba fine-tuned"),
        ("gap_change", "GeneMamba embedding + LR", "GeneMamba 0-layer embedding + LR", "gap probe − 0-layer probe"),
    ]
    out += [
        f"### {args.suffix} vs default: integration, pbmc68k",
        compare_table(cmp, "integration_pbmc68k", BIO, BIO, gm_rows),
        f"### {args.suffix} vs default: two batches (indicative)",
        compare_table(cmp, "integration_two_batch", TWO_BATCH, TWO_BATCH, gm_rows),
        f"### {args.suffix} vs default: annotation",
        compare_table(cmp, "annotation", ANN_SCORES, ANN_HEAD, probe_rows),
    ]
    text = "\n\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
