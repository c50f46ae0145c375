"""The seed driver and the aggregation of the biology benchmarks (``benchmarks/run_seeds.py``, ``aggregate.py``).

Fast: the driver runs stand-in processes (no benchmark is run), the aggregation reads synthetic seed files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

run_seeds = pytest.importorskip("run_seeds")
aggregate = pytest.importorskip("aggregate")


def test_runs_are_ordered_main_variant_first_with_their_suffixes(tmp_path):
    args = run_seeds.parse_args(
        ["--out-dir", str(tmp_path), "--seeds", "0", "1", "--variants", "default", "tierandom", "--accelerator", "gpu"]
    )
    runs = run_seeds.build_runs(args)
    names = [Path(r.log).stem for r in runs]
    assert names == [
        "integration_seed0",
        "annotation_seed0",
        "integration_seed1",
        "annotation_seed1",
        "integration_tierandom_seed0",
        "annotation_tierandom_seed0",
        "integration_tierandom_seed1",
        "annotation_tierandom_seed1",
    ]
    assert [r.nice for r in runs] == [0] * 4 + [10] * 4
    assert all(Path(r.result).name == Path(r.log).stem + ".json" for r in runs)
    flags = runs[0].argv
    assert flags[flags.index("--accelerator") + 1] == "gpu"
    assert flags[flags.index("--cache-dir") + 1] == str(tmp_path / "cache")
    assert "--n-jobs" in flags and "--n-jobs" not in runs[1].argv
    assert "--no-scvi" not in flags and "--no-figures" in flags
    lean = run_seeds.build_runs(
        run_seeds.parse_args(
            [
                "--out-dir",
                str(tmp_path),
                "--seeds",
                "0",
                "--variants",
                "default",
                "gamma0",
                "--ablations-without-baselines",
            ]
        )
    )
    assert ["--no-scvi" in r.argv or "--no-scanvi" in r.argv for r in lean] == [False, False, True, True]
    assert "--no-scvi" in lean[2].argv and "--no-scanvi" in lean[3].argv
    quick = run_seeds.build_runs(run_seeds.parse_args(["--out-dir", str(tmp_path), "--extra-args=--quick --gamma 0"]))
    assert Path(quick[0].log).stem == "integration_gamma0_quick_seed0"


def test_deadline_kills_stragglers_and_keeps_what_finished(tmp_path, monkeypatch):
    """A finished run is kept, a running one is killed at the deadline, a pending one never starts."""

    real = run_seeds.build_runs

    def fake_runs(args):
        runs = real(args)
        ok, slow, never = runs[:3]
        ok.argv = [sys.executable, "-c", f"open({ok.result!r}, 'w').write('{{}}')"]
        slow.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        never.argv = [sys.executable, "-c", "raise SystemExit(3)"]
        return [ok, slow, never]

    monkeypatch.setattr(run_seeds, "build_runs", fake_runs)
    (tmp_path / "seeds").mkdir()
    t = time.monotonic()
    manifest = run_seeds.main(
        ["--out-dir", str(tmp_path), "--seeds", "0", "1", "--jobs", "1", "--deadline-s", "4", "--no-aggregate"]
    )
    assert time.monotonic() - t < 30
    status = [r["status"] for r in manifest["runs"]]
    assert status == ["ok", "killed_at_deadline", "not_started"]
    assert manifest["runs"][0]["returncode"] == 0 and manifest["runs"][0]["wall_seconds"] is not None
    on_disk = json.loads((tmp_path / "run_seeds_manifest.json").read_text())
    assert [r["status"] for r in on_disk["runs"]] == status
    assert on_disk["machine"]["cpu_count"] and "torch" in on_disk["machine"]
    assert (tmp_path / "logs" / "integration_seed0.log").is_file()


def _integration_seed(seed: int, rng) -> dict:
    base = {"PCA": 0.66, "scVI": 0.60, "GeneMamba": 0.50, "GM 0-layer": 0.55}
    res = {m: {"Bio conservation": v + 0.005 * rng.standard_normal(), "KMeans ARI": v} for m, v in base.items()}
    return {"benchmark": "integration", "seed": seed, "results_pbmc68k_bio_only": res, "results_both_batches": None}


def _annotation_seed(seed: int) -> dict:
    y = np.array(["a"] * 20 + ["b"] * 20)
    good = y.copy()
    bad = y.copy()
    bad[20 : 30 + seed % 3] = "a"  # 10-12 errors, all on class b
    preds = {"GeneMamba fine-tuned": bad, "PCA (50) + LR": good}
    results = []
    for method, p in preds.items():
        acc = float((p == y).mean())
        results.append({"method": method, "accuracy": acc, "macro_f1": acc, "macro_f1_all_classes": acc})
    return {
        "benchmark": "annotation",
        "seed": seed,
        "results": results,
        "predictions": {k: v.tolist() for k, v in preds.items()},
        "y_test": y.tolist(),
        "data": {"macro_f1_classes": ["a", "b"]},
    }


def test_aggregate_reads_and_writes_another_out_dir(tmp_path):
    rng = np.random.default_rng(0)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for s in range(5):
        (seeds / f"integration_seed{s}.json").write_text(json.dumps(_integration_seed(s, rng)))
        (seeds / f"annotation_seed{s}.json").write_text(json.dumps(_annotation_seed(s)))
    (seeds / "integration_tierandom_seed0.json").write_text(json.dumps(_integration_seed(0, rng)))  # other suffix
    summary = aggregate.main(["--out-dir", str(tmp_path)])
    assert (tmp_path / "biology_summary.json").is_file() and (tmp_path / "biology_summary.csv").is_file()
    t = summary["tables"]["integration_pbmc68k"]
    assert t["seeds"] == [0, 1, 2, 3, 4]
    d = next(
        d
        for d in t["paired_differences"]
        if d["method"] == "PCA" and d["reference"] == "GeneMamba" and d["score"] == "Bio conservation"
    )
    assert d["n_seeds"] == 5 and d["established"] and d["ci95_low"] > 0
    a = summary["tables"]["annotation"]
    d = next(
        d
        for d in a["paired_differences"]
        if d["method"] == "PCA (50) + LR" and d["reference"] == "GeneMamba fine-tuned" and d["score"] == "accuracy"
    )
    assert d["established"] and d["mean_difference"] == pytest.approx(np.mean([10 + s % 3 for s in range(5)]) / 40)
    # seed 0 left out (its test split once chose the fine-tuning settings): own files, the full summary kept
    without = aggregate.main(["--out-dir", str(tmp_path), "--exclude-seeds", "0"])
    assert (tmp_path / "biology_summary_without_seed0.json").is_file() and without["excluded_seeds"] == [0]
    assert without["tables"]["annotation"]["seeds"] == [1, 2, 3, 4]
    d = next(
        d
        for d in without["tables"]["annotation"]["paired_differences"]
        if d["method"] == "PCA (50) + LR" and d["reference"] == "GeneMamba fine-tuned" and d["score"] == "accuracy"
    )
    assert d["n_seeds"] == 4 and d["mean_difference"] == pytest.approx(np.mean([10 + s % 3 for s in range(1, 5)]) / 40)
    full = json.loads((tmp_path / "biology_summary.json").read_text())
    assert full["tables"]["annotation"]["seeds"] == [0, 1, 2, 3, 4]


def test_annotation_intervals_are_also_corrected_for_overlapping_test_sets(tmp_path):
    """Nadeau & Bengio's corrected resampled t-interval: (1/J + n_test/n_train) s^2 instead of s^2 / J; the
    integration tables (fixed cells, no resampling) keep the plain interval only."""
    from scipy.stats import t as student

    d = np.array([0.007, 0.071, 0.093, 0.057, 0.064])  # the session-17 CPU gaps, PCA + LR - fine-tuned
    lo, hi = aggregate.corrected_t_interval(d, 140 / 560)
    half = student.ppf(0.975, 4) * d.std(ddof=1) * np.sqrt(1 / 5 + 0.25)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert lo < 0 < aggregate.t_interval(d)[1]  # established by the plain interval, not by the corrected one
    rng = np.random.default_rng(0)
    (tmp_path / "seeds").mkdir()
    for s in range(5):
        ann = _annotation_seed(s)
        ann["data"].update(n_test_cells=40, n_train_cells=160)
        (tmp_path / "seeds" / f"annotation_seed{s}.json").write_text(json.dumps(ann))
        (tmp_path / "seeds" / f"integration_seed{s}.json").write_text(json.dumps(_integration_seed(s, rng)))
    summary = aggregate.main(["--out-dir", str(tmp_path)])
    row = summary["tables"]["annotation"]["paired_differences"][0]
    assert row["ci95_low_corrected"] < row["ci95_low"] and row["ci95_high_corrected"] > row["ci95_high"]
    assert "ci95_low_corrected" not in summary["tables"]["integration_pbmc68k"]["paired_differences"][0]


def test_aggregate_compares_runs_of_another_results_folder(tmp_path):
    """``--compare-dir``: the same benchmark run elsewhere (another machine or version), paired by seed."""
    rng = np.random.default_rng(2)
    for where in ("a", "b"):
        (tmp_path / where / "seeds").mkdir(parents=True)
    for s in range(3):
        base = _integration_seed(s, rng)
        (tmp_path / "a" / "seeds" / f"integration_seed{s}.json").write_text(json.dumps(base))
        res = {m: dict(row) for m, row in base["results_pbmc68k_bio_only"].items()}
        res["GeneMamba"]["Bio conservation"] += 0.03 + 0.001 * s
        (tmp_path / "b" / "seeds" / f"integration_seed{s}.json").write_text(
            json.dumps({**base, "results_pbmc68k_bio_only": res})
        )
    out = aggregate.main(["--out-dir", str(tmp_path / "a"), "--compare-dir", str(tmp_path / "b")])
    assert (tmp_path / "b" / "biology_compare_vs_a.json").is_file() and out["variant_dir"] == "b"
    gm = next(d for d in out["tables"]["integration_pbmc68k"]["same_method"]
              if d["method"] == "GeneMamba" and d["score"] == "Bio conservation")  # fmt: skip
    assert gm["mean_difference"] == pytest.approx(0.031) and gm["established"]


def test_aggregate_compares_two_variants_paired_by_seed(tmp_path):
    """``--compare-suffix``: same method across variants and the change of a gap, on the seeds both have."""
    rng = np.random.default_rng(1)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for s in range(5):
        base = _integration_seed(s, rng)
        (seeds / f"integration_seed{s}.json").write_text(json.dumps(base))
        if s == 4:  # the variant lacks seed 4: only seeds 0-3 are paired
            continue
        res = {m: dict(row) for m, row in base["results_pbmc68k_bio_only"].items() if m != "scVI"}  # no baseline
        res["GeneMamba"]["Bio conservation"] += 0.05 + 0.002 * rng.standard_normal()
        res["GM 0-layer"]["Bio conservation"] += 0.002 * rng.standard_normal()
        variant = {**base, "results_pbmc68k_bio_only": res}
        (seeds / f"integration_tierandom_seed{s}.json").write_text(json.dumps(variant))
    out = aggregate.main(["--out-dir", str(tmp_path), "--compare-suffix", "_tierandom"])
    assert (tmp_path / "biology_compare_tierandom_vs_default.json").is_file()
    assert (tmp_path / "biology_compare_tierandom_vs_default.csv").is_file()
    t = out["tables"]["integration_pbmc68k"]
    assert t["seeds"] == [0, 1, 2, 3]

    def row(kind, method, score="Bio conservation", reference=None):
        return next(
            d for d in t[kind] if d["method"] == method and d["score"] == score and d.get("reference") == reference
        )

    gm = row("same_method", "GeneMamba")
    assert gm["n_seeds"] == 4 and gm["established"] and gm["mean_difference"] == pytest.approx(0.05, abs=0.01)
    pca = row("same_method", "PCA")
    assert pca["mean_difference"] == 0 and not pca["established"]
    assert not row("same_method", "GeneMamba", score="KMeans ARI")["established"]  # unchanged: exactly 0
    assert all(d["method"] != "scVI" for d in t["same_method"] + t["gap_change"])
    gap = row("gap_change", "GeneMamba", reference="GM 0-layer")
    assert gap["established"] and gap["mean_difference"] == pytest.approx(0.05, abs=0.01)
    assert row("gap_change", "GM 0-layer", reference="GeneMamba")["mean_difference"] == pytest.approx(
        -gap["mean_difference"]
    )


def test_biology_page_tables_are_the_committed_seed_summaries():
    """The main tables of ``docs/biology.md`` are what ``seed_tables.py`` prints from the committed H200 seeds."""
    seed_tables = pytest.importorskip("seed_tables")
    results = BENCH / "results" / "seeds_h200"
    if not (results / "biology_compare_tierandom_vs_default.json").is_file():
        pytest.skip("no committed seed summaries")
    text = seed_tables.main(["--dir", str(results)])
    doc = (BENCH.parent / "docs" / "biology.md").read_text()
    blocks = dict(zip(text.split("\n\n")[0::2], text.split("\n\n")[1::2]))
    for title in (
        "### integration, pbmc68k curated labels (default): means",
        "### integration, pbmc68k curated labels (default): paired differences",
        "### two batches, indicative (default): means",
        "### integration, pbmc68k curated labels (_tierandom): means",
        "### annotation (default): means",
        "### annotation (default): paired differences",
        "### annotation (_tierandom): means",
    ):
        rows = blocks[title].splitlines()[2:]
        assert rows and all(r.split(" | ", 1)[1] in doc for r in rows), title


def test_other_model_sizes_get_their_own_files_and_are_never_pooled(tmp_path):
    assert run_seeds.run_suffix([]) == ""
    assert run_seeds.run_suffix(["--steps", "600", "--d-model", "64"]) == ""  # the defaults, spelled out
    assert run_seeds.run_suffix(["--d-model", "16", "--n-layers", "1", "--steps", "4"]) == "_d16_L1_steps4"
    assert run_seeds.run_suffix(["--quick"]) == "_quick"
    rng = np.random.default_rng(2)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for s, d_model in ((0, 64), (1, 64), (2, 16)):  # seed 2 written by a tiny run under the default name
        run = {**_integration_seed(s, rng), "args": {"d_model": d_model, "n_layers": 2, "seed": s}}
        (seeds / f"integration_seed{s}.json").write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=r"integration were run with different configurations"):
        aggregate.main(["--out-dir", str(tmp_path)])
    (seeds / "integration_seed2.json").unlink()
    # an argument a file of an older version lacks counts as its default, not as a different configuration
    newer = json.loads((seeds / "integration_seed1.json").read_text())
    newer["args"].update({"adam_eps": None, "steps": 600, "tie_break": "median"})
    (seeds / "integration_seed1.json").write_text(json.dumps(newer))
    assert aggregate.main(["--out-dir", str(tmp_path)])["tables"]["integration_pbmc68k"]["seeds"] == [0, 1]
    with pytest.raises(SystemExit, match=r"no seed files"):
        aggregate.main(["--out-dir", str(tmp_path), "--suffix", "_tierandom"])


def test_one_thread_after_numba_is_loaded_does_not_break_the_next_numba_compile(tmp_path):
    # `integration.py --threads 1` (the docs' CPU runs) died at scanpy's first numba compile: set_threads wrote
    # NUMBA_NUM_THREADS after numba had started its threads with the core count
    import subprocess

    script = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "import numba, numpy as np\n"
        "numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS))  # numba's threads already running\n"
        "from _common import set_threads\n"
        "set_threads(1)\n"
        "f = numba.njit(parallel=True)(lambda x: x.sum())\n"
        "print('sum', f(np.ones(10)), numba.get_num_threads())\n"
    )
    env = {**__import__("os").environ, "NUMBA_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-1500:]
    assert "sum 10.0 1" in run.stdout


def test_integration_scores_the_cells_in_an_order_drawn_from_the_seed():
    # session 31 (repro probe): scib's KMeans NMI / ARI are one k-means initialisation, which depends on the cells'
    # order; the main table scored PCA in one fixed order for every seed (s.d. 0). Shuffled by the seed, only the
    # k-means scores move
    import scanpy as sc

    import integration
    from genemamba_scvi import datasets

    adata = datasets.load_pbmc68k_counts()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    adata.obs["batch"] = "pbmc68k"
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str).astype("category")
    try:
        res = {
            seed: integration.run_benchmarker(
                adata, ["X_pca"], "batch", "cell_type", False, 1, order_seed=seed, neighbors="exact"
            )
            .get_results(min_max_scale=False)
            .loc["X_pca"]
            for seed in (None, 1, 2)
        }
    finally:
        import gc

        gc.unfreeze()  # run_benchmarker freezes the heap for scib's collections (a script's, not a test suite's)
    for seed in (1, 2):
        for metric in ("Silhouette label", "cLISI", "Isolated labels"):
            assert float(res[seed][metric]) == pytest.approx(float(res[None][metric]), abs=1e-5)
    assert len({round(float(r["KMeans ARI"]), 6) for r in res.values()}) > 1


def test_results_record_the_adam_eps_the_runs_trained_with():
    # reviewer probe (session 35): `adam_eps: None` meant the plan's default, which changed (0.01, then 1e-8), so the
    # H200 and H100 seed runs could be told apart only by their code version
    import argparse
    import inspect

    import _common as C
    from genemamba_scvi.train import GeneMambaTrainingPlan

    default = inspect.signature(GeneMambaTrainingPlan).parameters["eps"].default
    got = C.run_args(argparse.Namespace(adam_eps=None, seed=3))
    assert got == {"adam_eps": None, "seed": 3, "adam_eps_used": default}
    assert C.run_args(argparse.Namespace(adam_eps=0.01))["adam_eps_used"] == 0.01
    for script in ("annotation", "integration", "rank_reconstruction", "gene_pathways"):
        assert '"args": C.run_args(args)' in (BENCH / f"{script}.py").read_text(), script
