"""Where users point ``from_pretrained`` / ``load``: a Hub repository id in the local Hugging Face cache, and
the other loader's directories (each is refused with the call that reads it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from _official_writer import cache_like_huggingface_hub
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.io import read_checkpoint, read_official_checkpoint
from genemamba_scvi.io._hub_cache import hub_cache_dir, looks_like_repo_id
from test_pretrained import _adata, _load, _official_tensors, _reference, _write_hf

REPO = "mineself2016/GeneMamba"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # cache_like_huggingface_hub's default commit


def test_repo_id_is_read_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    raw = _official_tensors("gate", seed=7)
    source = _write_hf(tmp_path / "download", raw, mode="gate", pooling="mean")
    cache_like_huggingface_hub(tmp_path / "hub", REPO, source)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no local directory of that name
    adata = _adata(seed=8)
    model = _load(REPO, adata, max_genes=40)
    expected = _reference(raw, "gate", adata, 40, "mean").numpy()
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-4, atol=1e-4)
    # the same commit by hash, and the same cache passed explicitly
    monkeypatch.delenv("HF_HUB_CACHE")
    by_hash = read_official_checkpoint(REPO, revision=COMMIT, cache_dir=tmp_path / "hub")
    direct = read_official_checkpoint(source)
    assert by_hash.encoder_kwargs == direct.encoder_kwargs
    assert all((by_hash.encoder_state_dict[k] == v).all() for k, v in direct.encoder_state_dict.items())


def test_a_local_directory_wins_over_the_cache(tmp_path, monkeypatch):
    (tmp_path / "mineself2016").mkdir()
    local = _write_hf(tmp_path / "mineself2016" / "GeneMamba", _official_tensors("sum", seed=1), mode="sum")
    other = _write_hf(tmp_path / "other", _official_tensors("mean"), mode="mean")
    cache_like_huggingface_hub(tmp_path / "hub", REPO, other)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert local.is_dir()
    assert read_official_checkpoint(REPO).encoder_kwargs["merge"] == "sum"  # the local one, not the cached "mean"
    with pytest.raises(ValueError, match="local path"):
        read_official_checkpoint(REPO, revision="main")  # a revision cannot select a local directory's files


def test_repo_id_not_in_the_cache_says_how_to_get_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    adata = _adata()
    GeneMambaModel.setup_anndata(adata)
    with pytest.raises(FileNotFoundError, match=r"never downloads.*huggingface-cli download mineself2016/Gene") as err:
        GeneMambaModel.from_pretrained(REPO, adata)
    assert str(tmp_path / "empty" / "models--mineself2016--GeneMamba") in str(err.value)


def test_missing_ref_lists_the_cached_commits(tmp_path, monkeypatch):
    source = _write_hf(tmp_path / "download", _official_tensors("mean"), mode="mean")
    cache_like_huggingface_hub(tmp_path / "hub", REPO, source, ref=None)  # e.g. fetched by commit hash only
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no ref 'main'; cached commits: {COMMIT}"):
        read_official_checkpoint(REPO, cache_dir=tmp_path / "hub")
    with pytest.raises(FileNotFoundError, match="no ref 'v2'"):
        read_official_checkpoint(REPO, cache_dir=tmp_path / "hub", revision="v2")
    assert read_official_checkpoint(REPO, cache_dir=tmp_path / "hub", revision=COMMIT).encoder_kwargs["merge"] == "mean"


def test_size_variant_subfolder_of_a_cached_repo(tmp_path, monkeypatch):
    root = _write_hf(tmp_path / "download", _official_tensors("mean", seed=2), mode="mean")
    _write_hf(root / "12l-256d", _official_tensors("sum", seed=3), mode="sum")
    cache_like_huggingface_hub(tmp_path / "hub", REPO, root)
    monkeypatch.chdir(tmp_path)
    variant = read_official_checkpoint(REPO, subfolder="12l-256d", cache_dir=tmp_path / "hub")
    assert variant.encoder_kwargs["merge"] == "sum"


def test_hub_cache_dir_follows_huggingface_hub_environment(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hub_cache_dir() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hub_cache_dir() == tmp_path / "new"


def test_repo_ids_and_paths_are_told_apart():
    assert looks_like_repo_id("mineself2016/GeneMamba") and looks_like_repo_id("org/GeneMamba-v1.2_x")
    for path in ("GeneMamba", "./GeneMamba/small", "/abs/dir", "a/b/c", "../up", Path("org/name")):
        assert not looks_like_repo_id(path)


def test_each_loader_names_the_other_for_its_directories(tmp_path, sample48_model):
    model, adata = sample48_model
    ours = tmp_path / "ours"
    model.save(ours)
    with pytest.raises(ValueError, match=r"written by GeneMambaModel\.save.*GeneMambaModel\.load"):
        GeneMambaModel.from_pretrained(ours, adata)
    official = _write_hf(tmp_path / "official", _official_tensors("mean"), mode="mean")
    with pytest.raises(FileNotFoundError, match=r"official GeneMamba checkpoint.*from_pretrained\(path, adata\)"):
        GeneMambaModel.load(official, adata=adata)
    scvi_dir = tmp_path / "scvi_model"
    scvi_dir.mkdir()
    (scvi_dir / "model.pt").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match=r"model\.pt, a model saved by scvi-tools"):
        read_checkpoint(scvi_dir)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checksums\.json is missing from checkpoint directory \S+half$"):
        read_checkpoint(tmp_path / "half")  # nothing recognisable: the plain message


def test_from_pretrained_places_the_model_like_load(tmp_path):
    path = _write_hf(tmp_path / "GeneMamba", _official_tensors("mean"), mode="mean")
    adata = _adata()
    model = _load(path, adata, accelerator="cpu")
    assert model.device.type == "cpu"
    assert _load(path, adata).device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # "auto"


def test_from_pretrained_on_a_copy_keeps_the_set_up_of_its_original(tmp_path):
    raw = _official_tensors("gate", seed=5)
    source = _write_hf(tmp_path / "GeneMamba", raw, mode="gate", pooling="mean")
    adata = _adata(seed=6)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()  # what a notebook holds: log-normalised X, counts in a layer
    GeneMambaModel.setup_anndata(adata, layer="counts")
    with pytest.warns(UserWarning):  # the genes outside the published vocabulary are reported
        model = GeneMambaModel.from_pretrained(source, adata.copy(), backend="torch", max_genes=40)
    assert model.adata_manager.registry["setup_args"]["layer"] == "counts"
    counts_only = adata.copy()
    counts_only.X = counts_only.layers["counts"]  # the published pipeline reads X: hand it the counts
    expected = _reference(raw, "gate", counts_only, 40, "mean").numpy()
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-4, atol=1e-4)


def test_fine_tuning_published_weights_keeps_a_history(tmp_path, recwarn):
    raw = _official_tensors("gate", seed=9)
    source = _write_hf(tmp_path / "GeneMamba", raw, mode="gate", pooling="mean")
    adata = _adata(seed=10, n_cells=24)
    adata.obs["type"] = ["x", "y"] * 12
    GeneMambaModel.setup_anndata(adata, labels_key="type")
    model = GeneMambaModel.from_pretrained(source, adata, backend="torch", max_genes=40)
    run = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 12, "train_size": 1.0}
    model.train_classifier(max_epochs=2, **run)
    model.train_classifier(max_epochs=1, **run)
    assert model.history["classification_loss_train"].index.tolist() == [0, 1, 2]
    assert not [w for w in recwarn if "history cannot be updated" in str(w.message)]


def test_a_gene_subset_of_a_published_model_is_warned_about(tmp_path):
    raw = _official_tensors("gate", seed=11)
    source = _write_hf(tmp_path / "GeneMamba", raw, mode="gate", pooling="mean")
    adata = _adata(seed=12)
    GeneMambaModel.setup_anndata(adata)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        GeneMambaModel.from_pretrained(source, adata, backend="torch", max_genes=40)
    assert not [w for w in seen if "published model's" in str(w.message)]  # all the vocabulary's genes
    subset = adata[:, : adata.n_vars // 4].copy()  # as after selecting highly variable genes
    GeneMambaModel.setup_anndata(subset)
    with pytest.warns(UserWarning, match=r"holds \d+ of the published model.s \d+ genes.*Pass all measured genes"):
        GeneMambaModel.from_pretrained(source, subset, backend="torch", max_genes=40)


def test_repo_id_with_a_variant_reads_the_cached_subfolder(tmp_path, monkeypatch):
    root = _write_hf(tmp_path / "download", _official_tensors("mean", seed=2), mode="mean", pooling="mean")
    _write_hf(root / "12l-256d", _official_tensors("sum", seed=3), mode="sum", pooling="mean")
    cache_like_huggingface_hub(tmp_path / "hub", REPO, root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert read_official_checkpoint(f"{REPO}/12l-256d").encoder_kwargs["merge"] == "sum"
    assert read_official_checkpoint(f"{REPO}/12l-256d", revision=COMMIT).encoder_kwargs["merge"] == "sum"
    model = _load(f"{REPO}/12l-256d", _adata(), max_genes=40)
    assert model.module.encoder.merge_mode == "sum"
    with pytest.raises(FileNotFoundError, match=r"no size variant subfolder='6l' in .*size variants there: 12l-256d"):
        read_official_checkpoint(f"{REPO}/6l")
    with pytest.raises(FileNotFoundError, match=r"no size variant subfolder='6l' in .*size variants there: 12l-256d"):
        read_official_checkpoint(REPO, subfolder="6l")
    with pytest.raises(FileNotFoundError, match=r"no size variant subfolder='6l' in \S+download \(size variants"):
        read_official_checkpoint(root, subfolder="6l")  # a local directory: the same list


def test_missing_paths_name_the_cache_and_subfolder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"not in the Hugging Face cache either .*huggingface-cli download"
    ) as e:
        read_official_checkpoint(f"{REPO}/1l-64d")
    assert "subfolder='1l-64d'" in str(e.value) and str(tmp_path / "hub" / "models--mineself2016--GeneMamba") in str(
        e.value
    )
    with pytest.raises(FileNotFoundError, match=r"does not exist\)\. A repository in the local Hugging Face cache"):
        read_official_checkpoint(tmp_path / "nowhere" / "GeneMamba")
    _write_hf(tmp_path / "GeneMamba", _official_tensors("mean"), mode="mean")
    _write_hf(tmp_path / "GeneMamba" / "small", _official_tensors("mean"), mode="mean")
    with pytest.raises(FileNotFoundError, match=r"at GeneMamba/1l-64d; checkpoint folders in GeneMamba: small"):
        read_official_checkpoint("GeneMamba/1l-64d")  # a local spelling: the local variants


def test_a_full_annotation_matrix_holding_the_published_genes_is_taken(tmp_path, capsys):
    # 40,000 extra features (a full GENCODE annotation, antibody tags): under half of the var_names are in the
    # published vocabulary, but every vocabulary gene is there; it was refused ("lower min_overlap", which no entry
    # point took) while a saved model took the same superset
    import anndata
    import scipy.sparse as sp

    from genemamba_scvi.cli import main

    path = _write_hf(tmp_path / "hf", _official_tensors("gate"), "gate")
    adata = _adata()
    extra = sp.random(adata.n_obs, 40_000, density=0.01, format="csr", random_state=0)
    extra.data[:] = 1
    full = anndata.AnnData(sp.hstack([sp.csr_matrix(adata.X), extra]).tocsr().astype(np.float32))
    full.obs_names = adata.obs_names
    full.var_names = [*adata.var_names, *(f"FEATURE_{i}" for i in range(40_000))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        z = _load(path, full.copy()).get_latent_representation()
    assert z.shape[0] == adata.n_obs and np.isfinite(z).all()
    # a column set that matches neither way is still refused, and the threshold can be lowered where it is named
    odd = full[:, adata.n_vars // 2 :].copy()
    odd.var_names = [f"X{i}" if i % 50 else v for i, v in enumerate(odd.var_names)]
    with pytest.raises(ValueError, match=r"do not fit the model.*from_pretrained\(\.\.\., min_gene_overlap"):
        _load(path, odd.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _load(path, odd.copy(), min_gene_overlap=0.0).min_gene_overlap == 0.0
    odd.write_h5ad(tmp_path / "odd.h5ad")
    base = ["embed", str(tmp_path / "odd.h5ad"), "--model", str(path), "--max-genes", "40", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a.h5ad")]) == 2
    assert "--min-gene-overlap" in capsys.readouterr().err
    full.write_h5ad(tmp_path / "full.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base[:1], str(tmp_path / "full.h5ad"), *base[2:], "--out", str(tmp_path / "b.h5ad")]) == 0


def test_a_damaged_file_of_the_hub_cache_is_refused(tmp_path):
    # blobs are named by their content's hash (sha256 for LFS files, git's blob sha1 for small ones); a flipped byte
    # in the cached model.safetensors loaded silently as other weights
    import hashlib

    source = _write_hf(tmp_path / "download", _official_tensors("gate", seed=7), mode="gate", pooling="mean")
    snapshot = cache_like_huggingface_hub(tmp_path / "hub", REPO, source)
    config = snapshot / "config.json"  # a small file stored as huggingface_hub does, under its git blob sha1
    data = config.read_bytes()
    sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    config.resolve().rename(config.resolve().parent / sha1)
    config.unlink()
    config.symlink_to(f"../../blobs/{sha1}")
    read_official_checkpoint(REPO, cache_dir=tmp_path / "hub")  # intact: read
    blob = (snapshot / "model.safetensors").resolve()
    damaged = bytearray(blob.read_bytes())
    damaged[-1000] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"model.safetensors in the Hugging Face cache is damaged"):
        read_official_checkpoint(REPO, cache_dir=tmp_path / "hub")


def test_a_parent_folders_tokenizer_is_taken_only_from_a_repository_of_size_variants(tmp_path):
    # bad-input probe (session 33): a checkpoint without its tokenizer silently read a tokenizer one folder up (any
    # folder: another download's, with the genes in another order, gave embeddings off by up to 0.6)
    root = _write_hf(tmp_path / "repo", _official_tensors("mean", seed=2), mode="mean")
    variant = _write_hf(root / "12l-256d", _official_tensors("sum", seed=3), mode="sum")
    (variant / "tokenizer.json").unlink()
    assert read_official_checkpoint(variant).encoder_kwargs["merge"] == "sum"  # the repository root's tokenizer
    proj = tmp_path / "proj"
    proj.mkdir()
    ckpt = _write_hf(proj / "GeneMamba", _official_tensors("mean", seed=4), mode="mean")
    (ckpt / "tokenizer.json").rename(proj / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json in its parent folder is not taken.*no repository"):
        read_official_checkpoint(ckpt)
