"""GeneMambaEncoder: state-dict contract, pooling, sub-batching, speed, objectives and leaks."""

from __future__ import annotations

import re
import time

import pytest
import torch

from conftest import TINY
from genemamba_scvi.nn import (
    ClassifierHead,
    GeneMambaEncoder,
    MaskedLMHead,
    mask_tokens,
    masked_lm_loss,
    next_token_loss,
)

V = 40


def _expected_keys(n_layers, d, d_state=8, headdim=16, expand=2, vocab=V, prenorm=True, merge="layer"):
    """The list of docs/developer/interfaces.md, with shapes."""
    d_inner = expand * d
    nheads = d_inner // headdim
    keys = {"embedding.weight": (vocab, d), "norm_f.weight": (d,)}
    for i in range(n_layers):
        p = f"layers.{i}."
        if prenorm:
            keys[p + "norm.weight"] = (d,)
        keys.update(
            {
                p + "mixer.in_proj.weight": (2 * d_inner + 2 * d_state + nheads, d),
                p + "mixer.conv1d.weight": (d_inner + 2 * d_state, 1, 4),
                p + "mixer.conv1d.bias": (d_inner + 2 * d_state,),
                p + "mixer.dt_bias": (nheads,),
                p + "mixer.A_log": (nheads,),
                p + "mixer.D": (nheads,),
                p + "mixer.norm.weight": (d_inner,),
                p + "mixer.out_proj.weight": (d, d_inner),
            }
        )
        if merge == "layer":
            keys[p + "merge.weight"] = (d, 2 * d)
            keys[p + "merge.bias"] = (d,)
    if merge == "shared":
        keys["merge.weight"] = (d, 2 * d)
        keys["merge.bias"] = (d,)
    return keys


@pytest.mark.parametrize(
    ("cfg", "prenorm", "merge"),
    [
        (dict(), True, "layer"),
        (dict(merge="concat"), True, "layer"),
        (dict(block="official", shared_merge=True), False, "shared"),
        (dict(block="official", merge="mean"), False, None),
        (dict(bidirectional=False), True, None),
    ],
)
def test_state_dict_names_and_shapes(cfg, prenorm, merge):
    enc = GeneMambaEncoder(V, n_layers=2, **TINY, **cfg)
    got = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert got == _expected_keys(2, 32, prenorm=prenorm, merge=merge)
    mixer_keys = {re.sub(r"^layers\.0\.mixer\.", "", k) for k in got if k.startswith("layers.0.mixer.")}
    assert mixer_keys == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D"} | {
        "norm.weight",
        "out_proj.weight",
    }


def test_defaults_match_interface():
    enc = GeneMambaEncoder(100, n_layers=1, backend="torch")
    m = enc.layers[0].mixer
    assert (enc.d_model, m.d_state, m.d_conv, m.expand, m.headdim, m.chunk_size) == (512, 64, 4, 2, 64, 256)
    assert enc.bidirectional and enc.merge_mode == "gate" and enc.block == "prenorm" and enc.pooling == "mean"
    assert enc.embedding.padding_idx == 0 and torch.all(enc.embedding.weight[0] == 0)


def test_pooling_mean_over_real_tokens_and_cls():
    enc = GeneMambaEncoder(V, n_layers=0, **TINY)
    hidden = torch.randn(3, 5, 32)
    lengths = torch.tensor([5, 2, 0])
    pooled = enc.pool(hidden, lengths)
    torch.testing.assert_close(pooled[0], hidden[0].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, :2].mean(0))
    assert torch.all(pooled[2] == 0)
    enc_cls = GeneMambaEncoder(V, n_layers=1, pooling="cls", **TINY)  # (0 layers with cls are refused)
    expected = hidden[:, 0].clone()
    expected[2] = 0  # the empty cell: no first token
    torch.testing.assert_close(enc_cls.pool(hidden, lengths), expected)


def test_zero_layer_baseline_runs():
    enc = GeneMambaEncoder(V, n_layers=0, **TINY)
    tokens = torch.randint(3, V, (2, 6))
    assert enc(tokens, torch.tensor([6, 3])).shape == (2, 6, 32)


