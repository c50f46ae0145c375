"""Summaries over seeds of the integration and annotation benchmarks, with paired-difference intervals.

Each run of ``integration.py`` / ``annotation.py`` writes ``results/seeds/<benchmark><suffix>_seed<n>.json``;
a seed changes the split (annotation), every model's initialisation and shuffling, and scVI's / scANVI's
seeds. This script reads every seed present and writes ``results/biology_summary<suffix>.{json,csv}``:

- per method and score: mean, standard deviation and the per-seed values;
- per pair (method, reference): the mean of the per-seed *paired* difference ``method - reference`` with a 95%
  t-interval over seeds (``n - 1`` degrees of freedom); a difference is called *established* when that interval
  excludes 0. With n seeds the interval is ``mean +- t_{0.975, n-1} sd / sqrt(n)``.

With ``--compare-suffix S`` it compares two variants of the same seeds instead (for example the default
ranking and ``--tie-break random``: a seed gives both the same split and the same initialisation seeds) and
writes ``results/biology_compare<S>_vs<suffix or _default>.{json,csv}``:

- ``same_method``: per method present in both and score, the paired difference ``variant - base`` per seed;
- ``gap_change``: per pair (method, reference), the change of the paired gap, i.e. per seed
  ``(method - reference) in the variant - (method - reference) in the base`` (does the variant close a gap?);

both with the same 95% t-interval over the seeds present in both variants.

Usage::

    python benchmarks/aggregate.py
    python benchmarks/aggregate.py --suffix _tierandom
    python benchmarks/aggregate.py --compare-suffix _tierandom
    python benchmarks/aggregate.py --exclude-seeds 0   # -> biology_summary_without_seed0.{json,csv}

``--exclude-seeds`` leaves seeds out (e.g. seed 0, whose test split chose the fine-tuning settings of an earlier
version; see docs/biology.md): the summary is written with a ``_without_seed<n>`` suffix beside the full one.
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
    "integration_pbmc68k": [
        "Bio conservation",
        "KMeans NMI",
        "KMeans ARI",
        "Silhouette label",
        "Isolated labels",
        "cLISI",
    ],
    "integration_two_batch": ["Total", "Batch correction", "Bio conservation"],
    "annotation": ["accuracy", "macro_f1", "macro_f1_all_classes"],
}


# paired differences are computed against these methods (when present; GeneMamba_U: --unidirectional runs)
REFERENCES = {
    "integration": ["GeneMamba", "GeneMamba_U", "GM 0-layer", "PCA"],
    "annotation": [
        "GeneMamba fine-tuned",
        "GeneMamba_U fine-tuned",
        "GeneMamba embedding + LR",
        "GeneMamba_U embedding + LR",
        "GeneMamba 0-layer embedding + LR",
        "PCA (50) + LR",
    ],
}


def run_config(run_args: dict) -> dict:
    """A seed file's configuration: its ``CONFIG_ARGS``, a missing one (files of older versions) at its default."""
    parser = argparse.ArgumentParser(add_help=False)
    C.add_common_args(parser)
    defaults = vars(parser.parse_known_args([])[0])
    config = {k: run_args.get(k, defaults.get(k)) for k in C.CONFIG_ARGS}
    if config.get("steps") is None:
        config["steps"] = C.QUICK_STEPS if config.get("quick") else C.DEFAULT_STEPS
    return config


def load_seeds(out_dir: Path, benchmark: str, suffix: str, exclude: tuple[int, ...] = ()) -> dict[int, dict]:
    """The seed files of one benchmark and suffix (but ``exclude``); refuses to pool runs of other configurations."""
    pattern = re.compile(rf"^{benchmark}{re.escape(suffix)}_seed(\d+)\.json$")
    runs, configs = {}, {}
    for f in sorted((out_dir / "seeds").glob(f"{benchmark}{suffix}_seed*.json")):
        m = pattern.match(f.name)
        if m and int(m.group(1)) not in exclude:
            runs[int(m.group(1))] = json.loads(f.read_text())
            configs[f.name] = run_config(runs[int(m.group(1))].get("args") or {})
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) > 1:
        shown = "\n".join(f"  {name}: {config}" for name, config in configs.items())
        raise SystemExit(f"the seed files of {benchmark}{suffix} were run with different configurations:\n{shown}")
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


