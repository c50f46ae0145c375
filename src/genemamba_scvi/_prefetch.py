"""Minibatches made ahead in a background thread, while the GPU computes (embedding on a GPU; training when asked).

Tokenizing a minibatch is host work (~21 ms for 199 cells of top-2048 on the CI machine's CPU) that a plain loop does
while the GPU waits: ~7% of ``get_latent_representation``'s time on an H100 (``benchmarks/embed_paths.py``, session
31: 1,087-1,092 cells/s with the thread, 1,014-1,021 without). Torch releases the GIL in its device calls, so the
main thread's wait for the device lets this thread read and tokenize the next cells. Training (48 cells a step) showed
no gain on an H100 (``api_speed.py --compare prefetch``: 311-316k real tokens/s with the thread, 317k without, the
cold first run aside; ``benchmarks/results/prefetch_train_h100_s31.json``), so there it is off unless asked for.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

#: On a GPU, embedding reads its minibatches through :class:`Prefetched`; embed_paths.py's "api_plain" arm turns it
#: off for its baseline.
PREFETCH_ON_GPU = True
_END = object()  # the producer's last item: the loader is exhausted


class _Raised:
    """An exception of the producer, handed to the consumer (an item can be any object, an exception too)."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


class Prefetched:
    """The items of ``iterable``, in order, produced ``depth`` ahead by a background thread.

    An exception of the producer is raised from ``__next__``; :meth:`close` (or leaving the ``with`` block, an error
    included) stops the thread.
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


def prefetched(items: Iterable[Any]) -> Iterator[Any]:
    """The items of ``items``, the first made in the caller's thread and the rest ahead by :class:`Prefetched`.

    A generator (for a DataLoader's ``__iter__``): a shuffling sampler draws its seed from torch's global generator
    when the first minibatch is made, here in the caller's thread as in a plain loop, so a seeded run draws the same
    cells; the thread stops when the generator ends or is discarded (a run stopped by ``max_steps``).
    """
    it = iter(items)
    try:
        first = next(it)
    except StopIteration:
        return
    yield first
    with Prefetched(it) as rest:
        yield from rest


def check_background(background: Any, num_workers: Any) -> None:
    """Refuse ``background`` together with loader workers: two threads would then read one worker iterator."""
    if background and num_workers:
        raise ValueError(
            "background=True makes minibatches in a thread, num_workers in worker processes: pass one of them"
        )