def test_sub_batch_splitting_gives_same_result():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, **TINY)
    tokens = torch.randint(3, V, (7, 12))
    lengths = torch.tensor([12, 3, 7, 12, 1, 9, 5])
    full = enc(tokens, lengths)
    assert enc.last_n_sub_batches == 1
    g_full = torch.autograd.grad(full.sum(), enc.embedding.weight)[0]
    per_seq = 2 * 12 * enc.d_in_proj  # two directions x L x d_in_proj
    enc.max_call_elements = 3 * per_seq  # 3 cells per mixer call
    split = enc(tokens, lengths)
    assert enc.last_n_sub_batches == 3
    torch.testing.assert_close(split, full, atol=1e-6, rtol=1e-6)
    g_split = torch.autograd.grad(split.sum(), enc.embedding.weight)[0]
    torch.testing.assert_close(g_split, g_full, atol=1e-5, rtol=1e-5)


def test_tiny_model_forward_backward_under_one_second():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(100, d_model=64, n_layers=2, d_state=64, headdim=64, backend="torch")
    head = MaskedLMHead(64, 100, tied_embedding=enc.embedding)
    tokens = torch.randint(3, 100, (4, 128))
    lengths = torch.tensor([128, 100, 64, 17])
    inputs, labels = mask_tokens(tokens, lengths, vocab_size=100, generator=torch.Generator().manual_seed(0))

    def step():
        loss = masked_lm_loss(head(enc(inputs, lengths)), labels)
        loss.backward()
        return loss

    # One thread: with 2 OpenMP threads on a 2-core machine that is also running something else, a
    # descheduled thread stalls every parallel region and one step can take 10x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):  # warm-up: the first calls pay for oneDNN primitive creation and allocator growth
            step()
        timings = []
        for _ in range(3):  # steady state: best of three
            t0 = time.perf_counter()
            loss = step()
            timings.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    elapsed = min(timings)
    assert torch.isfinite(loss)
    assert elapsed < 1.0, f"forward+backward took {elapsed:.2f}s"


def test_heads():
    enc = GeneMambaEncoder(V, n_layers=0, **TINY)
    tied = MaskedLMHead(32, V, tied_embedding=enc.embedding)
    assert set(tied.state_dict()) == {"bias"} and tied.tied
    h = torch.randn(2, 3, 32)
    torch.testing.assert_close(tied(h), h @ enc.embedding.weight.T + tied.bias)
    untied = MaskedLMHead(32, V)
    assert {k: tuple(v.shape) for k, v in untied.state_dict().items()} == {"weight": (V, 32), "bias": (V,)}
    with pytest.raises(ValueError):
        MaskedLMHead(16, V, tied_embedding=enc.embedding)
    assert ClassifierHead(32, 5)(torch.randn(4, 32)).shape == (4, 5)
    mlp = ClassifierHead(32, 5, hidden=16, dropout=0.2)
    assert mlp(torch.randn(4, 32)).shape == (4, 5)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in mlp.modules())


# ---------------------------------------------------------------------------------------------------
# objectives: the masked LM cannot see its target; next-token on a bidirectional model leaks
# ---------------------------------------------------------------------------------------------------
def _model(bidirectional):
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=2, bidirectional=bidirectional, **TINY).eval()
    return enc, MaskedLMHead(32, V, tied_embedding=enc.embedding)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_masked_lm_has_no_leak(bidirectional):
    enc, head = _model(bidirectional)
    tokens = torch.randint(3, V, (2, 16))
    lengths = torch.tensor([16, 11])
    t = 6
    inputs = tokens.clone()
    inputs[:, t] = 2  # <mask> at the target position
    base = head(enc(inputs, lengths))
    for new in (3, 17, V - 1):
        changed = tokens.clone()
        changed[:, t] = new  # a different original (target) token
        inputs2 = changed.clone()
        inputs2[:, t] = 2
        torch.testing.assert_close(head(enc(inputs2, lengths))[:, t], base[:, t], atol=0, rtol=0)
    # the same holds through mask_tokens: identical random draws -> identical inputs, only labels differ
    gen_seed = 123
    inp_a, lab_a = mask_tokens(
        tokens, lengths, mask_prob=0.3, vocab_size=V, generator=torch.Generator().manual_seed(gen_seed)
    )
    masked = inp_a == 2
    changed = tokens.clone()
    changed[masked] = (tokens[masked] - 3 + 1) % (V - 3) + 3
    inp_b, lab_b = mask_tokens(
        changed, lengths, mask_prob=0.3, vocab_size=V, generator=torch.Generator().manual_seed(gen_seed)
    )
    assert torch.equal(inp_a[masked], inp_b[masked]) and not torch.equal(lab_a[masked], lab_b[masked])
    logits_a, logits_b = head(enc(inp_a, lengths)), head(enc(inp_b, lengths))
    # positions whose whole input is identical give identical logits at every masked position
    same_rows = (inp_a == inp_b).all(1)
    torch.testing.assert_close(logits_a[same_rows], logits_b[same_rows], atol=0, rtol=0)


