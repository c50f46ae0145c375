"""Pre-training from a token corpus: permutation, DDP sampler (exactly once), stateful resume, exact loss resume."""

from __future__ import annotations

import json
import pathlib
import shutil
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL_CONFIG, build_sample_corpus, crash_callback, settings
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.data.corpus import TokenCorpus, build_corpus
from genemamba_scvi.dataloader import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi.datasets import resource_path
from genemamba_scvi.pretrain import (
    CorpusBatchSampler,
    CorpusDataModule,
    CorpusDataset,
    CorpusSplit,
    FeistelPermutation,
    StepLossHistory,
    pretrain_from_corpus,
)

TINY = settings(TINY_MODEL_CONFIG.replace(d_model=32, n_layers=2, chunk_size=32, headdim=16))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.mktemp("pretrain") / "corpus", max_genes=64, shard_size=100)


# ---------------------------------------------------------------------------------------------- permutation
@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 559, 1000, 4097])
def test_feistel_is_a_permutation(n):
    p = FeistelPermutation(n, (0, 1))
    img = p(np.arange(n))
    assert sorted(img.tolist()) == list(range(n))
    if n >= 64:
        assert not np.array_equal(img, FeistelPermutation(n, (0, 2))(np.arange(n)))  # epochs differ
        assert np.abs(np.corrcoef(np.arange(n), img)[0, 1]) < 4 / np.sqrt(n)  # shuffled like a random permutation


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize(("n", "batch"), [(559, 16), (559, 279), (560, 7), (5, 4), (1, 3)])
def test_ddp_sampler_each_cell_once_per_epoch(world, n, batch):
    samplers = [CorpusBatchSampler(n, batch, num_replicas=world, rank=r, seed=3) for r in range(world)]
    assert len({len(s) for s in samplers}) == 1  # every rank runs the same number of steps
    for epoch in (0, 1):
        seen = []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            assert all(0 < b.size <= batch for b in batches[:-1])
            seen.extend(np.concatenate(batches).tolist())
        counts = np.bincount(seen, minlength=n)
        last = n % (batch * world)
        if last == 0 or last >= world:
            assert (counts == 1).all()  # exactly once over all ranks
        else:  # tail shorter than the world: at most world - 1 repeats, nothing lost
            assert (counts >= 1).all() and counts.sum() - n <= world - 1
    orders = []
    for epoch in (0, 1):
        samplers[0].set_epoch(epoch)
        orders.append(np.concatenate(list(samplers[0])))
    if n > 10:
        assert not np.array_equal(orders[0], orders[1])


def test_ddp_sampler_drop_last_and_no_shuffle():
    s = [CorpusBatchSampler(559, 16, num_replicas=2, rank=r, drop_last=True) for r in range(2)]
    cells = [np.concatenate(list(x)) for x in s]
    assert len(s[0]) == 559 // 32 and all(c.size == 16 * len(s[0]) for c in cells)
    assert len(set(cells[0].tolist()) | set(cells[1].tolist())) == 32 * (559 // 32)
    plain = CorpusBatchSampler(10, 4, shuffle=False)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_bucketing_keeps_each_cell_once_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(1, 2000, size=559)
    samplers = [
        CorpusBatchSampler(559, 16, num_replicas=2, rank=r, bucket_window=8, lengths_fn=lambda c: lengths[c])
        for r in range(2)
    ]
    batches = [list(s) for s in samplers]
    seen = np.concatenate([np.concatenate(b) for b in batches])
    assert np.array_equal(np.sort(seen), np.arange(559))
    spread = np.mean([np.ptp(lengths[b]) for b in batches[0][:-1]])
    plain = CorpusBatchSampler(559, 16, num_replicas=2, rank=0)
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in list(plain)[:-1]])


