"""Arguments users mistype, each refused up front with a message naming it (session 19's user probes).

Before: a raw Lightning / torch / h5py traceback, an argument silently misread (``bidirectional="false"``), a
silently broken head (``hidden=0``), 1000 epochs for ``max_epochs=None``, or a demo that wrote over earlier files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaConfig, GeneMambaModel
from genemamba_scvi.cli import main
from genemamba_scvi.datasets import load_pbmc68k_counts


@pytest.fixture(scope="module")
def model():
    scvi.settings.seed = 0
    adata = load_pbmc68k_counts()[:48].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="bulk_labels")
    return GeneMambaModel(adata, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": None}, r"max_epochs=None: scvi-tools picks"),
        ({"max_epochs": 0}, r"max_epochs must be a positive number of epochs"),
        ({"max_epochs": -1}, r"max_epochs must be a positive number of epochs"),
        ({"max_epochs": 1, "gamma": -1.0}, r"gamma .* must be a finite number >= 0"),
    ],
)
def test_train_refuses_epochs_and_gamma_that_train_nothing_forever_or_wrongly(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.train(accelerator="cpu", enable_progress_bar=False, **kwargs)


@pytest.mark.parametrize(
    ("plan", "message"),
    [  # user probe: a negative min_lr_ratio drove the cosine below zero (training climbed the loss), a warm-up
        # fraction past 1 never reached the peak, lr 0 (refused as lr=) trained nothing, short betas an IndexError
        ({"min_lr_ratio": -1.0}, r"plan_kwargs min_lr_ratio must be a fraction in \[0, 1\]"),
        ({"warmup_fraction": 1.5}, r"plan_kwargs warmup_fraction must be a fraction in \[0, 1\]"),
        ({"lr": 0.0}, r"plan_kwargs lr must be a positive number"),
        ({"weight_decay": -1.0}, r"plan_kwargs weight_decay must be a number >= 0"),
        ({"eps": float("nan")}, r"plan_kwargs eps must be a positive number"),
        ({"betas": (0.9,)}, r"plan_kwargs betas must be two numbers in \[0, 1\)"),
        ({"betas": (0.9, 1.0)}, r"plan_kwargs betas must be two numbers in \[0, 1\)"),
    ],
)
def test_plan_kwargs_values_that_train_silently_wrong_are_refused_before_training(model, plan, message):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, plan_kwargs=plan)
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("method", "plan", "message"),
    [  # the next engineer's probe: these reached module.loss where the mode ignores them (or switched the mode)
        (
            "train",
            {"class_weights": torch.ones(3)},
            r"\['class_weights'\] .*class_weight= to train_classifier",
        ),
        ("train", {"mode": "classify"}, r"plan_kwargs \['mode'\] .*the mode follows the method"),
        ("train_classifier", {"gamma": 0.5}, r"plan_kwargs \['gamma'\] .*gamma= to train\(\)"),
    ],
)
def test_plan_kwargs_that_set_the_loss_of_the_other_mode_are_refused(model, method, plan, message):
    with pytest.raises(TypeError, match=message):
        getattr(model, method)(max_epochs=1, accelerator="cpu", enable_progress_bar=False, plan_kwargs=plan)


def test_plan_kwargs_betas_as_an_array_or_list_train(model):
    # the check first took only sequences: np.array([0.9, 0.98]) (torch's AdamW takes it) was refused
    run = {"max_epochs": 1, "max_steps": 1, "accelerator": "cpu", "enable_progress_bar": False}
    for betas in (np.array([0.9, 0.98]), [0.9, 0.999], torch.tensor([0.9, 0.98])):
        model.train(plan_kwargs={"betas": betas}, **run)


def test_max_epochs_none_is_fine_with_max_steps(model):
    model.train(max_epochs=None, max_steps=1, accelerator="cpu", enable_progress_bar=False, batch_size=16)
    model.train(max_epochs=np.int64(1), max_steps=1, accelerator="cpu", enable_progress_bar=False, batch_size=16)


@pytest.mark.parametrize("hidden", [0, -3, 2.5, True])
def test_train_classifier_refuses_a_head_without_units(model, hidden):
    with pytest.raises(ValueError, match=r"hidden must be a positive number of units"):
        model.train_classifier(max_epochs=1, hidden=hidden, accelerator="cpu", enable_progress_bar=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bidirectional": "false"}, r"bidirectional must be True or False, got 'false'"),
        ({"tie_lm_head": "no"}, r"tie_lm_head must be True or False"),
        ({"shared_merge": 2}, r"shared_merge must be True or False"),
        ({"mask_prob": "a"}, r"mask_prob must be a number"),
        ({"norm_eps": None}, r"norm_eps must be a number"),
    ],
)
def test_config_refuses_values_of_the_wrong_type(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeneMambaConfig(**kwargs)


def test_model_takes_a_config_dict_and_names_a_wrong_config(model):
    adata = model.adata
    from_dict = GeneMambaModel(adata, config={"d_model": 16, "n_layers": 1, "headdim": 8, "backend": "torch"})
    assert from_dict.module.encoder.d_model == 16
    with pytest.raises(TypeError, match=r"config must be a GeneMambaConfig"):
        GeneMambaModel(adata, config=5)
    for bad in (5, -0.1, "x"):
        with pytest.raises(ValueError, match=r"min_gene_overlap must be a fraction in \[0, 1\]"):
            GeneMambaModel(adata, min_gene_overlap=bad, **TINY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_asked_for_on_a_cpu_machine_is_named(model, tmp_path):
    model.save(tmp_path / "m")
    for kwargs in ({"accelerator": "gpu"}, {"device": "cuda:0"}):
        with pytest.raises(ValueError, match=r"asks for a CUDA GPU, but torch sees none"):
            GeneMambaModel.load(tmp_path / "m", adata=model.adata, **kwargs)
    with pytest.raises(ValueError, match=r"accelerator='gpu' asks for a CUDA GPU"):
        model.train(max_epochs=1, accelerator="gpu", enable_progress_bar=False)
    # serving probe: torch's habits, a torch.device object and to_device (Lightning's "devices ... should be an
    # int > 0" and torch's AssertionError before)
    loaded = GeneMambaModel.load(tmp_path / "m", adata=model.adata, device=torch.device("cpu"))
    assert loaded.module.encoder.embedding.weight.device.type == "cpu"
    for device in ("cuda", "cuda:0", 0, torch.device("cuda")):
        with pytest.raises(ValueError, match=r"asks for a CUDA GPU, but torch sees none.*use to_device\('cpu'\)"):
            loaded.to_device(device)


def test_demo_refuses_to_write_over_an_earlier_run_and_zero_epochs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text("my results")
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "my results"
    assert main(["demo", "--out", str(tmp_path / "d2"), "--epochs", "0", "--quiet"]) == 2
    assert "argument --epochs: must be >= 1, got 0" in capsys.readouterr().err
    # --out naming a file: said so (was "[Errno 17] File exists"), the file untouched
    assert main(["demo", "--out", str(out / "summary.json"), "--epochs", "1", "--quiet"]) == 2
    assert "is a file; the demo writes a folder of outputs" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "my results"


def test_embed_and_build_corpus_name_bad_files_and_keys(model, tmp_path, capsys, monkeypatch):
    text = tmp_path / "cells.txt"
    text.write_text("not an h5ad")
    model.save(tmp_path / "m")
    assert main(["embed", str(text), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "is not an .h5ad file" in capsys.readouterr().err
    assert main(["build-corpus", str(text), "--out", str(tmp_path / "c")]) == 2
    assert "is not an .h5ad file" in capsys.readouterr().err
    cells = tmp_path / "cells.h5ad"
    model.adata.write_h5ad(cells)
    # a file cut short (an interrupted copy or writer): named, exit 2 (h5py's traceback, exit 1, before)
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(cells.read_bytes()[: cells.stat().st_size // 2])
    for argv in (["embed", str(cut), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.h5ad")],
                 ["build-corpus", str(cut), "--out", str(tmp_path / "c")]):  # fmt: skip
        assert main(argv) == 2
        assert "is truncated or damaged and cannot be opened (Unable to" in capsys.readouterr().err
    # a file another process still writes (HDF5's lock): said so, not "write it again" (review)
    import subprocess
    import sys

    hold = f"import h5py, time; f = h5py.File({str(cells)!r}, 'a'); print('open', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert main(["embed", str(cells), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.h5ad")]) == 2
        assert "is locked by another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # a folder that takes no files though os.access says it may (/proc as root, a read-only mount): named before
    # the embedding (was reported as a full disk, then h5py's error on a hidden temporary)
    if Path("/proc").is_dir():
        assert main(["embed", str(cells), "--model", str(tmp_path / "m"), "--out", "/proc/o.h5ad"]) == 2
        err = capsys.readouterr().err
        assert "cannot write /proc/o.h5ad: /proc " in err
        if os.geteuid() == 0:  # root passes os.access: the file made there is what refuses it (review)
            assert "takes no new files" in err
    # a write-protected output (another user's, in a shared folder; HPC probe): refused before the embedding, as save
    # refuses a write-protected model (root here may write any file, so the permission is what os.access says)
    theirs = tmp_path / "theirs.h5ad"
    theirs.write_bytes(b"a colleague's file")
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == theirs else access(p, mode, **kw))
    assert main(["embed", str(cells), "--model", str(tmp_path / "m"), "--out", str(theirs), "--overwrite"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and theirs.read_bytes() == b"a colleague's file"
    monkeypatch.undo()
    argv = ["embed", str(cells), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.h5ad"), "--key", ""]
    assert main(argv) == 2
    assert "--key must name the obsm key" in capsys.readouterr().err
    assert not (tmp_path / "o.h5ad").exists()


def test_cpu_inference_batch_follows_a_token_budget(model):
    # session 19: a CPU batch of 64 cells at max_genes=2048 was ~3x slower per cell and twice the memory of 4-8 cells
    cpu = torch.device("cpu")
    sizes = {}
    for max_genes in (64, 256, 2048, 4096):
        model.max_genes = max_genes
        sizes[max_genes] = model._inference_batch_size(cpu)
    model.max_genes = TINY["max_genes"]
    assert sizes == {64: 8, 256: 8, 2048: 4, 4096: 2}


def test_gpu_inference_batch_follows_the_measured_memory_per_token(monkeypatch):
    # session 32 (benchmarks/results/embed_batch_size_h100_s32.json): on an H100, 512 cells a batch embedded 1.024x
    # the cells/s of the 199 the estimate chose (x2 slack on 51 KB a token, a quarter of the free memory) at 9.9 GB
    from types import SimpleNamespace

    from genemamba_scvi.model._model import _inference_batch_size

    sizes = {}
    for backend in ("mamba_ssm", "torch"):  # 24 x 512, d_state 64, 16 heads
        published = SimpleNamespace(d_in_proj=2192, d_model=512, resolved_backend=lambda d, b=backend: b)
        for free_gib in (78, 22, 1):
            monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free_gib: (f * 2**30, 80 * 2**30))
            sizes[backend, free_gib] = _inference_batch_size(published, 2048, torch.device("cuda", 0))
    assert sizes["mamba_ssm", 78] == 512  # the cap of 2^20 token slots
    assert 150 <= sizes["mamba_ssm", 22] <= 190 and sizes["mamba_ssm", 1] == 16  # a 24 GB card; the floor
    # the PyTorch scan on a GPU (no mamba-ssm) keeps its chunk states: ~125 KiB a token (review), 5x less a batch
    assert 110 <= sizes["torch", 78] <= 130 and 30 <= sizes["torch", 22] <= 40


def test_several_devices_without_a_distributed_strategy_are_named(model):
    # user probe: Lightning's "TokenDataLoader implementation has an error where more than one __init__ argument..."
    with pytest.raises(ValueError, match=r"devices=2 trains on several devices: pass strategy='ddp'"):
        model.train(max_epochs=1, accelerator="cpu", devices=2, enable_progress_bar=False)


def test_resuming_from_last_without_a_checkpoint_dir_is_named(model, tmp_path):
    # user probe: Lightning warned that no checkpoint was found and trained from scratch
    with pytest.raises(ValueError, match=r"ckpt_path='last' resumes from the last checkpoint in checkpoint_dir"):
        model.train(max_epochs=1, accelerator="cpu", ckpt_path="last", enable_progress_bar=False)
    from genemamba_scvi.pretrain import pretrain_from_corpus

    with pytest.raises(ValueError, match=r"ckpt_path='last' resumes"):
        pretrain_from_corpus(tmp_path / "no_corpus", max_steps=1, ckpt_path="last", accelerator="cpu")


@pytest.mark.parametrize("batch_size", [2.5, 8.0, 0, -3, True, "8"])
def test_batch_sizes_that_are_not_whole_positive_numbers_are_refused(model, batch_size):
    # before: 2.5 and True embedded silently (truncated to 2 and 1 cells), "8" raised a TypeError from the data
    # loader, and train() built a Trainer before torch's DataLoader refused them
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got"):
        model.get_latent_representation(batch_size=batch_size)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got"):
        model.train(max_epochs=1, batch_size=batch_size, accelerator="cpu", enable_progress_bar=False)


def test_numpy_integer_batch_sizes_are_taken(model):
    z = model.get_latent_representation(batch_size=np.int64(16))
    assert z.shape == (model.adata.n_obs, model.module.encoder.d_model)


@pytest.mark.parametrize("value", ["0.5", True, "abc", 1.5])
def test_min_gene_overlap_of_the_wrong_type_is_refused_by_name(model, tmp_path, value):
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"min_gene_overlap must be a fraction in \[0, 1\]"):
        GeneMambaModel.load(tmp_path / "m", adata=model.adata.copy(), min_gene_overlap=value)


def test_version_flag_and_python_m(capsys):
    import subprocess
    import sys

    import genemamba_scvi

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"genemamba {genemamba_scvi.__version__}"
    done = subprocess.run([sys.executable, "-m", "genemamba_scvi", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"genemamba {genemamba_scvi.__version__}"
