"""The encoder's fused training step run two ways, for tests that compare a switch's settings."""

from __future__ import annotations

import contextlib

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def fused_encoder_two_ways(
    monkeypatch, switch, seed: int, chunk_size: int = 16, force: bool = False, autocast: bool = False
):
    """``[(output, {name: gradient}), ...]`` of the encoder's fused training step (2 layers, d_model 32, ragged cells)
    with ``switch(encoder, False)`` then ``switch(encoder, True)``; the fused kernels checked not given up. On a CPU
    (or with ``force``, with the torch backend's mixers) the fused path is forced on under Triton's interpreter;
    ``autocast``: the forward under bf16 autocast."""
    from genemamba_scvi.nn import GeneMambaEncoder, bimamba
    from genemamba_scvi.nn import encoder as encoder_mod

    if force or not CUDA:
        real = encoder_mod.load_mamba_ssm_ops
        monkeypatch.setattr(encoder_mod, "load_mamba_ssm_ops", lambda: {**real(), "rms_norm_fn": object()})
        monkeypatch.setattr(bimamba, "fused_available", lambda device: True)
    monkeypatch.setattr(bimamba, "_FUSED_FAILED", {})
    torch.manual_seed(seed)
    backend = "auto" if CUDA and not force else "torch"
    enc = GeneMambaEncoder(200, backend=backend, d_model=32, n_layers=2, chunk_size=chunk_size, d_state=16, headdim=16)
    enc = enc.to(DEVICE)
    enc.fused_add_norm = True
    lengths = [15, 7, 9, 1, 30]
    cu = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)]).to(DEVICE)
    tokens = torch.randint(3, 200, (sum(lengths),), device=DEVICE)
    g = torch.randn(sum(lengths), 32, device=DEVICE)
    outs = []
    for on in (False, True):
        switch(enc, on)
        enc.zero_grad(set_to_none=True)
        amp = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            h = enc.forward_packed(tokens, cu)
        (h.float() * g).sum().backward()
        outs.append((h.detach(), {n: q.grad.clone() for n, q in enc.named_parameters() if q.grad is not None}))
    assert bimamba._FUSED_FAILED == {}
    return outs
