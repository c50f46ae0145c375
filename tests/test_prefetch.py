"""The background tokenization of the GPU embedding loop (``model/_inference.py``), checked on a CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from genemamba_scvi._prefetch import Prefetched
from genemamba_scvi.model._inference import embed_cells


def test_prefetched_keeps_order_and_runs_ahead_in_another_thread():
    seen: list[str] = []

    def items():
        for i in range(7):
            seen.append(threading.current_thread().name)
            yield i

    with Prefetched(items(), depth=2) as batches:
        first = next(batches)
        time.sleep(0.2)  # the producer fills the queue meanwhile
        assert len(seen) >= 3  # the first item, two queued, one waiting
        out = [first, *batches]
    assert out == list(range(7))
    assert set(seen) == {"genemamba-prefetch"}
    with pytest.raises(StopIteration):
        next(batches)


def test_prefetched_raises_the_producers_error_in_the_consumer():
    def items():
        yield {"a": 1}
        raise ValueError("cell 3 holds NaN")

    batches = Prefetched(items())
    assert next(batches) == {"a": 1}
    with pytest.raises(ValueError, match="cell 3 holds NaN"):
        next(batches)
    batches.close()


def test_closing_early_stops_the_producer():
    made = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    batches = Prefetched(items(), depth=2)
    next(batches)
    batches.close()
    assert not batches._thread.is_alive()
    n = len(made)
    time.sleep(0.1)
    assert len(made) == n < 10
    with pytest.raises(StopIteration):
        next(batches)


def test_prefetched_embedding_equals_the_plain_loop(sample48_model):
    model, adata = sample48_model
    module = model.module.eval()
    cpu = torch.device("cpu")
    with torch.inference_mode():
        plain = embed_cells(module, model._token_loader(adata, None, 7), cpu, "32-true", False, prefetch=False)
        ahead = embed_cells(module, model._token_loader(adata, None, 7), cpu, "32-true", False, prefetch=True)
    assert torch.equal(plain, ahead)
    assert np.allclose(ahead.numpy(), model.get_latent_representation(adata, batch_size=7), atol=1e-6)


def test_an_error_while_embedding_stops_the_producer(sample48_model, monkeypatch):
    model, adata = sample48_model
    module = model.module.eval()
    before = {t for t in threading.enumerate() if t.name == "genemamba-prefetch"}

    def fail(**kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(module, "inference", fail)
    with pytest.raises(RuntimeError, match="device lost"):
        embed_cells(module, model._token_loader(adata, None, 4), torch.device("cpu"), "32-true", False, prefetch=True)
    alive = {t for t in threading.enumerate() if t.name == "genemamba-prefetch"} - before
    assert not alive


def test_the_iterator_is_made_in_the_callers_thread():
    # a DataLoader draws its base seed in iter(): from the global generator unless it has its own
    made_in = []

    class Cells:
        def __iter__(self):
            made_in.append(threading.current_thread().name)
            return iter([1, 2])

    with Prefetched(Cells()) as batches:
        assert list(batches) == [1, 2]
    assert made_in == [threading.current_thread().name]


def _loader(model, adata, background, shuffle=False):
    from genemamba_scvi.dataloader import TokenDataLoader

    tokenizer = model._tokenizer_for(adata, warn_unknown=False)
    return TokenDataLoader(model.adata_manager, tokenizer, batch_size=5, shuffle=shuffle, background=background)


def test_a_background_loader_gives_the_same_minibatches_for_the_same_seed(sample48_model):
    model, adata = sample48_model
    runs = {}
    for background in (False, True):
        torch.manual_seed(3)
        runs[background] = [
            (b[REGISTRY_KEYS.INDICES_KEY], b["tokens"]) for b in _loader(model, adata, background, shuffle=True)
        ]
        runs[background, "next draw"] = torch.rand(1)  # the global generator moved as much
    assert len(runs[True]) == len(runs[False]) == 10
    for (i_bg, t_bg), (i, t) in zip(runs[True], runs[False], strict=True):
        assert torch.equal(i_bg, i) and torch.equal(t_bg, t)
    assert torch.equal(runs[True, "next draw"], runs[False, "next draw"])
    assert not torch.equal(runs[True][0][0], torch.arange(5))  # shuffled


def test_a_background_loader_left_early_stops_its_thread(sample48_model):
    import gc

    model, adata = sample48_model
    before = {t for t in threading.enumerate() if t.name == "genemamba-prefetch"}
    batches = iter(_loader(model, adata, True))
    next(batches), next(batches)  # the second comes from the thread
    assert {t for t in threading.enumerate() if t.name == "genemamba-prefetch"} - before
    del batches  # as a run stopped by max_steps drops its iterator
    gc.collect()
    assert not {t for t in threading.enumerate() if t.name == "genemamba-prefetch"} - before


def test_training_with_a_background_loader_trains_the_same_and_leaves_no_thread(sample48):
    import lightning.pytorch as pl
    import scvi

    from conftest import TINY_MODEL
    from genemamba_scvi import GeneMambaModel

    class Threads(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            alive.append(any(t.name == "genemamba-prefetch" for t in threading.enumerate()))

    weights = {}
    for background in (False, True):
        alive: list[bool] = []
        adata = sample48.copy()
        GeneMambaModel.setup_anndata(adata, layer="counts")
        scvi.settings.seed = 0
        model = GeneMambaModel(adata, **TINY_MODEL)
        model.train(max_epochs=2, max_steps=5, batch_size=8, enable_progress_bar=False,
                    datasplitter_kwargs={"background": background}, callbacks=[Threads()])  # fmt: skip
        # minibatch 0 of an epoch is made in the caller's thread; at step 1 four are still to come, two fit the queue
        assert alive[:2] == [False, background]
        weights[background] = {k: v.clone() for k, v in model.module.state_dict().items()}
        assert not any(t.name == "genemamba-prefetch" for t in threading.enumerate())  # stopped by max_steps
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[False])  # the same 5 steps
    with pytest.raises(ValueError, match="background"):
        model.train(max_steps=1, datasplitter_kwargs={"background": "yes"})


def test_a_new_iteration_stops_the_thread_of_one_left_early_and_workers_are_refused(sample48_model):
    # review (session 31): an iteration left early (limit_train_batches) kept its thread reading beside the next one
    model, adata = sample48_model
    loader = _loader(model, adata, True)
    first = iter(loader)
    next(first), next(first)
    assert sum(t.name == "genemamba-prefetch" for t in threading.enumerate()) == 1
    second = iter(loader)  # (the first still referenced here)
    assert not any(t.name == "genemamba-prefetch" for t in threading.enumerate())
    assert next(second)[REGISTRY_KEYS.INDICES_KEY].tolist() == list(range(5))
    with pytest.raises(ValueError, match="num_workers in worker processes"):
        model.train(max_steps=1, datasplitter_kwargs={"background": True, "num_workers": 1})
    with pytest.raises(ValueError, match="num_workers in worker processes"):
        _loader(model, adata, True).__class__(model.adata_manager, loader.tokenizer, background=True, num_workers=1)