def test_sampler_state_resumes_mid_epoch_and_across_world_sizes():
    full = CorpusBatchSampler(559, 8, seed=5)
    full.set_epoch(2)
    ref = list(full)
    s = CorpusBatchSampler(559, 8, seed=5)
    s.set_epoch(2)
    it = iter(s)
    head = [next(it) for _ in range(10)]
    state = s.state_dict()
    assert state["epoch"] == 2 and state["cells_consumed"] == 80
    resumed = CorpusBatchSampler(559, 8, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the (same) epoch again: the position is kept
    rest = list(resumed)
    assert all(np.array_equal(a, b) for a, b in zip(head + rest, ref)) and len(head + rest) == len(ref)
    # the same position on 2 ranks of 4 cells each: the union continues the same global order
    two = [CorpusBatchSampler(559, 4, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for t in two:
        t.load_state_dict(state)
    nxt = np.concatenate([next(iter(t)) for t in two])
    assert np.array_equal(nxt, ref[10])
    # end of epoch -> next epoch from its start
    done = dict(state, cells_consumed=559)
    resumed.load_state_dict(done)
    assert resumed.epoch == 3 and resumed._start_step == 0
    with pytest.raises(ValueError, match="seed"):
        CorpusBatchSampler(559, 8, seed=6).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- data
def test_dataset_batches(corpus_dir):
    ds = CorpusDataset(corpus_dir)
    assert len(ds) == 559
    batch = ds[np.array([5, 1, 300])]
    assert set(batch) == {TOKENS_KEY, LENGTHS_KEY, "ind_x"}
    assert batch["ind_x"].tolist() == [5, 1, 300]
    assert batch[TOKENS_KEY].dtype == torch.long and batch[LENGTHS_KEY].dtype == torch.long
    assert batch[TOKENS_KEY].shape == (3, int(batch[LENGTHS_KEY].max()))
    tok, _ = TokenCorpus(corpus_dir).get(np.array([1]))
    assert torch.equal(batch[TOKENS_KEY][1, : tok.shape[1]], torch.from_numpy(tok[0].astype(np.int64)))
    dm = CorpusDataModule(corpus_dir, batch_size=100)
    loader = dm.train_dataloader()
    cells = np.concatenate([b["ind_x"].numpy() for b in loader])
    assert np.array_equal(np.sort(cells), np.arange(559)) and len(loader) == 6


# ---------------------------------------------------------------------------------------------- exact resume
@pytest.fixture
def one_thread():
    """Tiny models run fastest on one intra-op thread (and do not suffer from a busy shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(corpus_dir, **kwargs):
    history = StepLossHistory()
    callbacks = [history, *kwargs.pop("callbacks", [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pretrain_from_corpus(
            corpus_dir,
            **TINY,
            max_steps=6,
            lr=3e-3,
            seed=11,
            callbacks=callbacks,
            enable_progress_bar=False,
            accelerator="cpu",
            enable_model_summary=False,
            **kwargs,
        )
    return history, result


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "every", "crash_at"),
    [(160, 1, 3, 3), (64, 2, 2, 4)],  # 4 batches/epoch: resume crosses an epoch; and gradient accumulation
)
def test_resume_reproduces_uninterrupted_losses(
    corpus_dir, tmp_path, one_thread, batch_size, accumulate, every, crash_at
):
    common = {"batch_size": batch_size, "accumulate_grad_batches": accumulate}
    ref, ref_result = _train(corpus_dir, **common)
    assert ref_result.trainer.global_step == 6
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(
            corpus_dir,
            checkpoint_dir=ckpt_dir,
            checkpoint_every_n_steps=every,
            callbacks=[crash_callback(crash_at)],
            **common,
        )
    ckpt = ckpt_dir / f"step{crash_at:09d}.ckpt"
    assert ckpt.is_file() and (ckpt_dir / "last.ckpt").is_file()
    # the checkpoint callback's state sits under Lightning's ModelCheckpoint key, as in files of earlier versions
    states = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    assert any(key.startswith("ModelCheckpoint{'monitor': 'step'") for key in states)
    resumed, result = _train(
        corpus_dir, checkpoint_dir=ckpt_dir, checkpoint_every_n_steps=every, ckpt_path=ckpt, **common
    )
    n_done = next(i for i, r in enumerate(ref.records) if r["step"] > crash_at)
    assert [r["step"] for r in resumed.records] == [r["step"] for r in ref.records[n_done:]]
    np.testing.assert_allclose(resumed.losses, ref.losses[n_done:], rtol=0, atol=1e-6)
    for a, b in zip(result.module.state_dict().values(), ref_result.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert result.vocab.genes and result.gene_medians.shape == (len(result.vocab),)


@pytest.mark.parametrize("keep", [-1, 2])
def test_resume_with_accumulation_writes_each_step_checkpoint_once_and_reproduces_the_run(
    corpus_dir, tmp_path, one_thread, keep
):
    # 18 batches an epoch, 2 per optimiser step; keep=2 once kept step000000004-v1.ckpt and deleted the right file
    common = {"batch_size": 32, "accumulate_grad_batches": 2, "checkpoint_every_n_steps": 2, "keep_checkpoints": keep}
    _, ref = _train(corpus_dir, checkpoint_dir=tmp_path / "ref", **common)
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    steps = [2, 4, 6] if keep == -1 else [4, 6]
    assert names == ["last.ckpt", *(f"step{s:09d}.ckpt" for s in steps)]
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):  # after step 4, before the window's first batch
        _train(corpus_dir, checkpoint_dir=ckpt_dir, callbacks=[crash_callback(4)], **common)
    # the resumed run's first batch only accumulates: it must not write step 4 again (as step000000004-v1.ckpt)
    _, result = _train(corpus_dir, checkpoint_dir=ckpt_dir, ckpt_path="last", **common)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == names
    for a, b in zip(result.module.state_dict().values(), ref.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # every step checkpoint before the last resumes exactly (into a new directory: no collision with later files)
    for step in steps[:-1]:
        out = tmp_path / f"from{step}"
        _, again = _train(corpus_dir, checkpoint_dir=out, ckpt_path=ckpt_dir / f"step{step:09d}.ckpt", **common)
        assert not [p.name for p in out.iterdir() if "-v" in p.name]
        for a, b in zip(again.module.state_dict().values(), ref.module.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- model wrapper
class _RunsCodeWhenUnpickled:
    """An object whose unpickling writes a file (what a malicious checkpoint would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_model_pretrain_then_load_embeds_anndata(corpus_dir, tmp_path, monkeypatch):
    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.data.tokenize import TOKENIZER_SETTINGS, TokenizerSettings
    from genemamba_scvi.datasets import load_celltypist_sample

    monkeypatch.chdir(tmp_path)  # where a logger would write

    result = GeneMambaModel.pretrain(
        corpus_dir, tmp_path / "model", max_steps=2, batch_size=16, accelerator="cpu", enable_progress_bar=False, **TINY
    )
    adata = load_celltypist_sample()[:40].copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel.load(tmp_path / "model", adata=adata)
    assert model.max_genes == 64
    saved = json.loads((tmp_path / "model" / "config.json").read_text())  # the corpus's tokenization, written out
    assert {k: saved[k] for k in TOKENIZER_SETTINGS} == TokenizerSettings(max_genes=64).to_config()
    np.testing.assert_array_equal(model.gene_medians_, result.gene_medians)
    z = model.get_latent_representation()
    assert z.shape == (40, 32) and np.isfinite(z).all()
    # the run's loss curve came along (it was None: pretraining ran with no logger), and nothing was logged to disk
    assert model.history["train_loss"].index.name == "epoch" and len(model.history["train_loss"]) == 1
    assert np.isfinite(model.history["train_loss"].to_numpy()).all() and "lm_loss_train" in model.history
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # what the run was asked and did (train_runs), and where the weights came from, survive a re-save
    (run,) = model.train_runs
    assert run["method"] == "pretrain" and run["status"] == "completed" and run["steps"] == 2
    assert run["args"]["corpus_dir"] == str(corpus_dir) and run["args"]["max_steps"] == 2
    assert run["args"]["batch_size"] == 16 and run["args"]["d_model"] == TINY["d_model"]
    assert model.pretrained_on_ == str(corpus_dir)
    model.save(tmp_path / "resaved")
    reloaded = GeneMambaModel.load(tmp_path / "resaved", adata=adata)
    assert reloaded.pretrained_on_ == str(corpus_dir) and reloaded.train_runs == model.train_runs
    shutil.rmtree(tmp_path / "resaved")
    # the saved weights are the trained ones
    trained = result.module.encoder.embedding.weight.detach()
    torch.testing.assert_close(model.module.encoder.embedding.weight.detach(), trained)
    with pytest.raises(FileExistsError):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "model", max_steps=1, accelerator="cpu", **TINY)
    # never set up on an AnnData: the user's set-up is kept (it was replaced by defaults, with a warning, and a
    # gene_id_key given there was dropped: Python and `genemamba embed --gene-id-key` then embedded differently)
    ids = load_celltypist_sample()[:40].copy()
    ids.var["symbol_copy"] = ids.var_names.astype(str)
    ids.var_names = [f"feature{i}" for i in range(ids.n_vars)]
    GeneMambaModel.setup_anndata(ids, layer="counts", gene_id_key="symbol_copy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = GeneMambaModel.load(tmp_path / "model", adata=ids)
    assert again.adata_manager.registry["setup_args"]["gene_id_key"] == "symbol_copy"
    np.testing.assert_array_equal(again.get_latent_representation(), z)


def test_a_model_pretrained_on_a_relative_corpus_path_records_where_the_corpus_is(corpus_dir, tmp_path, monkeypatch):
    # probe (session 34): extra.json's pretrained_on held "corpusAB", meaningless read from another directory
    monkeypatch.chdir(corpus_dir.parent)
    GeneMambaModel.pretrain(
        corpus_dir.name,
        tmp_path / "m",
        max_steps=1,
        batch_size=64,
        accelerator="cpu",
        enable_progress_bar=False,
        **TINY,
    )
    assert json.loads((tmp_path / "m" / "extra.json").read_text())["pretrained_on"] == str(corpus_dir)


def test_model_pretrain_writes_beside_its_checkpoints_and_refuses_a_foreign_directory_before_training(
    corpus_dir, tmp_path, monkeypatch
):
    from genemamba_scvi import GeneMambaModel

    run = {"batch_size": 16, "accelerator": "cpu", "enable_progress_bar": False, **TINY}
    # checkpoints inside the model directory (which then exists before the model is written)
    GeneMambaModel.pretrain(corpus_dir, tmp_path / "m", max_steps=2, checkpoint_dir=tmp_path / "m" / "ckpt", **run)
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "ckpt" / "last.ckpt").is_file()
    # ... and resumed there after a crash that left only the checkpoints
    (tmp_path / "r" / "ckpt").mkdir(parents=True)
    (tmp_path / "r" / "ckpt" / "last.ckpt").write_bytes((tmp_path / "m" / "ckpt" / "last.ckpt").read_bytes())
    GeneMambaModel.pretrain(
        corpus_dir,
        tmp_path / "r",
        max_steps=3,
        checkpoint_dir=tmp_path / "r" / "ckpt",
        ckpt_path=tmp_path / "r" / "ckpt" / "last.ckpt",
        **run,
    )
    assert (tmp_path / "r" / "model.safetensors").is_file()
    # resuming with other settings names the setting's tensor, not Lightning's list of every mismatch
    wider = {**run, "d_model": 48}
    with pytest.raises(ValueError, match=r"written by a model of other settings \(module\.encoder\..* is \[.*32"):
        GeneMambaModel.pretrain(
            corpus_dir, tmp_path / "w", max_steps=3, ckpt_path=tmp_path / "r" / "ckpt" / "last.ckpt", **wider
        )
    # a checkpoint holding a pickled object is refused and nothing in it runs (the shape check unpickled it all)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCodeWhenUnpickled(tmp_path / "ran")}, evil)
    with pytest.raises(ValueError, match="holds objects other than tensors and numbers"):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "e", max_steps=1, ckpt_path=evil, **run)
    assert not (tmp_path / "ran").exists()
    # a directory of someone else's files is refused before a step is trained
    import genemamba_scvi.pretrain as pretrain

    monkeypatch.setattr(pretrain, "pretrain_from_corpus", lambda *a, **k: pytest.fail("trained before refusing"))
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"refusing to overwrite config\.json .*not a genemamba-scvi checkpoint"):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "user", overwrite=True, max_steps=1, **run)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "m", max_steps=1, **run)
    # the same call again: the earlier run's checkpoints named first, overwrite= being no way round them (review)
    with pytest.raises(FileExistsError, match=r"checkpoints of an earlier run.*overwrite= replaces a saved model"):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "m", max_steps=1, checkpoint_dir=tmp_path / "m" / "ckpt", **run)
    assert (tmp_path / "user" / "config.json").read_text() == "{}"


