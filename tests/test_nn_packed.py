"""Packed (varlen) encoder path: same function as the padded path, cells independent, splitting, grads."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY
from genemamba_scvi.nn import (
    BiMambaBlock,
    GeneMambaEncoder,
    bipack,
    pack_cells,
    pack_tokens,
    pool_hidden,
    pool_packed,
    reversal_index_packed,
    unpack_hidden,
)
from genemamba_scvi.nn import ssd as ssd_mod

V = 60
# ragged: a length-1 cell, cells crossing several 16-token chunks, one full-length cell
LENGTHS = [9, 4, 40, 1, 17, 33]
L = 40

CONFIGS = [
    dict(),
    dict(merge="concat"),
    dict(shared_merge=True),
    dict(block="official", shared_merge=True),
    dict(block="official", merge="mean"),
    dict(bidirectional=False),
]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, V, (len(LENGTHS), L), generator=g)
    lengths = torch.tensor(LENGTHS)
    mask = torch.arange(L)[None] < lengths[:, None]
    return tokens.masked_fill(~mask, 0), lengths, mask


@pytest.mark.parametrize("cfg", CONFIGS)
def test_packed_equals_padded_fp32(cfg):
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=3, **TINY, **cfg)
    tokens, lengths, mask = _batch()
    padded = enc(tokens, lengths)
    packed = enc(tokens, lengths, packed=True)
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(packed[~mask] == 0)
    # the direct packed API gives the same states
    tp, cu = pack_tokens(tokens, lengths)
    torch.testing.assert_close(enc.forward_packed(tp, cu), padded[mask], atol=1e-5, rtol=1e-5)


def test_packed_gradients_equal_padded():
    # float64: the two paths sum in different orders; in float32 gradients of size ~500 differ by ~1e-4
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY).double()
    tokens, lengths, mask = _batch(1)
    w = torch.randn(int(mask.sum()), 32, dtype=torch.float64)

    def grads(packed):
        enc.zero_grad(set_to_none=True)
        (enc(tokens, lengths, packed=packed)[mask] * w).sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters()}

    g_pad, g_pk = grads(False), grads(True)
    assert g_pad.keys() == g_pk.keys()
    for n in g_pad:
        torch.testing.assert_close(g_pk[n], g_pad[n], atol=1e-9, rtol=1e-9, msg=n)


def test_cell_output_does_not_depend_on_the_other_cells():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY).eval()
    tokens, lengths, mask = _batch(2)
    alone = [
        enc.forward_packed(tokens[i, : lengths[i]], torch.tensor([0, int(lengths[i])])) for i in range(len(LENGTHS))
    ]
    together = enc(tokens, lengths, packed=True)
    for i, a in enumerate(alone):
        torch.testing.assert_close(together[i, : lengths[i]], a, atol=1e-5, rtol=1e-5)
    # change every other cell: cell 2 unchanged
    other = torch.randint(3, V, tokens.shape).masked_fill(~mask, 0)
    other[2] = tokens[2]
    torch.testing.assert_close(enc(other, lengths, packed=True)[2], together[2], atol=1e-5, rtol=1e-5)


def test_packed_splits_under_the_element_limit():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY)
    tokens, lengths, _ = _batch(3)
    full = enc(tokens, lengths, packed=True)
    assert enc.last_n_sub_batches == 1
    per_token = 2 * enc.d_in_proj
    enc.max_call_elements = 45 * per_token  # at most 45 real tokens (both directions) per mixer call
    split = enc(tokens, lengths, packed=True)
    assert enc.last_n_sub_batches > 2
    torch.testing.assert_close(split, full, atol=1e-6, rtol=1e-6)
    groups = enc._packed_groups(pack_tokens(tokens, lengths)[1], int(lengths.sum()))
    assert [c for g in groups for c in range(*g)] == list(range(len(LENGTHS)))  # every cell once, in order
    enc.pack_multiple = 16  # groups leave room for the dummy cell; same result
    torch.testing.assert_close(enc(tokens, lengths, packed=True), full, atol=1e-6, rtol=1e-6)


def test_pack_cells_indices():
    cu = torch.tensor([0, 3, 3, 5])  # a length-0 cell in the middle
    p = pack_cells(cu)
    assert p.n_tokens == 5 and p.n_cells == 3
    assert p.rev.tolist() == [2, 1, 0, 4, 3]
    assert p.seq_idx.tolist() == [[0, 0, 0, 2, 2]]
    assert p.seq_idx_both.tolist() == [[0, 0, 0, 2, 2, 3, 3, 3, 5, 5]]
    assert torch.equal(p.rev, reversal_index_packed(p.seq_idx)[0])
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.equal(bipack(h, p), torch.cat([h, h[p.rev]]))
    torch.autograd.gradcheck(lambda t: bipack(t, p), (h,))


def test_pool_and_unpack_helpers():
    tokens, lengths, mask = _batch(4)
    hidden = torch.randn(len(LENGTHS), L, 8)
    tp, cu = pack_tokens(tokens, lengths)
    assert torch.equal(tp, tokens[mask])
    hp = hidden[mask]
    torch.testing.assert_close(pool_packed(hp, cu), pool_hidden(hidden, lengths))
    torch.testing.assert_close(pool_packed(hp, cu, "cls"), pool_hidden(hidden, lengths, "cls"))
    back = unpack_hidden(hp, lengths, L)
    assert torch.equal(back[mask], hp) and torch.all(back[~mask] == 0)


def _rms_norm_fn_reference(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False):
    """Semantics of ``mamba_ssm.ops.triton.layer_norm.rms_norm_fn`` (its ``rms_norm_ref``) for the calls we make."""
    assert bias is None and prenorm
    r = x.float() if residual_in_fp32 else x
    if residual is not None:
        r = r + residual
    y = r * torch.rsqrt(r.square().mean(-1, keepdim=True) + eps) * weight
    return y.to(x.dtype), r


def test_fused_add_norm_path_matches(monkeypatch):
    """The residual-stream loop with the fused add+RMSNorm call (here its reference) = the padded path."""
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=3, **TINY)
    tokens, lengths, mask = _batch(5)
    ref = enc(tokens, lengths)
    ops = dict(ssd_mod.load_mamba_ssm_ops())
    ops["rms_norm_fn"] = _rms_norm_fn_reference
    monkeypatch.setitem(ssd_mod._OPS_CACHE, "ops", ops)
    enc.fused_add_norm = True
    torch.testing.assert_close(enc(tokens, lengths, packed=True)[mask], ref[mask], atol=1e-5, rtol=1e-5)


def test_embed_cells_packed():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=1, **TINY)
    tokens, lengths, _ = _batch(6)
    torch.testing.assert_close(
        enc.embed_cells(tokens, lengths, packed=True), enc.embed_cells(tokens, lengths), atol=1e-5, rtol=1e-5
    )


def test_pack_multiple_dummy_cell_changes_nothing():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY).double()
    tokens, lengths, mask = _batch(7)
    w = torch.randn(int(mask.sum()), 32, dtype=torch.float64)
    outs, grads = [], []
    for m in (1, 16):
        enc.pack_multiple = m
        enc.zero_grad(set_to_none=True)
        out = enc(tokens, lengths, packed=True)
        (out[mask] * w).sum().backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters()})
    assert int(lengths.sum()) % 16 != 0
    torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=1e-12)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-12, rtol=1e-12, msg=n)


@pytest.mark.parametrize(("n_pad", "last"), [(1, 34), (5, 30)])
def test_dummy_pad_cell_rows_get_exactly_zero_gradient(n_pad, last):
    """No gradient reaches the dummy cell that rounds a packed row up (``pack_multiple``), not even a rounding
    remainder. Its tokens embed to zero, so every RMSNorm backward multiplies whatever reaches its rows by
    ``1/sqrt(eps)`` (~316): a float32 remainder of 1e-7 from the cells after it in its chunk grew to NaN through
    18 layers on an H200 (``benchmarks/NOTES_throughput.md``, section 13). On a GPU with mamba-ssm this runs the
    fused training kernels (the pad shares its SSD chunk with the first reversed cells); on a CPU the torch path."""
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    kw = dict(d_model=128, d_state=64, headdim=64) if cuda else dict(d_model=64, d_state=16, headdim=16)
    torch.manual_seed(0)
    enc = GeneMambaEncoder(200, n_layers=3, chunk_size=64, **kw).to(dev)
    enc.pack_multiple = 16
    lengths = torch.tensor([150, 77, 9, 1, last])
    T = int(lengths.sum())
    assert (T + n_pad) % 16 == 0 and (T + n_pad) % 64 != 0  # the pad cell and the reversed cells share a chunk
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dev)
    tokens = torch.randint(3, 200, (T,), device=dev)
    grads = {}
    for i, layer in enumerate(enc.layers):  # the gradient of every block's input rows, pad rows included

        def run(h, *args, _orig=layer.mix_packed, _i=i, **kwargs):
            h.register_hook(lambda g: grads.__setitem__(_i, g))
            return _orig(h, *args, **kwargs)

        layer.mix_packed = run
    h = enc.forward_packed(tokens, cu)
    (h.float() * torch.randn(h.shape, device=dev)).sum().backward()
    assert sorted(grads) == [0, 1, 2]
    for i, g in grads.items():
        assert g.shape[0] == T + n_pad
        assert float(g[:T].abs().max()) > 0  # real cells do get gradients
        assert torch.equal(g[T:], torch.zeros_like(g[T:])), (i, float(g[T:].abs().max()))


@pytest.mark.parametrize("cfg", [dict(), dict(block="official", shared_merge=True)])
def test_projecting_once_then_gathering_equals_gathering_then_projecting(cfg, monkeypatch):
    # the packed path runs in_proj on T tokens and gathers its output for the reversed copies;
    # the earlier path gathered the tokens and projected 2T rows: same function, same gradients
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY, **cfg).double()
    tokens, lengths, mask = _batch(2)
    w = torch.randn(int(mask.sum()), 32, dtype=torch.float64)

    def run(project_once):
        monkeypatch.setattr(BiMambaBlock, "project_once", project_once)
        enc.zero_grad(set_to_none=True)
        out = enc(tokens, lengths, packed=True)[mask]
        (out * w).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}

    out_new, g_new = run(True)
    out_old, g_old = run(False)
    torch.testing.assert_close(out_new, out_old, atol=1e-12, rtol=1e-12)
    for n in g_old:
        torch.testing.assert_close(g_new[n], g_old[n], atol=1e-10, rtol=1e-10, msg=n)


def test_a_mamba_ssm_older_than_2_3_is_not_used_and_named(monkeypatch):
    # user probe: the [cuda] extra allowed mamba-ssm 2.2, whose kernels import but lack the deterministic reductions
    # of the fused backward: training failed in its first backward with "No module named mamba_ssm.utils.determinism"
    import sys
    import types

    fake = {n: types.ModuleType(n) for n in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton")}
    fake["mamba_ssm"].__version__ = "2.2.6.post3"
    combined = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    combined.mamba_chunk_scan_combined = lambda *a, **k: None
    fake["mamba_ssm.ops.triton.ssd_combined"] = combined
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(ssd_mod, "_OPS_CACHE", {})
    ops = ssd_mod.load_mamba_ssm_ops()
    assert ops["chunk_scan"] is None and not ssd_mod.mamba_ssm_available()
    assert "mamba-ssm 2.2.6.post3 is older than 2.3, which genemamba-scvi needs" in ops["error"]
    assert ssd_mod.resolve_backend("auto", device="cpu") == "torch"
