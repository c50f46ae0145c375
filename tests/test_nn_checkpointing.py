"""Gradient checkpointing of the encoder: same outputs and gradients, fewer activations kept for backward."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIG, settings
from genemamba_scvi.nn import GeneMambaEncoder

TINY = settings(TINY_CONFIG.replace(n_layers=3))
LENGTHS = [9, 4, 40, 1, 17, 33]
L = 40


def _batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 60, (len(LENGTHS), L), generator=g)
    lengths = torch.tensor(LENGTHS)
    tokens[torch.arange(L)[None] >= lengths[:, None]] = 0
    return tokens, lengths


def _forward_saved_bytes(enc, tokens, lengths, packed) -> tuple[torch.Tensor, int]:
    """The encoder's output and the bytes of the tensors autograd keeps for its backward pass."""
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()  # views share a storage: count it once
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = enc(tokens, lengths, packed=packed)
    return h, sum(storages.values())


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cfg", [dict(), dict(block="official", shared_merge=True), dict(bidirectional=False)])
def test_checkpointing_same_outputs_and_grads_less_memory(cfg, packed):
    tokens, lengths = _batch()
    torch.manual_seed(0)
    enc = GeneMambaEncoder(60, **TINY, **cfg).double().train()
    weights = torch.randn(len(LENGTHS), L, 32, dtype=torch.float64)
    mask = (torch.arange(L)[None] < lengths[:, None])[..., None]
    results = {}
    for ckpt in (False, True):
        enc.gradient_checkpointing = ckpt
        enc.zero_grad()
        h, saved = _forward_saved_bytes(enc, tokens, lengths, packed)
        (h * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        results[ckpt] = (h.detach() * mask, grads, saved)
    (h0, g0, s0), (h1, g1, s1) = results[False], results[True]
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-10, atol=1e-12, msg=name)
    assert s1 < 0.5 * s0, (s1, s0)


def test_checkpointing_inactive_in_eval_and_no_grad():
    tokens, lengths = _batch()
    enc = GeneMambaEncoder(60, **TINY)
    enc.gradient_checkpointing = True
    enc.eval()
    with torch.no_grad():
        a = enc(tokens, lengths)
    enc.gradient_checkpointing = False
    with torch.no_grad():
        b = enc(tokens, lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