def test_progress_bar_counts_minibatches_to_max_steps_and_shows_the_loss_undivided(corpus_dir, capsys):
    history = StepLossHistory()
    pretrain_from_corpus(
        corpus_dir,
        **TINY,
        max_steps=2,
        batch_size=64,
        accumulate_grad_batches=2,
        callbacks=[history],
        seed=1,
        accelerator="cpu",
        enable_model_summary=False,
    )
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "4/4" in err and "/-" not in err  # 2 steps of 2 minibatches; no epoch limit shown as "Epoch 0/-2"
    assert f"train_loss={history.losses[-1]:.3f}" in err
    assert history.losses[-1] > 2.0  # the masked-gene cross-entropy over ~32k genes, not a half of it


def test_progress_bar_of_a_resumed_run_starts_where_its_checkpoint_stopped(corpus_dir, tmp_path, capsys):
    # probe (session 34): a run resumed at step 2 of 6 showed 0/6 and ended at 4/6 (67%)
    common = {"batch_size": 64, "checkpoint_dir": tmp_path / "ck", "checkpoint_every_n_steps": 2}
    _run(corpus_dir, max_steps=2, enable_progress_bar=True, **common)
    capsys.readouterr()
    _run(corpus_dir, max_steps=6, enable_progress_bar=True, ckpt_path="last", **common)
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "6/6" in shown and "4/6" in shown and "0/6" not in shown, shown[-600:]


