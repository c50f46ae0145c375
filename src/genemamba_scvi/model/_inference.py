"""The embedding loop of ``get_latent_representation`` and ``predict``.

Minibatches of a token loader go through the encoder into one output buffer.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from genemamba_scvi._precision import inference_autocast
from genemamba_scvi.model._utils import _check_finite_embeddings, _save_kernel_cache


def embed_cells(module: torch.nn.Module, loader, device: torch.device, precision: str, show: bool) -> torch.Tensor:
    """Float32 CPU embeddings ``(cells, d_model)`` of every cell of ``loader``, in its order.

    One output buffer filled in place: a list of per-batch tensors fragmented glibc's heap on a CPU, whose resident
    memory then grew with the cells (~5 GB for 45k cells of a tiny model) though nothing held it
    (``benchmarks/embed_memory.py``). Non-finite embeddings are refused, naming the cause.
    """
    n_cells = len(loader.indices)
    z = torch.empty(n_cells, module.encoder.d_model)
    done = 0
    with tqdm(total=n_cells, desc="Embedding cells", unit="cells", disable=not show, leave=False) as bar:
        for tensors in loader:
            with inference_autocast(precision, device):
                batch = module.inference(**module._get_inference_input(tensors))["z"]
            z[done : done + batch.shape[0]] = batch
            done += batch.shape[0]
            bar.update(batch.shape[0])
    if device.type == "cuda":
        _save_kernel_cache()
    _check_finite_embeddings(z, module)
    return z