def summarise(
    long: pd.DataFrame, references: list[str], test_over_train: float | None = None
) -> tuple[list[dict], list[dict]]:
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
                diffs.append(_diff_row(d, test_over_train, method=method, reference=ref, score=score))
    return means, diffs


def split_ratio(runs: dict[int, dict]) -> float | None:
    """``n_test / n_train`` of the annotation runs' splits (the same for every seed), or None if not recorded."""
    ratios = {(r.get("data") or {}).get("n_test_cells", 0) / max((r.get("data") or {}).get("n_train_cells", 0), 1)
              for r in runs.values()}  # fmt: skip
    return ratios.pop() if len(ratios) == 1 and 0 not in ratios else None


def corrected_t_interval(d: np.ndarray, test_over_train: float) -> tuple[float, float]:
    """95% interval of the corrected resampled t-test (Nadeau & Bengio 2003, Machine Learning 52:239-281).

    The seeds' random splits of one set of cells share cells between their test sets, so the seeds' differences
    are correlated and the plain t-interval over seeds is too narrow; the corrected variance is
    ``(1/J + n_test/n_train) * s**2`` over ``J`` splits instead of ``s**2 / J``.
    """
    from scipy.stats import t

    n = d.size
    if n < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(0.975, n - 1) * d.std(ddof=1) * np.sqrt(1 / n + test_over_train))
    return float(d.mean()) - half, float(d.mean()) + half


def _diff_row(d: np.ndarray, test_over_train: float | None = None, **keys) -> dict:
    mean, lo, hi = t_interval(d)
    row = {
        **keys,
        "n_seeds": int(d.size),
        "mean_difference": mean,
        "ci95_low": lo,
        "ci95_high": hi,
        "established": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
    }
    if test_over_train is not None:  # resampled splits of the same cells (annotation): the corrected interval too
        clo, chi = corrected_t_interval(d, test_over_train)
        row.update(ci95_low_corrected=clo, ci95_high_corrected=chi,
                   established_corrected=bool(np.isfinite(clo) and (clo > 0 or chi < 0)))  # fmt: skip
    return row


def compare(base: pd.DataFrame, variant: pd.DataFrame, references: list[str]) -> dict:
    """Paired by seed across two variants of one table (long frames ``seed, method, score, value``)."""
    wb = base.pivot_table(index=["score", "seed"], columns="method", values="value")
    wv = variant.pivot_table(index=["score", "seed"], columns="method", values="value")
    methods = [m for m in dict.fromkeys(variant["method"]) if m in wb.columns]
    scores = [s for s in dict.fromkeys(variant["score"]) if s in wb.index.get_level_values(0)]
    same, gaps = [], []
    for score in scores:
        b, v = wb.loc[score], wv.loc[score]
        seeds = b.index.intersection(v.index)
        b, v = b.loc[seeds], v.loc[seeds]
        for method in methods:
            d = (v[method] - b[method]).dropna().to_numpy(float)
            if d.size:
                same.append(_diff_row(d, method=method, score=score))
        for ref in (r for r in references if r in methods):
            for method in methods:
                if method == ref:
                    continue
                d = ((v[method] - v[ref]) - (b[method] - b[ref])).dropna().to_numpy(float)
                if d.size:
                    gaps.append(_diff_row(d, method=method, reference=ref, score=score))
    seeds = sorted(set(base["seed"]) & set(variant["seed"]))
    return {"seeds": seeds, "same_method": same, "gap_change": gaps}