# ---------------------------------------------------------------------------------------------- validation split
@pytest.mark.parametrize(("size", "n_val"), [(0.1, 56), (100, 100), (1, 1)])
def test_split_holds_out_a_fixed_random_subset_and_trains_on_the_rest(size, n_val):
    split = CorpusSplit(559, size, seed=3)
    val = split.validation_cells(np.arange(split.n_validation))
    train = split.train_cells(np.arange(split.n_train))
    assert split.n_validation == n_val and split.n_train == 559 - n_val
    assert np.array_equal(np.sort(np.concatenate([val, train])), np.arange(559))  # disjoint, every cell once
    assert np.array_equal(val, CorpusSplit(559, size, seed=3).validation_cells(np.arange(n_val)))  # fixed by seed
    if n_val > 10:  # spread over the corpus (its input files lie in order), not its first cells
        assert val.min() < 100 and val.max() > 459
        assert not np.array_equal(val, CorpusSplit(559, size, seed=4).validation_cells(np.arange(n_val)))
    # without validation cells the training part is the corpus in its own order (runs read what they read before)
    assert np.array_equal(CorpusSplit(559, None).train_cells(np.arange(559)), np.arange(559))


@pytest.mark.parametrize("size", [1.0, 559, 600, -0.1, True, "0.1", 1.5])
def test_split_refuses_sizes_that_leave_a_side_empty_or_are_not_sizes(size):
    with pytest.raises(ValueError, match=r"validation_size"):
        CorpusSplit(559, size)


def test_training_sampler_of_a_split_sees_each_training_cell_once_and_no_validation_cell(corpus_dir):
    from genemamba_scvi.pretrain import CorpusDataModule

    dm = CorpusDataModule(corpus_dir, batch_size=50, validation_size=0.2, seed=5, bucket_window=2)
    for world in (1, 2):
        samplers = [dm.make_sampler(world, r) for r in range(world)]
        seen = np.concatenate([s.batch(0, step) for s in samplers for step in range(len(s))])
        assert np.array_equal(np.sort(seen), np.sort(dm.split.train_cells(np.arange(dm.n_train))))
    val = np.concatenate(list(dm.val_dataloader().sampler))
    assert np.array_equal(np.sort(val), np.sort(dm.split.validation_cells(np.arange(dm.n_val))))
    assert np.intersect1d(val, seen).size == 0 and dm.n_val == 112 and dm.n_train == 447


