"""CUDA graphs of the packed encoder's training pass (``nn/graphs.py``).

The CPU tests check the capturable embedding and that the switch is ignored off CUDA; the GPU tests (run
through the device tool) train a small encoder with and without graphs on the same batches and compare
outputs and gradients step by step, across optimizer updates, buckets and the eager fallbacks.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from genemamba_scvi.nn import GeneMambaEncoder, mamba_ssm_available, pack_tokens
from genemamba_scvi.nn.graphs import PackedGraphs, embed_rows, graphs_of

gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs CUDA and mamba-ssm kernels"
)


def test_embed_rows_matches_embedding_values_and_gradient():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8, padding_idx=0)
    tokens = torch.tensor([3, 0, 7, 3, 49, 0, 7, 7])
    g = torch.randn(8, 8)
    a = emb(tokens)
    (a * g).sum().backward()
    ref = emb.weight.grad.clone()
    emb.weight.grad = None
    b = embed_rows(emb, tokens)
    (b * g).sum().backward()
    assert torch.equal(a, b)
    torch.testing.assert_close(emb.weight.grad, ref)
    assert emb.weight.grad[0].abs().sum() == 0  # the padding row gets no gradient


def test_embed_rows_refuses_max_norm():
    with pytest.raises(ValueError, match="max_norm"):
        embed_rows(torch.nn.Embedding(5, 2, max_norm=1.0), torch.tensor([1]))


def test_bucket_always_leaves_room_for_the_pad_cell():
    enc = GeneMambaEncoder(10, d_model=16, n_layers=1, d_state=8, headdim=8, backend="torch")
    g = PackedGraphs(enc, bucket_tokens=64)
    assert [g.bucket(n) for n in (1, 63, 64, 65, 128)] == [64, 64, 128, 128, 192]
    with pytest.raises(ValueError, match="multiple of 16"):
        PackedGraphs(enc, bucket_tokens=50)


def test_switch_is_ignored_off_cuda():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(30, d_model=16, n_layers=2, d_state=8, headdim=8, backend="torch")
    tokens = torch.randint(3, 30, (3, 12))
    tp, cu = pack_tokens(tokens, torch.tensor([12, 5, 9]))
    ref = enc.forward_packed(tp, cu)
    enc.cuda_graphs = True
    enc.train()
    out = enc.forward_packed(tp, cu)
    assert torch.equal(out, ref)
    assert enc._graphs().stats == {"eager": 0, "captured": 0, "replayed": 0}
    copy.deepcopy(enc)  # graphs are held outside the module: it still deep-copies


def test_embed_rows_takes_any_token_shape_and_refuses_what_it_does_not_implement():
    emb = torch.nn.Embedding(20, 4, padding_idx=0)
    tokens = torch.tensor([[1, 2, 0], [3, 3, 5]])
    assert torch.equal(embed_rows(emb, tokens), emb(tokens))
    for kw in ({"scale_grad_by_freq": True}, {"sparse": True}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            embed_rows(torch.nn.Embedding(5, 2, **kw), torch.tensor([1]))


@pytest.mark.parametrize(
    ("on_gpu", "frozen", "ckpt", "reason"),
    [
        (False, False, False, "trains on the CPU"),
        (True, True, False, "encoder is frozen"),
        (True, False, True, "gradient_checkpointing=True"),
    ],
)
def test_graphs_that_cannot_act_say_why(on_gpu, frozen, ckpt, reason):
    from genemamba_scvi.train import warn_if_graphs_idle

    enc = GeneMambaEncoder(10, d_model=16, n_layers=1, d_state=8, headdim=8, backend="torch")
    enc.requires_grad_(not frozen)
    with pytest.warns(UserWarning, match=reason):
        warn_if_graphs_idle(True, on_gpu, ckpt, enc)
    with warnings.catch_warnings():  # not asked for: silent
        warnings.simplefilter("error")
        warn_if_graphs_idle(None, on_gpu, ckpt, enc)


# ---------------------------------------------------------------------------------------------------------
# CPU: the bookkeeping, with a stand-in for CUDA graphs whose replay recomputes eagerly into the same buffers
# ---------------------------------------------------------------------------------------------------------
class _EagerGraph:
    def __init__(self, fn):
        self.replay = fn


def _eager_capture(self, enc, e, params, amp, dev):
    """``PackedGraphs._capture`` without CUDA: 'replays' run the row eagerly on the static inputs, into the
    shared buffers, and the backward reads what the last forward replay left (as a real graph's pool does)."""
    live = {}
    if not self._grad_bufs:
        self._grad_bufs = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        probe = enc._forward_packed_row(e.tokens, e.cu, e.n_tokens)
    e.out, e.grad_out = self._buffer("out", probe), self._buffer("grad_out", probe)

    def fwd():
        with torch.enable_grad(), enc.capturable():
            live["out"] = enc._forward_packed_row(e.tokens.clone(), e.cu.clone(), e.n_tokens)
        e.out.copy_(live["out"].detach())

    def bwd():
        grads = torch.autograd.grad(live["out"], params, e.grad_out, allow_unused=True)
        for buf, g in zip(self._grad_bufs, grads, strict=True):
            if g is not None:
                buf.copy_(g)

    e.fwd, e.bwd = _EagerGraph(fwd), _EagerGraph(bwd)
    e.grads = tuple(self._grad_bufs)


@pytest.fixture
def eager_graphs(monkeypatch):
    monkeypatch.setattr(PackedGraphs, "_capture", _eager_capture)
    torch.manual_seed(0)
    enc = GeneMambaEncoder(40, d_model=16, n_layers=2, d_state=8, headdim=8, backend="torch").train()
    ref = copy.deepcopy(enc)
    return enc, ref, PackedGraphs(enc, bucket_tokens=64)


def _cpu_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 12, (3,), generator=g)
    tokens = torch.randint(3, 40, (3, 12), generator=g)
    return pack_tokens(tokens, lengths)