def test_bidirectional_next_token_leaks_unidirectional_does_not():
    tokens = torch.randint(3, V, (2, 16))
    lengths = torch.tensor([16, 12])
    t = 5
    perturbed = tokens.clone()
    perturbed[:, t + 1] = (tokens[:, t + 1] - 3 + 7) % (V - 3) + 3
    for bidirectional in (True, False):
        enc, head = _model(bidirectional)
        a = head(enc(tokens, lengths))
        b = head(enc(perturbed, lengths))
        diff = (a[:, : t + 1] - b[:, : t + 1]).abs().max().item()
        if bidirectional:
            assert diff > 1e-4, "the bidirectional model should see token t+1 when predicting it"
        else:
            assert diff <= 1e-6, "the unidirectional model must not see the future"
            assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-4


def test_next_token_loss_refuses_bidirectional_encoder():
    tokens = torch.randint(3, V, (2, 8))
    lengths = torch.tensor([8, 5])
    for bidirectional in (True, False):
        enc, head = _model(bidirectional)
        logits = head(enc(tokens, lengths))
        if bidirectional:
            with pytest.raises(ValueError, match="leak"):
                next_token_loss(logits, tokens, lengths, encoder=enc)
        else:
            loss = next_token_loss(logits, tokens, lengths, encoder=enc)
            ref = torch.nn.functional.cross_entropy(
                torch.cat([logits[0, :7], logits[1, :4]]), torch.cat([tokens[0, 1:8], tokens[1, 1:5]])
            )
            torch.testing.assert_close(loss, ref)


def test_lengths_outside_the_sequence_are_refused_not_pooled_wrongly():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=1, **TINY).eval()
    tokens = torch.randint(3, V, (2, 5))
    for lengths in (torch.tensor([5, 7]), torch.tensor([-2, 3])):
        with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 5"):
            enc(tokens, lengths)
        with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 5"):
            enc.embed_cells(tokens, lengths, packed=True)
        with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 5"):
            enc.pool(torch.zeros(2, 5, 32), lengths)
    ok = torch.tensor([5, 0])  # full and empty cells are fine
    assert enc.embed_cells(tokens, ok).shape == (2, 32)


def test_cls_pooling_of_an_empty_cell_is_zero_on_both_paths():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=1, pooling="cls", **TINY).eval()
    tokens = torch.randint(3, V, (3, 4))
    for lengths in (torch.tensor([3, 0, 3]), torch.tensor([3, 2, 0])):  # an empty cell inside, and last
        padded = enc.embed_cells(tokens, lengths)
        packed = enc.embed_cells(tokens, lengths, packed=True)
        torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-5)
        assert packed[lengths == 0].abs().max() == 0


def test_malformed_tokens_lengths_and_cu_seqlens_are_named():
    enc = GeneMambaEncoder(V, n_layers=1, **TINY).eval()
    tokens = torch.randint(3, V, (2, 5))
    with pytest.raises(ValueError, match=r"tokens must be \[batch, L\]"):
        enc(tokens[0])
    for bad in (V, -1):
        wrong = tokens.clone()
        wrong[1, 2] = bad
        with pytest.raises(ValueError, match=rf"token ids must be in \[0, vocab_size={V}\)"):
            enc(wrong)
    with pytest.raises(ValueError, match=r"lengths must be \[batch\] = \[2\]"):
        enc(tokens, torch.tensor([5, 5, 5]))
    for cu in ([0, 3], [1, 10], [0, 6, 4, 10]):
        with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to the number of packed tokens \(10\)"):
            enc.forward_packed(tokens.reshape(-1), torch.tensor(cu))
    empty = torch.zeros(2, 0, dtype=torch.long)  # no positions at all: both paths give [2, 0, d]
    assert enc(empty).shape == enc(empty, packed=True).shape == (2, 0, 32)