def test_pretraining_with_held_out_cells_logs_a_reproducible_validation_loss(corpus_dir, one_thread):
    kwargs = {"batch_size": 64, "validation_size": 0.1, "val_check_interval": 3}
    _, first = _train(corpus_dir, **kwargs)
    metrics = first.trainer.callback_metrics
    assert {"validation_loss", "lm_loss_validation", "mlm_accuracy_validation"} <= set(metrics)
    assert np.isfinite(float(metrics["validation_loss"]))
    _, again = _train(corpus_dir, **kwargs)
    assert float(again.trainer.callback_metrics["validation_loss"]) == float(metrics["validation_loss"])


def test_a_run_is_not_resumed_with_another_validation_split(corpus_dir, tmp_path, one_thread):
    ckpt_dir = tmp_path / "ckpt"
    _train(corpus_dir, batch_size=64, validation_size=0.1, checkpoint_dir=ckpt_dir, checkpoint_every_n_steps=3)
    with pytest.raises(ValueError, match=r"validation cells and seed|n_cells"):
        _train(corpus_dir, batch_size=64, validation_size=0.2, ckpt_path=ckpt_dir / "last.ckpt")


def test_pretraining_without_held_out_cells_has_no_validation_loop(corpus_dir, one_thread):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = pretrain_from_corpus(
            corpus_dir, **TINY, max_steps=2, batch_size=64, accelerator="cpu", enable_progress_bar=False
        )
    assert not any("across ranks is zero" in str(w.message) for w in record)  # Lightning's empty-loader warning
    assert not any("validation" in key for key in result.trainer.callback_metrics)


def test_early_stopping_in_pretraining_is_checked_before_the_first_step(corpus_dir, one_thread):
    from lightning.pytorch.callbacks import EarlyStopping

    # it failed after a whole epoch (scvi's Trainer monitored elbo_validation), and the model was not saved
    _, result = _train(corpus_dir, batch_size=64, validation_size=0.1, early_stopping=True, val_check_interval=3)
    assert result.trainer.global_step == 6 and "validation_loss" in result.trainer.callback_metrics
    with pytest.warns(UserWarning, match="early stopping cannot end this run"):  # patience 45 > 1 epoch (review)
        pretrain_from_corpus(
            corpus_dir, **TINY, max_epochs=1, max_steps=1, batch_size=64, validation_size=0.1, early_stopping=True,
            val_check_interval=1, accelerator="cpu", enable_progress_bar=False,
        )  # fmt: skip
    cases = [
        ({"early_stopping": True}, r"needs held-out cells"),
        ({"callbacks": [EarlyStopping("validation_loss")]}, r"needs held-out cells"),
        ({"validation_size": 0.1, "early_stopping": True, "early_stopping_monitor": "val_loss"}, r"'val_loss' is not"),
        ({"validation_size": 0.1, "early_stopping": True, "early_stopping_monitor": "pathway_loss_validation"}, "not"),
    ]
    for kwargs, message in cases:
        steps = StepLossHistory()
        with pytest.raises(ValueError, match=message):
            _train(corpus_dir, batch_size=64, **{"callbacks": [steps], **kwargs})
        assert steps.losses == [] or "callbacks" in kwargs  # refused before any step


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bucket_window": -1},
        {"bucket_window": 2.5},
        {"keep_checkpoints": 2.5},
        {"keep_checkpoints": -2},
        {"checkpoint_every_n_steps": 2.5},
        {"checkpoint_every_n_steps": 0},
    ],
)
def test_sampler_and_checkpoint_settings_are_refused_by_name(corpus_dir, tmp_path, kwargs):
    # bucket_window=-1 raised numpy's "need at least one array to concatenate", keep_checkpoints=2.5 a KeyError after
    # 6 steps, checkpoint_every_n_steps=2.5 wrote only step 5, -2 / -1 were named in Lightning's words
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must be an integer >="):
        _train(corpus_dir, batch_size=64, checkpoint_dir=tmp_path / "c", **kwargs)


def test_a_corpus_missing_shard_files_is_named_when_opened(corpus_dir, tmp_path):
    import shutil

    from genemamba_scvi.data.corpus import TokenCorpus

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    shutil.rmtree(next((copy / "shards").iterdir()))
    with pytest.raises(ValueError, match=r"lacks 2 shard file\(s\) its manifest lists"):
        TokenCorpus(copy)


def test_a_corpus_with_a_shard_cut_short_is_named_when_opened_and_when_built_again(corpus_dir, tmp_path):
    # user probe: a truncated tokens.npy gave numpy's "mmap length is greater than file size" (no file named), and
    # re-running build_corpus reported 100 % and left it truncated
    import os
    import shutil

    from genemamba_scvi.data.corpus import TokenCorpus

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    shard = sorted((copy / "shards").iterdir())[2]
    path = shard / "tokens.npy"
    os.truncate(path, path.stat().st_size - 500)
    with pytest.raises(ValueError, match=rf"1 damaged shard file\(s\) .*{shard.name}/tokens.npy: cut short"):
        TokenCorpus(copy)
    with pytest.raises(ValueError, match=rf"shard {shard.name} is recorded in the manifest but its files are damaged"):
        build_corpus(resource_path("celltypist_sample_559cells_counts.h5ad"), copy, max_genes=64, shard_size=100,
                     median_method="exact")  # fmt: skip


