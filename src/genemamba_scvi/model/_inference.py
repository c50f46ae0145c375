"""The embedding loop of ``get_latent_representation`` and ``predict``.

Minibatches of a token loader go through the encoder into one output buffer. On a GPU the next minibatch is
tokenized in a background thread while the device computes the current one
(:class:`~genemamba_scvi._prefetch.Prefetched`).
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

from genemamba_scvi import _prefetch
from genemamba_scvi._precision import inference_autocast
from genemamba_scvi._prefetch import Prefetched
from genemamba_scvi.model._utils import _check_finite_embeddings, _save_kernel_cache


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
        prefetch = device.type == "cuda" and _prefetch.PREFETCH_ON_GPU
    with (
        Prefetched(loader) if prefetch else contextlib.nullcontext(loader) as batches,
        tqdm(total=n_cells, desc="Embedding cells", unit="cells", disable=not show, leave=False) as bar,
    ):
        for tensors in batches:
            with inference_autocast(precision, device):
                batch = module.inference(**module._get_inference_input(tensors))["z"]
            z[done : done + batch.shape[0]] = batch
            done += batch.shape[0]
            bar.update(batch.shape[0])
    if device.type == "cuda":
        _save_kernel_cache()
    _check_finite_embeddings(z, module)
    return z
