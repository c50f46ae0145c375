"""GeneMambaModel training failures: NaN loss, killed runs resumed (model/_training.py, train.py).

From the bad-input matrix (issue 7): each test asserts the error type and that the message names the problem.
Real data: a slice of the shipped 559-cell count sample (``sample48`` in conftest)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch

from conftest import TINY_MODEL as TINY
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.train import NonFiniteLossError

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 16, "train_size": 0.75}


# ----------------------------------------------------------------------------- training
def test_nan_loss_stops_with_step_and_keeps_weights_finite(sample48, monkeypatch):
    scvi.settings.seed = 0
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    original = type(model.module).loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            return type(out)(loss=out.loss * float("nan"), n_obs_minibatch=out.n_obs_minibatch)
        return out

    monkeypatch.setattr(type(model.module), "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 1"):
        model.train(max_epochs=2, **TRAIN)
    assert all(torch.isfinite(p).all() for p in model.module.parameters())


def test_ctrl_c_in_train_is_a_keyboard_interrupt_and_keeps_what_was_trained(sample48):
    # user probe: Lightning turned Ctrl-C into SystemExit(1) (a notebook's `except KeyboardInterrupt` never saw it),
    # left Ctrl-C ignored for the rest of the session, the model "not trained" (its embeddings said to come from
    # random weights) and the next train() replaced the interrupted run's history
    import signal

    from lightning.pytorch.callbacks import Callback

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    scvi.settings.seed = 0
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"training interrupted after 6 steps \(epoch 1\)"):
        model.train(max_epochs=5, callbacks=[CtrlC()], **TRAIN)
    assert signal.getsignal(signal.SIGINT) is before
    assert model.is_trained and model.train_indices is not None and not model.module.training
    assert list(model.history["train_loss"].index) == [0]  # (epoch 1 was stopped before its loss was logged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "randomly initialised weights" warning
        model.get_latent_representation()
    # the unfinished epoch 1's validation rows are dropped too, so every column counts the same epochs
    assert all(list(frame.index) == [0] for frame in model.history.values())
    model.train(max_epochs=1, **TRAIN)
    assert list(model.history["train_loss"].index) == [0, 1] == list(model.history["validation_loss"].index)


def test_an_error_after_some_steps_keeps_them_as_ctrl_c_does(sample48):
    # user probe: a full disk at a checkpoint (any error but Ctrl-C) left trained weights in a model that called
    # itself untrained (its embeddings "from randomly initialised weights"), saved as is_trained false
    from lightning.pytorch.callbacks import Callback

    class DiskFull(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise OSError(28, "No space left on device")

    scvi.settings.seed = 0
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with pytest.raises(OSError, match="No space left") as err:
        model.train(max_epochs=5, callbacks=[DiskFull()], **TRAIN)
    assert any("training stopped after 6 steps (epoch 1)" in note for note in err.value.__notes__)
    assert model.is_trained and model.train_indices is not None
    assert all(list(frame.index) == [0] for frame in model.history.values())  # the unfinished epoch dropped


def test_an_error_before_any_step_leaves_the_model_untrained(sample48):
    from lightning.pytorch.callbacks import Callback

    class Broken(Callback):
        def on_train_start(self, trainer, pl_module):
            raise RuntimeError("broken callback")

    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    with pytest.raises(RuntimeError, match="broken callback") as err:
        model.train(max_epochs=2, callbacks=[Broken()], **TRAIN)
    assert not getattr(err.value, "__notes__", None) and not model.is_trained


def test_a_checkpoint_dir_that_cannot_take_a_file_is_refused_before_training(sample48, tmp_path, monkeypatch):
    # user probe: Lightning drops the PermissionError of each checkpoint: a read-only checkpoint_dir trained with none
    import tempfile

    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"checkpoint_dir=.*a_file.* is a file"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path / "a_file", **TRAIN)
    (tmp_path / "ro").mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # (a read-only folder: root here writes into any)
    with pytest.raises(PermissionError, match=r"checkpoint_dir=.*ro.* cannot take a file \(Permission denied\)"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path / "ro", **TRAIN)
    assert not model.is_trained
    from genemamba_scvi.pretrain import pretrain_from_corpus

    with pytest.raises(PermissionError, match="cannot take a file"):  # checked before the corpus is opened
        pretrain_from_corpus(tmp_path / "no_corpus", checkpoint_dir=tmp_path / "ro")
    monkeypatch.undo()
    # a folder still to be made where none can be (HPC probe: it failed after the first epoch), and a save_dir whose
    # folder takes no new folders (pretrain trained to the end, then failed on a hidden path: the run was lost)
    with pytest.raises(PermissionError, match=r"checkpoint_dir='/proc/ck' cannot be made: /proc takes no new folders"):
        model.train(max_epochs=1, checkpoint_dir="/proc/ck", **TRAIN)
    with pytest.raises(ValueError, match=r"cannot save to /proc/m: /proc takes no new folders"):
        GeneMambaModel.pretrain(tmp_path / "no_corpus", "/proc/m")
    with pytest.raises(ValueError, match=r"cannot save to /proc/m: /proc takes no new folders"):
        model.save("/proc/m")
    assert not model.is_trained


def test_the_memory_check_takes_the_job_limit_and_ulimit_into_account(tmp_path, monkeypatch):
    # user probe: under `ulimit -v` (and SLURM --mem / docker --memory) the check read only MemAvailable, so a
    # step that could not fit trained into the allocator's raw "can't allocate memory"
    import subprocess
    import sys

    from genemamba_scvi.model import _run_checks
    from genemamba_scvi.nn.config import GeneMambaConfig

    if _run_checks.available_memory() is None:
        pytest.skip("the estimate reads /proc (Linux)")
    (tmp_path / "max").write_text(str(3 * 2**30))
    (tmp_path / "current").write_text(str(2**30 + 2**29))
    (tmp_path / "stat").write_text(f"anon 1000\ninactive_file {2**29}\nactive_file 5\n")  # cache: given back
    files = ((str(tmp_path / "max"), str(tmp_path / "current"), str(tmp_path / "stat")),)
    monkeypatch.setattr(_run_checks, "_CGROUP_FILES", files)
    free, where = _run_checks.available_memory()
    assert free == 2 * 2**30 and "cgroup" in where
    with pytest.warns(UserWarning, match=r"and 2 GB are left under this job's memory limit .*batch_size="):
        _run_checks.warn_if_cpu_memory_short(GeneMambaConfig(n_layers=4, d_model=256), 64, 2048, False)
    (tmp_path / "max").write_text("max")  # cgroup v2 without a limit
    assert "cgroup" not in _run_checks.available_memory()[1]
    code = "from genemamba_scvi.model._run_checks import available_memory as a; print(a()[1])"
    out = subprocess.run(["bash", "-c", f"ulimit -v 6000000; {sys.executable} -c '{code}'"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "ulimit -v" in out


def test_kill_and_resume_from_last_checkpoint(sample48, tmp_path):
    from lightning.pytorch.callbacks import Callback

    class Killer(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise RuntimeError("killed (simulated)")

    scvi.settings.seed = 0
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        model.train(max_epochs=3, checkpoint_dir=ckpt_dir, checkpoint_every_n_steps=1, callbacks=[Killer()], **TRAIN)
    last = ckpt_dir / "last.ckpt"
    assert last.exists()
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step == 2  # the kill came at the end of step 3, before that step's checkpoint

    class Counter(Callback):
        steps = 0

        def on_train_batch_end(self, *args):
            Counter.steps += 1

    resumed = GeneMambaModel(adata, **TINY)
    resumed.train(
        max_epochs=3,
        checkpoint_dir=ckpt_dir,
        checkpoint_every_n_steps=1,
        ckpt_path=str(last),
        callbacks=[Counter()],
        **TRAIN,
    )
    final = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 9  # 3 epochs x 3 batches in total
    assert Counter.steps == 9 - saved_step  # continued from the checkpoint, not restarted
    assert Path(ckpt_dir / "last.ckpt").exists()
    assert np.isfinite(resumed.get_latent_representation()).all()
    # resumed as the docstring says, ckpt_path alone: checkpoints go on in its folder (the resumed run wrote none,
    # and Lightning asked for a private callback to be added), and nothing is said about the folder being in use;
    # trained on to a fourth epoch, the schedule planned over 9 steps is rebuilt over 12, and that is said (probe)
    again = GeneMambaModel(adata, **TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.train(max_epochs=4, checkpoint_every_n_steps=1, ckpt_path=str(last), **TRAIN)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "schedule (warm-up 1 steps, then cosine decay) was planned over 9" in said[0], said
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 12


def test_a_cpu_step_too_large_for_the_memory_is_warned_about_before_training():
    # user probe: GeneMambaModel(adata).train() on a 23 GB laptop was killed by the system after one step (22.8 GB)
    from genemamba_scvi.model._run_checks import warn_if_cpu_memory_short
    from genemamba_scvi.nn.config import GeneMambaConfig

    if not Path("/proc/meminfo").exists():
        pytest.skip("the estimate reads /proc/meminfo (Linux)")
    published = GeneMambaConfig()  # 24 layers of width 512
    with pytest.warns(UserWarning, match=r"a CPU training step of 32 cells .* needs about \d+ GB.*batch_size="):
        warn_if_cpu_memory_short(published, 32, 2048, gradient_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_cpu_memory_short(GeneMambaConfig(n_layers=2, d_model=32), 32, 256, gradient_checkpointing=False)


@pytest.mark.parametrize(
    ("method", "own"),
    [
        ("train", {"objective", "gene_sets", "gamma"}),
        ("train_classifier", {"labels_key", "freeze_encoder", "hidden", "dropout", "class_weight"}),
    ],
)
def test_every_training_argument_reaches_the_run_or_is_the_methods_own(method, own):
    """``_run_args(locals())`` passes on the arguments it knows by name (``_RUN_TRAINING_ARGS``, ``_RUNNER_ARGS``):
    a new argument of train / train_classifier in neither set, nor used by the method itself (``own`` here), would
    be dropped without a word. Add it to one of them (or to ``own`` where the method uses it)."""
    import inspect

    from genemamba_scvi.model._training import _RUN_TRAINING_ARGS, _RUNNER_ARGS, GeneMambaTrainingMixin

    params = set(inspect.signature(getattr(GeneMambaTrainingMixin, method)).parameters) - {"self", "trainer_kwargs"}
    assert params - _RUN_TRAINING_ARGS - _RUNNER_ARGS == own


def test_a_moved_checkpoint_folder_resumes_into_its_own_last_ckpt(sample48, tmp_path):
    # user probe: after moving a project, a resume wrote last-v1.ckpt beside a stale last.ckpt (Lightning compares
    # the folder recorded in the checkpoint), so a later ckpt_path=".../last.ckpt" silently went back in time
    import shutil

    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    scvi.settings.seed = 0
    GeneMambaModel(adata, **TINY).train(max_epochs=2, checkpoint_dir=tmp_path / "a" / "ck", **TRAIN)
    shutil.move(tmp_path / "a", tmp_path / "b")
    ck = tmp_path / "b" / "ck"
    resumed = GeneMambaModel(adata, **TINY)
    resumed.train(max_epochs=3, checkpoint_dir=ck, ckpt_path=str(ck / "last.ckpt"), **TRAIN)
    assert not list(ck.glob("last-v*.ckpt"))
    assert torch.load(ck / "last.ckpt", weights_only=False)["epoch"] == 2  # the resumed run's last epoch (0-based)


def test_the_cpu_memory_estimate_counts_genes_a_cell_can_have_and_skips_a_frozen_encoder(sample48, monkeypatch):
    # user probe: the warning fired at ~3x the real need on 765-gene data with max_genes 2048 (a cell holds at most
    # its genes), and at ~12x for a frozen encoder (no activations kept for a backward pass)
    from genemamba_scvi.model import _training

    adata = sample48.copy()
    adata.obs["label"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="label")
    model = GeneMambaModel(adata, **{**TINY, "max_genes": adata.n_vars + 500})
    seen = []

    class Seen(Exception):
        pass

    def record(config, batch_size, genes, gradient_checkpointing):
        seen.append(genes)
        raise Seen

    monkeypatch.setattr(_training, "warn_if_cpu_memory_short", record)
    with pytest.raises(Seen):
        model.train(max_epochs=1, **TRAIN)
    assert seen == [adata.n_vars + 1]
    model.train_classifier(max_epochs=1, freeze_encoder=True, **TRAIN)  # not estimated: the encoder is frozen
    assert seen == [adata.n_vars + 1]


def test_a_new_run_into_a_folder_of_checkpoints_is_refused_and_resuming_there_works(sample48, tmp_path):
    # corpus probe (session 31): a new run wrote beside an earlier run's checkpoints (last-v1.ckpt), so the documented
    # ckpt_path=".../last.ckpt" resumed the earlier run
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    model = GeneMambaModel(adata, **TINY)
    ckpt = tmp_path / "ck"
    model.train(max_epochs=1, checkpoint_dir=ckpt, **TRAIN)
    before = sorted(p.name for p in ckpt.iterdir())
    told = r"holds checkpoints of an earlier run \(.*last\.ckpt.*give this run a new checkpoint_dir"
    with pytest.raises(FileExistsError, match=told):
        GeneMambaModel(adata, **TINY).train(max_epochs=1, checkpoint_dir=ckpt, **TRAIN)
    assert sorted(p.name for p in ckpt.iterdir()) == before
    GeneMambaModel(adata, **TINY).train(max_epochs=2, checkpoint_dir=ckpt, ckpt_path=ckpt / "last.ckpt", **TRAIN)
    (tmp_path / "empty").mkdir()
    GeneMambaModel(adata, **TINY).train(max_epochs=1, checkpoint_dir=tmp_path / "empty", **TRAIN)


def test_train_runs_record_what_each_run_was_asked_and_did_and_survive_save_and_load(sample48, tmp_path):
    # repro probe (session 31): a saved model kept its losses (history) but not its training arguments (epochs,
    # learning rate, batch size, gene sets, seed), so a methods section could not be written from the files
    import json

    from lightning.pytorch.callbacks import Callback

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise KeyboardInterrupt

    adata = sample48.copy()
    adata.obs["label"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    GeneMambaModel.setup_anndata(adata, layer="counts", labels_key="label")
    scvi.settings.seed = 3
    model = GeneMambaModel(adata, **TINY)
    assert model.train_runs == []
    genes = list(adata.var_names[np.asarray(adata.layers["counts"].sum(axis=0)).ravel() > 0][:12])
    model.train(max_epochs=2, lr=2e-3, gene_sets={"set1": genes[:6], "set2": genes[6:]}, **TRAIN)
    model.train_classifier(max_epochs=1, freeze_encoder=True, hidden=8, **TRAIN)
    # lab probe (session 34): the pathway loss of the first run was left out of this one without a word
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=3, callbacks=[CtrlC()], **TRAIN)
    said = [str(w.message) for w in caught if "this run has no gene_sets" in str(w.message)]
    assert len(said) == 1 and "last training run (train, " in said[0], said
    assert "(gene_sets='<mapping of 2 gene sets>', gamma=0.1)" in said[0]
    with pytest.raises(KeyboardInterrupt):  # a new head on the frozen encoder, stopped: the earlier head is back,
        model.train_classifier(max_epochs=2, freeze_encoder=True, hidden=4, callbacks=[CtrlC()], **TRAIN)
    assert model.classifier_hidden_ == 8  # ... and the run that left nothing is not recorded (review)
    runs = model.train_runs
    assert [r["method"] for r in runs] == ["train", "train_classifier", "train"]
    assert [r["status"] for r in runs] == ["completed", "completed", "interrupted"]
    first = runs[0]
    assert first["args"]["max_epochs"] == 2 and first["args"]["lr"] == 2e-3 and first["args"]["batch_size"] == 16
    assert first["args"]["gamma"] == 0.1  # the weight used (None was given)
    assert first["args"]["gene_sets"] == "<mapping of 2 gene sets>"  # described, not copied
    assert first["args"]["accelerator"] == "cpu" and first["args"]["train_size"] == 0.75
    assert first["scvi_settings_seed"] == 3 and first["epochs_run"] == 2 and first["steps"] == 2 * 3
    assert first["n_cells"] == {"train": 36, "validation": 12} and first["precision"] == "32-true"
    assert runs[1]["args"]["freeze_encoder"] is True and runs[1]["args"]["hidden"] == 8
    assert runs[2]["args"]["callbacks"] == ["<CtrlC>"] and runs[2]["steps"] == 3
    assert runs[2]["args"]["gamma"] == 0.0  # no gene sets: no pathway loss, whatever the default weight
    assert len({r["id"] for r in runs}) == 3
    runs[0]["args"]["lr"] = 1.0  # a copy: the model's record is not changed through it
    assert model.train_runs[0]["args"]["lr"] == 2e-3
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "extra.json").read_text())["train_runs"]
    assert saved == model.train_runs
    assert GeneMambaModel.load(tmp_path / "m", adata=adata).train_runs == model.train_runs


def test_a_run_record_describes_what_json_cannot_hold():
    # review (session 32): GO-BP with one small set was stored gene by gene (315 kB a record), NaN as bare NaN
    import json

    from genemamba_scvi.model._runs import start_record

    sets = {f"s{i}": ["A", "B", "C", "D", "E"] for i in range(5000)} | {"small": ["A", "B"]}
    record = start_record(
        "train", {"self": None, "gene_sets": sets, "plan_kwargs": {"betas": (0.9, 0.95), "eps": float("nan")},
                  "trainer_kwargs": {"callbacks": [object()]}, "batch_size": np.int64(16)},
    )  # fmt: skip
    args = json.loads(json.dumps(record, allow_nan=False))["args"]
    assert args["gene_sets"] == "<mapping of 5001 gene sets>" and args["batch_size"] == 16
    assert args["plan_kwargs"] == {"betas": [0.9, 0.95], "eps": "nan"} and args["callbacks"] == ["<object>"]


def test_train_after_a_pathway_pretraining_says_the_pathway_loss_is_left_out():
    # a model from GeneMambaModel.pretrain(gene_sets="kegg") records gamma only when given (None: 0.1)
    from genemamba_scvi.model._run_checks import warn_if_pathway_loss_dropped

    runs = [{"method": "pretrain", "started_utc": "t0", "args": {"corpus_dir": "c", "gene_sets": "kegg"}}]
    with pytest.warns(UserWarning, match=r"\(pretrain, t0\) had the pathway loss \(gene_sets='kegg', gamma=0.1\)"):
        warn_if_pathway_loss_dropped(runs, None, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_pathway_loss_dropped(runs, None, 0, None)  # turned off on purpose
        warn_if_pathway_loss_dropped(runs, None, None, {"gamma": 0.0})
        warn_if_pathway_loss_dropped(runs, "kegg", None, None)  # kept
        warn_if_pathway_loss_dropped([{**runs[0], "args": {"gene_sets": "kegg", "gamma": 0.0}}], None, None, None)
        warn_if_pathway_loss_dropped([*runs, {"method": "train", "args": {"gene_sets": None}}], None, None, None)