def compare_main(out_dir: Path, suffix: str, compare_suffix: str, variant_dir: Path | None = None) -> dict:
    """``--compare-suffix``: both variants' seeds, paired by seed; writes ``biology_compare*.{json,csv}``.

    ``variant_dir`` (``--compare-dir``): the variant's seed files are the runs of ``suffix`` in that results folder
    (another machine, another version), and the comparison is written there, named after ``out_dir``.
    """
    name = f"{compare_suffix}_vs{suffix or '_default'}" if variant_dir is None else f"_vs_{out_dir.name}"
    out: dict = {
        "interval": "paired by seed across the two variants; mean and 95% t-interval over seeds; "
        "established = excludes 0",
        "base_suffix": suffix,
        "variant_suffix": compare_suffix,
        "same_method": "variant - base, per seed",
        "gap_change": "(method - reference) in the variant - (method - reference) in the base, per seed",
        "tables": {},
    }
    flat = []
    for benchmark in ("integration", "annotation"):
        base_runs = load_seeds(out_dir, benchmark, suffix)
        var_runs = load_seeds(variant_dir or out_dir, benchmark, compare_suffix)
        if not base_runs or not var_runs:
            continue
        base_t, var_t = tables(base_runs, benchmark), tables(var_runs, benchmark)
        for table in (t for t in var_t if t in base_t):
            res = compare(base_t[table], var_t[table], REFERENCES[benchmark])
            out["tables"][table] = res
            for kind in ("same_method", "gap_change"):
                flat += [
                    {"table": table, "comparison": kind, "method": d["method"], "reference": d.get("reference"), **d}
                    for d in res[kind]
                ]
                print(f"== {table}: {kind} ({compare_suffix} vs {suffix or 'default'}, seeds {res['seeds']})")
                print(pd.DataFrame(res[kind]).round(3).to_string(index=False))
    if variant_dir is not None:
        out["base_dir"], out["variant_dir"] = out_dir.name, variant_dir.name
    where = variant_dir or out_dir
    C.write_json(where / f"biology_compare{name}.json", out)
    if flat:
        pd.DataFrame(flat).to_csv(where / f"biology_compare{name}.csv", index=False)
    return out


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
    parser.add_argument(
        "--compare-suffix",
        default=None,
        help="compare this variant (e.g. _tierandom) with --suffix's, paired by seed, instead of summarising",
    )
    parser.add_argument(
        "--compare-dir",
        type=Path,
        default=None,
        help="compare the --suffix runs of this results folder (the variant) with --out-dir's, paired by seed",
    )
    parser.add_argument("--exclude-seeds", type=int, nargs="+", default=[], help="leave these seeds out")
    args = parser.parse_args(argv)
    exclude = tuple(sorted(set(args.exclude_seeds)))
    out_suffix = args.suffix + "".join(f"_without_seed{s}" for s in exclude)
    if args.compare_dir is not None:
        return compare_main(args.out_dir, args.suffix, args.suffix, args.compare_dir)
    if args.compare_suffix is not None:
        return compare_main(args.out_dir, args.suffix, args.compare_suffix)
    summary: dict = {
        "interval": "paired difference per seed, mean and 95% t-interval over seeds; established = excludes 0. "
        "Annotation also *_corrected: the corrected resampled t-test (Nadeau & Bengio 2003), whose seeds' random "
        "splits of the same cells overlap in their test cells: variance (1/J + n_test/n_train) s^2",
        "tables": {},
    }
    flat = []
    for benchmark in ("integration", "annotation"):
        runs = load_seeds(args.out_dir, benchmark, args.suffix, exclude)
        if not runs:
            continue
        for table, long in tables(runs, benchmark).items():
            methods = list(dict.fromkeys(long["method"]))
            refs = [m for m in REFERENCES[benchmark] if m in methods]
            ratio = split_ratio(runs) if benchmark == "annotation" else None
            means, diffs = summarise(long, refs, ratio)
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
    if not summary["tables"]:
        raise SystemExit(f"no seed files {args.out_dir / 'seeds'}/{{integration,annotation}}{args.suffix}_seed*.json")
    for table, t in summary["tables"].items():
        for score in dict.fromkeys(m["score"] for m in t["means"]):
            print(f"\n{table} / {score} (seeds {t['seeds']}; * = interval excludes 0)")
            print(markdown(summary, table, score))
    if exclude:
        summary["excluded_seeds"] = list(exclude)
    C.write_json(args.out_dir / f"biology_summary{out_suffix}.json", summary)
    if flat:
        pd.DataFrame(flat).to_csv(args.out_dir / f"biology_summary{out_suffix}.csv", index=False)
    return summary


if __name__ == "__main__":
    main()