class _CtrlCAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_in_pretraining_says_what_was_kept(corpus_dir, tmp_path, one_thread):
    # pretraining returns nothing when stopped: the interrupt says so, and where its checkpoints are (the message of
    # train(), "the model keeps the weights", would be wrong here)
    with pytest.raises(KeyboardInterrupt, match=r"after 2 steps .*nothing was saved \(pass checkpoint_dir="):
        _train(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)])
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt, match=r"resume with ckpt_path='.*ckpt/last.ckpt'"):
        _train(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt, checkpoint_every_n_steps=1)
    assert (ckpt / "last.ckpt").is_file()
    none_yet = tmp_path / "none_yet"  # stopped before its first checkpoint: no advice to resume from a missing file
    with pytest.raises(KeyboardInterrupt, match=r"nothing was saved, and no checkpoint was written yet into"):
        _train(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(1)], checkpoint_dir=none_yet, checkpoint_every_n_steps=5)


def _run(corpus_dir, **kwargs):
    """``pretrain_from_corpus`` as ``_train`` calls it, its warnings shown, any setting overridable."""
    defaults = {"max_steps": 6, "lr": 3e-3, "seed": 11, "accelerator": "cpu", "enable_progress_bar": False}
    return pretrain_from_corpus(corpus_dir, **{**TINY, **defaults, "enable_model_summary": False, **kwargs})