def test_bookkeeping_two_forwards_one_backward_and_copied_gradients(eager_graphs):
    enc, ref, graphs = eager_graphs
    b = [_cpu_batch(i) for i in range(4)]
    for tp, cu in b[:2]:  # eager, then captured and replayed
        graphs(tp, cu, tp.shape[0]).square().mean().backward()
    assert graphs.stats == {"eager": 1, "captured": 1, "replayed": 1}
    enc.zero_grad(set_to_none=True)
    # two forwards, one backward; the first output only survives inside the sum's graph (its view is dropped)
    # (mean saves no tensor, so nothing but the autograd node keeps the first forward alive)
    loss = graphs(b[2][0], b[2][1], b[2][0].shape[0]).mean()
    loss = loss + graphs(b[3][0], b[3][1], b[3][0].shape[0]).square().mean()
    assert graphs.stats["eager"] == 2  # the second forward did not replay over the first one's buffers
    loss.backward()
    a = ref.forward_packed(*b[2]).mean() + ref.forward_packed(*b[3]).square().mean()
    a.backward()
    for (n, p), q in zip(ref.named_parameters(), enc.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
    # what autograd.grad hands out are copies: a later step does not change them
    got = torch.autograd.grad(graphs(b[2][0], b[2][1], b[2][0].shape[0]).square().mean(), list(enc.parameters()))
    kept = [g.clone() for g in got]
    graphs(b[3][0], b[3][1], b[3][0].shape[0]).square().mean().backward()
    assert all(torch.equal(g, k) for g, k in zip(got, kept, strict=True))


def test_bookkeeping_backward_after_another_replay_raises(eager_graphs):
    graphs = eager_graphs[2]
    b = [_cpu_batch(i) for i in range(3)]
    for tp, cu in b[:2]:
        graphs(tp, cu, tp.shape[0]).square().mean().backward()
    loss = graphs(b[2][0], b[2][1], b[2][0].shape[0]).square().mean()
    loss.backward(retain_graph=True)
    graphs(b[0][0], b[0][1], b[0][0].shape[0]).square().mean().backward()  # another replay of the bucket
    with pytest.raises(RuntimeError, match="cuda_graphs=False"):
        loss.backward()  # its activations are gone: refuse rather than return wrong gradients


def test_bookkeeping_frozen_parameter_swap_drops_the_graphs(eager_graphs):
    enc, _, graphs = eager_graphs
    tp, cu = _cpu_batch(0)
    for _ in range(2):
        graphs(tp, cu, tp.shape[0]).square().mean().backward()
    assert graphs.entries
    enc.layers[0].norm.weight.requires_grad_(False)
    enc.layers[0].norm.weight.data = enc.layers[0].norm.weight.data.clone()  # new storage of a frozen weight
    graphs(tp, cu, tp.shape[0]).square().mean().backward()
    assert graphs.stats["eager"] == 2 and all(e.fwd is None for e in graphs.entries.values())


# ---------------------------------------------------------------------------------------------------------
# GPU: the graphs against eager training, same batches
# ---------------------------------------------------------------------------------------------------------
def _batch(rng: np.random.Generator, n_cells: int, lo: int, hi: int, vocab: int):
    lens = rng.integers(lo, hi, size=n_cells)
    L = int(lens.max())
    tokens = torch.randint(3, vocab, (n_cells, L), device="cuda")
    lengths = torch.as_tensor(lens, device="cuda")
    tokens.masked_fill_(torch.arange(L, device="cuda")[None] >= lengths[:, None], 0)
    return pack_tokens(tokens, lengths)


def _pair(bucket: int = 256):
    torch.manual_seed(0)
    # the dimensions of the shipped kernel configurations (d_state 64, head 64, chunk 256): no autotuning
    ref = GeneMambaEncoder(64, d_model=256, n_layers=2, d_state=64, headdim=64, chunk_size=256).cuda().train()
    graphed = copy.deepcopy(ref)
    graphed.cuda_graphs, graphed.graph_bucket_tokens = True, bucket
    return ref, graphed


def _step(enc, tp, cu, amp: bool):
    enc.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        h = enc.forward_packed(tp, cu)
    w = torch.linspace(-1, 1, h.shape[-1], device="cuda")
    loss = (h.float() * w).square().mean()
    loss.backward()
    return h.detach().float(), {n: p.grad.detach().float().clone() for n, p in enc.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@gpu
@pytest.mark.parametrize("amp", [False, True])
def test_graphed_training_matches_eager_across_updates_and_buckets(amp):
    ref, graphed = _pair()
    rng = np.random.default_rng(0)
    # Adam moves every weight of the eager model by ~lr a step; the graphed model gets the same weights by an
    # in-place copy (same storage: its graphs stay), so a replay of stale weights (or of stale bf16 casts of
    # them) would be far off, while both models see identical weights at every step
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    tol = 5e-2 if amp else 1e-3
    # 3 batches in one bucket (eager, capture, replay), then a second bucket, then the first again
    sizes = [(6, 20, 40)] * 3 + [(6, 50, 80)] * 3 + [(6, 20, 40)]
    moved = []
    for n_cells, lo, hi in sizes:
        tp, cu = _batch(rng, n_cells, lo, hi, 64)
        h_ref, g_ref = _step(ref, tp, cu, amp)
        h_gr, g_gr = _step(graphed, tp, cu, amp)
        assert h_gr.shape == h_ref.shape
        assert _rel(h_gr, h_ref) < tol / 10
        for name, g in g_ref.items():
            assert _rel(g_gr[name], g) < tol, name
        before = ref.layers[0].mixer.in_proj.weight.detach().clone()
        opt.step()
        moved.append(_rel(ref.layers[0].mixer.in_proj.weight.detach(), before))
        with torch.no_grad():
            for p, q in zip(ref.parameters(), graphed.parameters(), strict=True):
                q.copy_(p)
    assert min(moved) > 1e-2  # the weights did change between steps
    stats = graphs_of(graphed, 256).stats
    assert stats["captured"] == 2 and stats["replayed"] >= 3, stats


def _bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _captured(graphed, seed: int, n_batches: int) -> list:
    """``n_batches`` batches of one bucket; the first two trained on (eager, then captured)."""
    rng = np.random.default_rng(seed)
    batches = [_batch(rng, 4, 20, 40, 64) for _ in range(n_batches)]
    for tp, cu in batches[:2]:
        _step(graphed, tp, cu, True)
    return batches


@gpu
def test_kept_output_is_not_overwritten_and_two_forwards_run_eagerly():
    ref, graphed = _pair()
    batches = _captured(graphed, 1, 3)
    tp, cu = batches[2]
    graphed.zero_grad(set_to_none=True)
    with _bf16():
        h1 = graphed.forward_packed(tp, cu)
        kept = h1.detach().clone()
        h2 = graphed.forward_packed(*batches[0])  # a second forward before the first's backward: eager
    assert torch.equal(h1.detach(), kept)
    (h1.float().square().mean() + h2.float().square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in graphed.named_parameters()}
    ref.zero_grad(set_to_none=True)
    with _bf16():
        a, b = ref.forward_packed(tp, cu), ref.forward_packed(*batches[0])
    (a.float().square().mean() + b.float().square().mean()).backward()
    for n, p in ref.named_parameters():
        assert _rel(grads[n], p.grad) < 5e-2, n


@gpu
def test_gradients_accumulate_over_graphed_steps():
    ref, graphed = _pair()
    batches = _captured(graphed, 3, 4)
    for m in (ref, graphed):  # two replays into the same .grad, no zeroing in between
        m.zero_grad(set_to_none=True)
        for tp, cu in batches[2:]:
            with _bf16():
                h = m.forward_packed(tp, cu)
            h.float().square().mean().backward()
    assert graphs_of(graphed, 256).stats["replayed"] >= 3
    for (n, p), q in zip(ref.named_parameters(), graphed.parameters(), strict=True):
        assert _rel(q.grad, p.grad) < 5e-2, n


@gpu
def test_moving_parameters_drops_the_graphs():
    _, graphed = _pair()
    rng = np.random.default_rng(2)
    tp, cu = _batch(rng, 4, 20, 40, 64)
    for _ in range(3):
        _step(graphed, tp, cu, True)
    g = graphs_of(graphed, 256)
    assert g.entries and g.stats["replayed"] >= 1
    graphed.to(torch.float64).to(torch.float32)  # new parameter storage
    _step(graphed, tp, cu, True)
    assert all(e.fwd is None for e in g.entries.values())  # rebuilt from scratch: this batch ran eagerly