def test_classifier_head_with_a_width_but_no_hidden_layer_is_refused():
    with pytest.raises(ValueError, match=r"n_hidden_layers must be >= 1 with hidden=8"):
        ClassifierHead(16, 3, hidden=8, n_hidden_layers=0)
    assert (
        sum(isinstance(m, torch.nn.Linear) for m in ClassifierHead(16, 3, hidden=8, n_hidden_layers=2).modules()) == 3
    )


def _three_cells():
    """A one-layer encoder and three cells of 12, 5 and 7 tokens: ``(enc, tokens, lengths, packed, cu_seqlens)``."""
    from genemamba_scvi.nn import pack_tokens

    torch.manual_seed(0)
    enc = GeneMambaEncoder(V, n_layers=1, **TINY).eval()
    t = torch.randint(3, V, (3, 12))
    lengths = torch.tensor([12, 5, 7])
    return (enc, t, lengths, *pack_tokens(t, lengths))


def test_packing_helpers_and_pooling_refuse_inputs_that_would_mix_cells():
    """Shapes and values that would put one cell's states in another's rows or pool over another's tokens (user
    probe, session 24): each refused by name; numpy arrays get a TypeError naming torch.from_numpy."""
    import numpy as np

    from genemamba_scvi.nn import pool_hidden, unpack_hidden

    enc, t, lengths, tp, cu = _three_cells()
    with torch.no_grad():
        h = enc.forward_packed(tp, cu)
        assert torch.equal(unpack_hidden(h, lengths, 12)[1, :5], h[12:17])
        for bad_len, seq_len in ((lengths, 10), (torch.tensor([12, 4, 7]), 12)):  # longest > seq_len; sum != T
            with pytest.raises(ValueError, match="unpack_hidden takes"):
                unpack_hidden(h, bad_len, seq_len)
        for args in ((h[None], lengths), (h, None), (enc(t, lengths), lengths[:1])):
            with pytest.raises(ValueError, match=r"pooling takes hidden \[batch, L, d\]"):
                pool_hidden(*args)
        with pytest.raises(ValueError, match="cu_seqlens must be a 1-D integer tensor"):
            enc.forward_packed(tp, cu[None])
        with pytest.raises(ValueError, match="lengths must be integers"):
            enc(t, torch.tensor([12.0, 4.5, 7.0]))
        with pytest.raises(ValueError, match="cu_seqlens must be a 1-D integer tensor"):
            enc.forward_packed(tp, cu.double())
        for bad in (float("nan"), float("inf"), lengths, 5):  # 5: below the longest cell (12)
            with pytest.raises(ValueError, match="max_seqlen"):
                enc.forward_packed(tp, cu, max_seqlen=bad)
        for call in (lambda: enc.embed_cells(t, lengths.numpy()), lambda: enc(t.numpy()),
                     lambda: enc.embed_cells(t.numpy(), lengths, packed=True)):  # fmt: skip
            with pytest.raises(TypeError, match=r"torch\.from_numpy"):
                call()
        assert np.allclose(enc.embed_cells(t, lengths, packed=True), enc.embed_cells(t, lengths), atol=1e-5)


def test_encoder_traces_without_graph_breaks():
    """torch.compile traces the packed forward and the padded embedding as one graph each on a CPU (serving probe,
    session 27: the check of ``max_seqlen`` against the lengths and the backend's log line each broke the graph;
    packing itself, ``tokens[mask]``, has a data-dependent shape and stays outside)."""
    import torch._dynamo as dynamo

    enc, t, lengths, tp, cu = _three_cells()
    with torch.no_grad():
        for fn, args in (
            (lambda a, b: enc.forward_packed(a, b, max_seqlen=12), (tp, cu)),
            (lambda a, b: enc.embed_cells(a, b), (t, lengths)),
        ):
            dynamo.reset()
            explained = dynamo.explain(fn)(*args)
            assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
        with pytest.raises(ValueError, match="max_seqlen"):  # eager calls still refuse a bound below the longest
            enc.forward_packed(tp, cu, max_seqlen=5)