def test_a_run_that_ends_before_any_validation_refuses_early_stopping_and_warns_about_held_out_cells(
    corpus_dir, one_thread
):
    # probe (session 34): max_steps inside the first epoch (every run of a large corpus) trained to the end, then
    # early stopping failed for want of a validation loss, with nothing saved; validation_size alone held cells out
    # for no loss, silently. 503 training cells at 64 a batch: 8 batches an epoch
    steps = StepLossHistory()
    with pytest.raises(ValueError, match=r"ends after max_steps=6 \(6 batches\), inside its first epoch of 8 batches"):
        _run(corpus_dir, batch_size=64, validation_size=0.1, early_stopping=True, callbacks=[steps])
    assert steps.losses == []  # refused before the first step
    with pytest.warns(UserWarning, match=r"validation_size holds out 56 cells, but the run ends .* val_check_interval"):
        _run(corpus_dir, batch_size=64, validation_size=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # validated within the run: nothing to say
        _, result = _train(
            corpus_dir, batch_size=64, validation_size=0.1, val_check_interval=6, accumulate_grad_batches=1
        )
    assert "validation_loss" in result.trainer.callback_metrics


def test_continuing_a_module_refuses_other_settings_and_says_whose_medians_it_trains_on(corpus_dir, tmp_path):
    # probe (session 34): settings given with module= were dropped silently (d_model=64 trained the 32-wide module);
    # a corpus that computed its own medians replaced the model's in the saved model without a word
    _, first = _train(corpus_dir, checkpoint_dir=tmp_path / "ck", checkpoint_every_n_steps=3)
    with pytest.raises(ValueError, match=r"d_model=64 \(the module's: 32\) cannot apply"):
        _run(corpus_dir, module=first.module, d_model=64)
    with pytest.warns(UserWarning, match=r"gene medians computed from its own cells.*gene_medians=model.gene_medians_"):
        _run(corpus_dir, module=first.module)
    given = tmp_path / "given"
    corpus = TokenCorpus(corpus_dir)
    build_corpus(
        resource_path("celltypist_sample_559cells_counts.h5ad"), given, max_genes=64, shard_size=100,
        vocab=corpus.vocab, gene_medians=corpus.gene_medians,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _run(given, module=first.module, logger=False)
    # resuming from "last" is checked against the checkpoint's settings as a named file is (Lightning's list before)
    with pytest.raises(ValueError, match=r"last\.ckpt was written by a model of other settings"):
        _run(corpus_dir, checkpoint_dir=tmp_path / "ck", ckpt_path="last", d_model=64)


def test_continuing_a_loaded_module_trains_it_in_training_mode(corpus_dir):
    # user probe: GeneMambaModel.load leaves the module in eval mode and Lightning keeps it: pretrain(module=...) then
    # skipped the masking, encoded each batch twice and dropped gradient checkpointing, with the loss looking normal
    _, first = _train(corpus_dir)
    module = first.module.eval()  # as a loaded model's
    modes = []
    hook = module.encoder.register_forward_hook(lambda mod, args, out: modes.append(mod.training))
    try:
        _train(corpus_dir, module=module)
    finally:
        hook.remove()
    assert modes and modes[0] is True  # (validation passes, if any, come later in eval mode)


@pytest.mark.parametrize("gamma", [-0.1, float("nan"), "0.1"])
def test_pretrain_refuses_a_pathway_weight_that_is_no_weight(corpus_dir, gamma):
    # session 30: pretrain_from_corpus compared gamma > 0 unchecked (a negative weight trained against the pathways)
    with pytest.raises(ValueError, match=r"gamma \(the pathway loss's weight\) must be a finite number >= 0"):
        pretrain_from_corpus(corpus_dir, max_steps=1, gamma=gamma, **TINY)


def test_pretrain_with_the_pathway_loss_off_still_names_a_missing_gene_set_file(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"gene_sets='.*kegg_typo.gmt' is neither a shipped collection"):
        pretrain_from_corpus(corpus_dir, max_steps=1, gamma=0, gene_sets=tmp_path / "kegg_typo.gmt", **TINY)


def test_a_pathway_weight_in_plan_kwargs_is_checked_too(corpus_dir):
    # review (session 30): plan_kwargs={"gamma": ...} wins over gamma= and went on unchecked
    with pytest.raises(ValueError, match=r"gamma \(the pathway loss's weight\) must be a finite number >= 0, got -5.0"):
        pretrain_from_corpus(corpus_dir, max_steps=1, gamma=0.1, plan_kwargs={"gamma": -5.0}, **TINY)


@pytest.mark.parametrize(("resumed_every", "steps", "own"), [(None, 4, False), (3, 6, False), (3, 6, True)])
def test_a_resume_with_another_checkpoint_cadence_keeps_last_ckpt_the_latest(
    corpus_dir, tmp_path, resumed_every, steps, own
):
    # docs probe (session 32): a resume with another checkpoint_every_n_steps found no callback state under its key
    # (the key holds the cadence), forgot its last.ckpt and wrote last-v1.ckpt beside it; a later
    # ckpt_path=".../last.ckpt" then went back to the older step. With a ModelCheckpoint of the user's own in both
    # runs (its state of the same name present: review) the right state is still taken
    from lightning.pytorch.callbacks import ModelCheckpoint

    run = {"batch_size": 16, "accelerator": "cpu", "enable_progress_bar": False, "checkpoint_dir": tmp_path / "ck"}

    def users():
        return {"callbacks": [ModelCheckpoint(dirpath=tmp_path / "user", every_n_train_steps=1)]} if own else {}

    pretrain_from_corpus(corpus_dir, max_steps=2, checkpoint_every_n_steps=2, **run, **users(), **TINY)
    last = str(tmp_path / "ck" / "last.ckpt")
    pretrain_from_corpus(
        corpus_dir, max_steps=steps, checkpoint_every_n_steps=resumed_every, ckpt_path=last, **run, **users(), **TINY
    )
    assert not list((tmp_path / "ck").glob("last-v*.ckpt"))
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["global_step"] == steps


def test_a_small_corpus_is_not_warned_about_lightnings_logging_interval(corpus_dir):
    # docs probe (session 32): train() logs once per epoch on small data, pretrain_from_corpus kept Lightning's 50
    # steps and warned on every small corpus that the epoch was shorter than the logging interval
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*smaller than the logging interval")
        result = pretrain_from_corpus(
            corpus_dir, max_steps=3, batch_size=128, accelerator="cpu", enable_progress_bar=False, **TINY
        )
    assert result.trainer.log_every_n_steps == 5  # 559 cells, 128 a minibatch


def test_a_resume_from_a_runs_first_checkpoint_moves_last_ckpt_to_the_resumed_run(corpus_dir, tmp_path):
    # upgrade probe (session 32): the first save of a run recorded no last.ckpt; resumed from it in the same folder,
    # the run wrote last-v1.ckpt beside the abandoned run's last.ckpt, which ckpt_path=".../last.ckpt" then took
    ck = tmp_path / "ck"
    run = {"batch_size": 16, "accelerator": "cpu", "enable_progress_bar": False, "checkpoint_dir": ck}
    pretrain_from_corpus(corpus_dir, max_steps=4, checkpoint_every_n_steps=2, **run, **TINY)
    pretrain_from_corpus(
        corpus_dir, max_steps=6, checkpoint_every_n_steps=2, ckpt_path=str(ck / "step000000002.ckpt"), **run, **TINY
    )
    assert not list(ck.glob("last-v*.ckpt"))
    assert torch.load(ck / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (ck / "step000000004.ckpt").is_file()  # the abandoned run's step 4 is kept (the resumed one's is -v1)


def test_a_module_of_another_vocabulary_is_told_how_to_build_its_corpus(corpus_dir):
    # upgrade probe (session 32): an old model pre-trained further on a corpus rebuilt since (its vocabulary now holds
    # only expressed genes) was told only the two sizes
    from genemamba_scvi.module import GeneMambaModule

    module = GeneMambaModule(len(TokenCorpus(corpus_dir).vocab) + 7, mask_id=2, n_special=3, config=TINY_MODEL_CONFIG)
    with pytest.raises(ValueError, match=r"tokens, the corpus \d+: .*build_corpus\(files, out_dir, vocab='<model dir>"):
        pretrain_from_corpus(corpus_dir, module=module, max_steps=1, accelerator="cpu", enable_progress_bar=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": 0}, "max_steps must be a positive number"),
        ({"max_steps": 2.5}, "max_steps must be a positive number"),
        ({"max_steps": -1, "max_epochs": 0}, "max_epochs must be a positive number"),
        ({"max_steps": 1, "max_epochs": 0}, "max_epochs must be a positive number"),
        ({"max_steps": 1, "lr": -1.0}, r"^lr must be a positive number"),  # (it said "plan_kwargs lr")
    ],
)
def test_a_run_length_or_lr_that_trains_nothing_is_refused_by_its_name(corpus_dir, tmp_path, kwargs, message):
    # bad-input probe (session 33): max_steps=0 or max_epochs=0 ran no step and GeneMambaModel.pretrain saved the
    # random weights as a trained model (is_trained true, no "not trained" warning at embedding)
    with pytest.raises(ValueError, match=message):
        GeneMambaModel.pretrain(corpus_dir, tmp_path / "m", **{**TINY, **kwargs})
    assert not (tmp_path / "m").exists()


def test_resuming_over_another_length_says_the_schedule_is_rebuilt(corpus_dir, tmp_path, one_thread):
    # lab probe (session 34): a resume to a longer max_steps rebuilt the warm-up + cosine schedule over the new
    # length without a word (the learning rate jumps where the two schedules meet)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt, checkpoint_every_n_steps=2)
    saved = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["genemamba_lr_schedule"] == {"total": 6, "warmup": 1, "lr": 3e-3}
    with pytest.warns(UserWarning, match=r"planned over 6 optimiser steps; it is rebuilt over 9 \(warm-up 1\)"):
        _run(corpus_dir, batch_size=64, ckpt_path="last", checkpoint_dir=ckpt, max_steps=9)
    # another peak lr is not used at all (the restored optimiser state holds the first run's): said (cluster probe)
    ckpt3 = tmp_path / "ckpt3"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt3, checkpoint_every_n_steps=2)
    with pytest.warns(UserWarning, match=r"lr=0.01 is not used: a resumed run goes on .* peak learning rate is 0.003"):
        _run(corpus_dir, batch_size=64, ckpt_path="last", checkpoint_dir=ckpt3, lr=1e-2)
    # a "last" that is not there yet (a job's first submission, or a mistyped folder): said, and a fresh start
    with pytest.warns(UserWarning, match=r"no last.ckpt in .*nowhere yet: this run starts from step 0"):
        _run(corpus_dir, batch_size=64, ckpt_path="last", checkpoint_dir=tmp_path / "nowhere")
    ckpt2 = tmp_path / "ckpt2"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt2, checkpoint_every_n_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(corpus_dir, batch_size=64, ckpt_path="last", checkpoint_dir=ckpt2)  # as planned: nothing to say
    assert not [w for w in caught if "schedule" in str(w.message)]


def test_a_run_is_resumed_only_on_its_own_corpus(corpus_dir, tmp_path, one_thread):
    # lab probe (session 34): a resume on another corpus of the same number of cells went on silently, in that
    # corpus's order; a copy of the corpus (same tokens, another folder) is the same corpus
    import shutil

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt, checkpoint_every_n_steps=2)
    other = build_sample_corpus(tmp_path / "other", max_genes=48, shard_size=100)  # the same 559 cells, other tokens
    refused = r"cannot resume from this checkpoint on the corpus '.*other': it was written while training on another "
    with pytest.raises(ValueError, match=refused + r"corpus \('.*corpus'; its tokens differ"):
        _run(other, batch_size=64, ckpt_path="last", checkpoint_dir=ckpt)
    copy = shutil.copytree(corpus_dir, tmp_path / "copy")
    with warnings.catch_warnings(record=True) as caught:  # (nor Lightning's word on the folder's checkpoints)
        warnings.simplefilter("always")
        _run(copy, batch_size=64, ckpt_path="last", checkpoint_dir=ckpt, checkpoint_every_n_steps=2)
    assert [str(w.message) for w in caught] == []


