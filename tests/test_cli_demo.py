"""The README's main job (``genemamba demo``) end to end, at a tiny size: files written, keys and shapes."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pytest

from genemamba_scvi.cli import main


def test_demo_writes_embeddings_model_and_summary(tmp_path, recwarn, monkeypatch):
    out = tmp_path / "demo"
    root_handlers = list(logging.getLogger().handlers)
    rc = main(["demo", "--out", str(out), "--epochs", "1", "--d-model", "32", "--max-genes", "64", "--quiet"])
    assert rc == 0
    # a root handler would print every Lightning INFO line twice; the demo's own calls trigger no FutureWarning
    assert logging.getLogger().handlers == root_handlers
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning) and "scanpy" in w.filename]
    adata = ad.read_h5ad(out / "demo_adata.h5ad")
    assert adata.obsm["X_genemamba"].shape == (adata.n_obs, 32)
    assert np.isfinite(adata.obsm["X_genemamba"]).all()
    assert (out / "umap_genemamba.png").stat().st_size > 0
    assert (out / "model").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embedding_shape"] == [adata.n_obs, 32]
    assert set(summary["scib"]) == {"X_genemamba", "X_pca"}
    assert np.isfinite(summary["train_loss_first_epoch"])
    # what made the numbers travels with them (repro probe, session 31)
    want = {"seed": 0, "epochs": 1, "d_model": 32, "n_layers": 2, "max_genes": 64, "batch_size": 16}
    assert {k: summary["settings"][k] for k in want} == want and "training cells" in summary["scored"]
    assert adata.uns["genemamba"]["X_genemamba"]["max_genes"] == 64

    # --overwrite that fails half-way (after training and the picture) leaves the earlier outputs whole: it had
    # written the new picture beside the old AnnData, model and summary
    import genemamba_scvi.metrics

    def fail(*args, **kwargs):
        raise RuntimeError("stopped half-way")

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(genemamba_scvi.metrics, "benchmark_integration", fail)
    argv = ["demo", "--out", str(out), "--epochs", "1", "--d-model", "32", "--max-genes", "64", "--quiet"]
    with pytest.raises(RuntimeError, match="stopped half-way"):
        main([*argv, "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["demo_adata.h5ad", "umap_genemamba.png", "model", "summary.json"]
    )


def test_outputs_swapped_in_halfway_put_the_earlier_ones_back(tmp_path, monkeypatch):
    # user probe: a Ctrl-C between two of the moves left new and old outputs mixed, and the one in flight lost
    import os

    import genemamba_scvi._cli_demo as demo

    out, stage = tmp_path / "out", tmp_path / "out" / ".demo_partial"
    for root, text in ((out, "OLD"), (stage, "NEW")):
        (root / "model").mkdir(parents=True)
        (root / "model" / "w").write_text(text)
        for name in ("demo_adata.h5ad", "umap_genemamba.png", "summary.json"):
            (root / name).write_text(text)
    real, calls = os.replace, []

    def stopped(src, dst):
        calls.append(dst)
        if len(calls) == 6:  # the four earlier outputs moved aside, then the second new one
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(demo.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        demo._swap_in(stage, out)
    monkeypatch.setattr(demo.os, "replace", real)
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == dict.fromkeys(
        ("demo_adata.h5ad", "umap_genemamba.png", "summary.json"), "OLD"
    )
    assert (out / "model" / "w").read_text() == "OLD"


def test_a_read_only_home_gets_numba_a_temporary_cache(tmp_path, monkeypatch):
    # HPC probe: with HOME not writable, `import scanpy` (the demo's) failed in numba's cache; a user's setting stays
    import os

    from genemamba_scvi import _cli_demo

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    _cli_demo._numba_cache_if_home_is_read_only()
    assert "NUMBA_CACHE_DIR" not in os.environ  # a writable home: numba's own places
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(home) else access(p, mode, **kw))
    _cli_demo._numba_cache_if_home_is_read_only()
    assert os.environ["NUMBA_CACHE_DIR"].startswith(str(_cli_demo.tempfile.gettempdir()))
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/my/cache")
    _cli_demo._numba_cache_if_home_is_read_only()
    assert os.environ["NUMBA_CACHE_DIR"] == "/my/cache"


def test_demo_names_the_widths_its_model_takes_before_making_anything(tmp_path, capsys):
    # repro probe (session 31): the model's error advised headdim=, which the demo has no option for, and the
    # refused run left an empty --out folder behind
    assert main(["demo", "--out", str(tmp_path / "dx"), "--d-model", "16"]) == 2
    assert "--d-model 16: the demo's model needs a multiple of 32 (e.g. --d-model 32)" in capsys.readouterr().err
    assert not (tmp_path / "dx").exists()
