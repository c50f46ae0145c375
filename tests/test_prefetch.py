"""The background tokenization of the GPU embedding loop (``model/_inference.py``), checked on a CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from genemamba_scvi.model._inference import Prefetched, embed_cells


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