def test_step_checkpoints_need_a_folder_and_a_resume_from_a_file_goes_on_writing_beside_it(corpus_dir, tmp_path):
    # cluster probe (session 35): checkpoint_every_n_steps without checkpoint_dir wrote nothing, silently; a resume
    # from a file without checkpoint_dir wrote nothing either (and Lightning asked for a callback to be added)
    with pytest.raises(ValueError, match=r"checkpoint_every_n_steps=2 needs checkpoint_dir"):
        _run(corpus_dir, batch_size=64, checkpoint_every_n_steps=2)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt, checkpoint_every_n_steps=2)
    _run(corpus_dir, batch_size=64, ckpt_path=ckpt / "step000000002.ckpt", checkpoint_every_n_steps=2)
    assert torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


def test_a_resume_on_a_corpus_of_another_vocabulary_names_the_corpus(corpus_dir, tmp_path):
    # cluster probe (session 35): it was refused as a model of "other settings (d_model, n_layers, ...)"
    import anndata as ad

    from genemamba_scvi.datasets import load_celltypist_sample

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus_dir, batch_size=64, callbacks=[_CtrlCAt(2)], checkpoint_dir=ckpt, checkpoint_every_n_steps=2)
    sample = load_celltypist_sample()
    half = ad.AnnData(sample.layers["counts"][:, : sample.n_vars // 2], var=sample.var.iloc[: sample.n_vars // 2])
    half.write_h5ad(tmp_path / "half.h5ad")
    from genemamba_scvi.data.corpus import build_corpus

    build_corpus(tmp_path / "half.h5ad", tmp_path / "other", max_genes=64, median_method="exact")
    with pytest.raises(ValueError, match=r"written while training on a corpus of \d+ vocabulary entries, and this "):
        _run(tmp_path / "other", batch_size=64, ckpt_path="last", checkpoint_dir=ckpt)
