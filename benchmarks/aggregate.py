"""Summaries over seeds of the integration and annotation benchmarks, with paired-difference intervals.

Each run of ``integration.py`` / ``annotation.py`` writes ``results/seeds/<benchmark><suffix>_seed<n>.json``;
a seed changes the split (annotation), every model's initialisation and shuffling, and scVI's / scANVI's
seeds. This script reads every seed present and writes ``results/biology_summary<suffix>.{json,csv}``:

- per method and score: mean, standard deviation and the per-seed values;
- per pair (method, reference): the mean of the per-seed *paired* difference ``method - reference`` with a 95%
  t-interval over seeds (``n - 1`` degrees of freedom); a difference is called *established* when that interval
  excludes 0. With n seeds the interval is ``mean +- t_{0.975, n-1} sd / sqrt(n)``.

Usage::

    python benchmarks/aggregate.py
    python benchmarks/aggregate.py --suffix _tierandom
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

SCORES = {
    "integration_pbmc68k": ["Bio conservation", "KMeans NMI", "KMeans ARI", "Silhouette label", "Isolated labels"],
    "integration_two_batch": ["Total", "Batch correction", "Bio conservation"],
    "annotation": ["accuracy", "macro_f1", "macro_f1_all_classes"],
}


# paired differences are computed against these methods (when present; GeneMamba_U: --unidirectional runs)
REFERENCES = {
    "integration": ["GeneMamba", "GeneMamba_U", "GM 0-layer"],
    "annotation": [
        "GeneMamba fine-tuned",
        "GeneMamba_U fine-tuned",
        "GeneMamba embedding + LR",
        "GeneMamba_U embedding + LR",
        "GeneMamba 0-layer embedding + LR",
    ],
}


def load_seeds(out_dir: Path, benchmark: str, suffix: str) -> dict[int, dict]:
    pattern = re.compile(rf"^{benchmark}{re.escape(suffix)}_seed(\d+)\.json$")
    runs = {}
    for f in sorted((out_dir / "seeds").glob(f"{benchmark}{suffix}_seed*.json")):
        m = pattern.match(f.name)
        if m:
            runs[int(m.group(1))] = json.loads(f.read_text())
    return runs


def tables(runs: dict[int, dict], benchmark: str) -> dict[str, pd.DataFrame]:
    """``{table: long frame (seed, method, score, value)}``."""
    out: dict[str, list] = {}
    for seed, r in runs.items():
        if benchmark == "integration":
            parts = {"integration_pbmc68k": r["results_pbmc68k_bio_only"]}
            if r.get("results_both_batches"):
                parts["integration_two_batch"] = r["results_both_batches"]
            for table, res in parts.items():
                for method, row in res.items():
                    for score in SCORES[table]:
                        if score in row:
                            out.setdefault(table, []).append((seed, method, score, row[score]))
        else:
            for row in r["results"]:
                for score in SCORES["annotation"]:
                    out.setdefault("annotation", []).append((seed, row["method"], score, row[score]))
    return {k: pd.DataFrame(v, columns=["seed", "method", "score", "value"]) for k, v in out.items()}


def t_interval(d: np.ndarray) -> tuple[float, float, float]:
    from scipy.stats import t

    n = d.size
    mean = float(d.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def summarise(long: pd.DataFrame, references: list[str]) -> tuple[list[dict], list[dict]]:
    means = []
    for (method, score), g in long.groupby(["method", "score"], sort=False):
        v = g.sort_values("seed")["value"].to_numpy(float)
        means.append(
            {
                "method": method,
                "score": score,
                "n_seeds": int(v.size),
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                "per_seed": dict(zip(g.sort_values("seed")["seed"].tolist(), v.tolist())),
            }
        )
    wide = long.pivot_table(index=["score", "seed"], columns="method", values="value")
    diffs = []
    for ref in references:
        if ref not in wide:
            continue
        for method in wide.columns:
            if method == ref:
                continue
            for score in wide.index.get_level_values(0).unique():
                d = (wide.loc[score, method] - wide.loc[score, ref]).dropna().to_numpy(float)
                if not d.size:
                    continue
                mean, lo, hi = t_interval(d)
                diffs.append(
                    {
                        "method": method,
                        "reference": ref,
                        "score": score,
                        "n_seeds": int(d.size),
                        "mean_difference": mean,
                        "ci95_low": lo,
                        "ci95_high": hi,
                        "established": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
                    }
                )
    return means, diffs


def markdown(summary: dict, table: str, score: str) -> str:
    """Markdown rows ``method | mean +- sd | difference vs each reference [95% CI]`` for one score."""
    t = summary["tables"][table]
    refs = list(dict.fromkeys(d["reference"] for d in t["paired_differences"]))
    head = f"| method | {score}: mean +- s.d. over seeds | " + " | ".join(f"minus {r} [95% CI]" for r in refs) + " |"
    lines = [head, "|" + "---|" * (2 + len(refs))]
    for m in (x for x in t["means"] if x["score"] == score):
        cells = [f"{m['mean']:.3f} +- {m['sd']:.3f}"]
        for r in refs:
            d = next(
                (
                    d
                    for d in t["paired_differences"]
                    if d["method"] == m["method"] and d["reference"] == r and d["score"] == score
                ),
                None,
            )
            if d is None:
                cells.append("")
            else:
                star = " *" if d["established"] else ""
                cells.append(f"{d['mean_difference']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]{star}")
        lines.append(f"| {m['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _macro_f1_boot(y: np.ndarray, p: np.ndarray, labels: list[str], idx: np.ndarray) -> np.ndarray:
    """Macro-F1 over ``labels`` (0 for a class without prediction and support) of each resample row of ``idx``."""
    f1 = np.zeros(idx.shape[0])
    for c in labels:
        yc, pc = (y == c)[idx], (p == c)[idx]
        tp = (yc & pc).sum(1)
        denom = yc.sum(1) + pc.sum(1)
        f1 += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1 / len(labels)


def cell_bootstrap(runs: dict[int, dict], references: list[str], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Annotation only: paired bootstrap over test cells, resampled within each seed and averaged over seeds.

    It captures the sampling noise of the test cells (not the training noise between seeds, which the
    t-interval over seeds holds); percentile 95% interval of ``method - reference``.
    """
    rng = np.random.default_rng(seed)
    methods = list(next(iter(runs.values()))["predictions"])
    idx = {s: rng.integers(0, len(r["y_test"]), (n_boot, len(r["y_test"]))) for s, r in runs.items()}
    out = []
    for ref in references:
        for method in methods:
            if method == ref:
                continue
            acc, mf1 = np.zeros(n_boot), np.zeros(n_boot)
            for s, r in runs.items():
                y = np.asarray(r["y_test"])
                a, b = np.asarray(r["predictions"][method]), np.asarray(r["predictions"][ref])
                major = r["data"]["macro_f1_classes"]
                acc += (a == y)[idx[s]].mean(1) - (b == y)[idx[s]].mean(1)
                mf1 += _macro_f1_boot(y, a, major, idx[s]) - _macro_f1_boot(y, b, major, idx[s])
            for score, v in (("accuracy", acc / len(runs)), ("macro_f1", mf1 / len(runs))):
                lo, hi = np.percentile(v, [2.5, 97.5])
                out.append(
                    {
                        "method": method,
                        "reference": ref,
                        "score": score,
                        "n_seeds": len(runs),
                        "mean_difference": float(v.mean()),
                        "ci95_low_test_cells": float(lo),
                        "ci95_high_test_cells": float(hi),
                        "excludes_0": bool(lo > 0 or hi < 0),
                    }
                )
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suffix", default="", help="run suffix, e.g. _tierandom")
    parser.add_argument("--out-dir", type=Path, default=C.RESULTS)
    args = parser.parse_args(argv)
    summary: dict = {
        "interval": "paired difference per seed, mean and 95% t-interval over seeds; established = excludes 0",
        "tables": {},
    }
    flat = []
    for benchmark in ("integration", "annotation"):
        runs = load_seeds(args.out_dir, benchmark, args.suffix)
        if not runs:
            continue
        for table, long in tables(runs, benchmark).items():
            methods = list(dict.fromkeys(long["method"]))
            refs = [m for m in REFERENCES[benchmark] if m in methods]
            means, diffs = summarise(long, refs)
            summary["tables"][table] = {"seeds": sorted(runs), "means": means, "paired_differences": diffs}
            if benchmark == "annotation":
                boot = cell_bootstrap(runs, refs)
                summary["tables"][table]["paired_differences_test_cell_bootstrap"] = boot
                print(pd.DataFrame(boot).round(3).to_string(index=False))
            for d in diffs:
                flat.append({"table": table, **d})
            print(f"== {table} (seeds {sorted(runs)})")
            print(pd.DataFrame(means).drop(columns="per_seed").round(3).to_string(index=False))
            print(pd.DataFrame(diffs).round(3).to_string(index=False))
    for table, t in summary["tables"].items():
        for score in dict.fromkeys(m["score"] for m in t["means"]):
            print(f"\n{table} / {score} (seeds {t['seeds']}; * = interval excludes 0)")
            print(markdown(summary, table, score))
    C.write_json(args.out_dir / f"biology_summary{args.suffix}.json", summary)
    if flat:
        pd.DataFrame(flat).to_csv(args.out_dir / f"biology_summary{args.suffix}.csv", index=False)
    return summary


if __name__ == "__main__":
    main()
