"""The embedding loop of ``get_latent_representation`` and ``predict``.

Minibatches of a token loader go through the encoder into one output buffer. On a GPU the next minibatch is
tokenized in a background thread while the device computes the current one (:class:`Prefetched`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from genemamba_scvi._precision import inference_autocast
from genemamba_scvi.model._utils import _check_finite_embeddings, _save_kernel_cache

PREFETCH_ON_GPU = True  # the switch benchmarks/embed_paths.py turns off for its "api_plain" arm
_END = object()  # the producer's last item: the loader is exhausted


class _Raised:
    """An exception of the producer, handed to the consumer (an item can be any object, an exception too)."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


class Prefetched:
    """The items of ``iterable``, in order, produced ``depth`` ahead by a background thread.

    Tokenizing a minibatch is host work (~21 ms for 199 cells of top-2048 on the CI machine's CPU) that a plain loop
    does while the GPU waits: ~6-10% of ``get_latent_representation``'s time on an H100 (``embed_paths.py``: the
    API at 0.94x the module on pre-moved batches, session 27). Here the main thread waits for the device (torch
    releases the GIL in its device calls) while this thread reads and tokenizes the next cells. An exception of
    the producer is raised from ``__next__``; :meth:`close` (or leaving the ``with`` block, an error included)
    stops the thread.
    """

    def __init__(self, iterable: Iterable[Any], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        # iter() here, in the caller's thread: a DataLoader draws its seed there, from the global generator unless
        # it has its own, as a plain loop would
        args = (iter(iterable),)
        self._thread = threading.Thread(target=self._produce, args=args, name="genemamba-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # raised in the consumer's thread, by __next__
            self._put(_Raised(err))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _Raised):
            self._done = True
            self._thread.join()
            if item is _END:
                raise StopIteration
            raise item.err
        return item

    def close(self) -> None:
        """Stop the producer (it finishes the item it is making) and wait for it."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def embed_cells(
    module: torch.nn.Module, loader, device: torch.device, precision: str, show: bool, prefetch: bool | None = None
) -> torch.Tensor:
    """Float32 CPU embeddings ``(cells, d_model)`` of every cell of ``loader``, in its order.

    One output buffer filled in place: a list of per-batch tensors fragmented glibc's heap on a CPU, whose resident
    memory then grew with the cells (~5 GB for 45k cells of a tiny model) though nothing held it
    (``benchmarks/embed_memory.py``). Non-finite embeddings are refused, naming the cause. On a GPU the loader runs
    in a background thread (:class:`Prefetched`); on a CPU it does not (the encoder's threads use every core).
    ``prefetch`` overrides that choice.
    """
    n_cells = len(loader.indices)
    z = torch.empty(n_cells, module.encoder.d_model)
    done = 0
    if prefetch is None:
        prefetch = device.type == "cuda" and PREFETCH_ON_GPU
    batches = Prefetched(loader) if prefetch else iter(loader)
    try:
        with tqdm(total=n_cells, desc="Embedding cells", unit="cells", disable=not show, leave=False) as bar:
            for tensors in batches:
                with inference_autocast(precision, device):
                    batch = module.inference(**module._get_inference_input(tensors))["z"]
                z[done : done + batch.shape[0]] = batch
                done += batch.shape[0]
                bar.update(batch.shape[0])
    finally:
        if isinstance(batches, Prefetched):
            batches.close()
    if device.type == "cuda":
        _save_kernel_cache()
    _check_finite_embeddings(z, module)
    return z
