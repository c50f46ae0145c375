"""Losses: BERT-style masking, masked-LM loss, pathway InfoNCE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genemamba_scvi.nn import PathwayInfoNCE, mask_tokens, masked_lm_loss, supervised_contrastive_loss


def test_mask_tokens_never_masks_pads_or_specials_and_has_bert_rates():
    g = torch.Generator().manual_seed(0)
    V, B, L = 1000, 64, 256
    tokens = torch.randint(3, V, (B, L), generator=g)
    tokens[:, 0] = 1  # <cls>
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    lengths[0] = 0
    lengths[1:] = lengths[1:].clamp(min=1)
    pad = torch.arange(L).unsqueeze(0) >= lengths.unsqueeze(1)
    tokens[pad] = 0
    inputs, labels = mask_tokens(tokens, lengths, mask_prob=0.15, vocab_size=V, generator=g)
    sel = labels != -100
    assert not sel[pad].any() and not sel[:, 0].any()
    assert torch.equal(inputs[pad], tokens[pad]) and torch.all(inputs[1:, 0] == 1)
    assert torch.equal(labels[sel], tokens[sel])
    assert torch.equal(inputs[~sel], tokens[~sel])
    n_cand = int((~pad).sum() - (lengths > 0).sum())
    rate = sel.sum().item() / n_cand
    assert 0.13 < rate < 0.17
    frac_mask = (inputs[sel] == 2).float().mean().item()
    frac_keep = (inputs[sel] == tokens[sel]).float().mean().item()
    assert 0.77 < frac_mask < 0.83 and 0.08 < frac_keep < 0.13
    replaced = sel & (inputs != 2) & (inputs != tokens)
    assert replaced.any() and inputs[replaced].min() >= 3 and inputs[replaced].max() < V


def test_mask_tokens_never_takes_the_unknown_gene_token_as_a_target_or_replacement():
    # the published [UNK] is a gene entry (id 3, the lowest): it was masked and drawn like a gene, so on published
    # weights about half the masked-gene targets were [UNK] (their zero-count tail)
    g = torch.Generator().manual_seed(2)
    V, B, L = 8, 256, 64  # few genes: replacements would often hit the unknown id
    tokens = torch.randint(3, V, (B, L), generator=g)
    lengths = torch.full((B,), L)
    inputs, labels = mask_tokens(tokens, lengths, mask_prob=0.5, vocab_size=V, generator=g, unk_id=3)
    sel = labels != -100
    assert sel.any() and not (labels[sel] == 3).any() and torch.equal(labels[sel], tokens[sel])
    replaced = sel & (inputs != 2) & (inputs != tokens)
    assert replaced.sum() > 100 and not (inputs[replaced] == 3).any() and inputs[replaced].max() == V - 1
    assert torch.equal(inputs[tokens == 3], tokens[tokens == 3])  # unknown positions stay as they are
    for unk in (5, V - 1):  # an unknown entry inside or at the end of the range
        inputs, labels = mask_tokens(tokens, lengths, mask_prob=0.5, vocab_size=V, generator=g, unk_id=unk)
        sel = labels != -100
        assert not (labels[sel] == unk).any() and not (inputs[sel & (inputs != tokens)] == unk).any()


def test_mask_tokens_min_one_per_nonempty_cell_and_reproducible():
    tokens = torch.randint(3, 50, (8, 4))
    lengths = torch.tensor([4, 1, 2, 0, 4, 3, 1, 2])
    tokens[torch.arange(4).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    a = mask_tokens(tokens, lengths, mask_prob=0.0, vocab_size=50, generator=torch.Generator().manual_seed(1))
    b = mask_tokens(tokens, lengths, mask_prob=0.0, vocab_size=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    n_sel = (a[1] != -100).sum(1)
    assert torch.equal(n_sel, (lengths > 0).long())


def test_masked_lm_loss():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    labels = torch.tensor([[-100, 4, -100], [1, -100, -100]])
    ref = torch.nn.functional.cross_entropy(torch.stack([logits[0, 1], logits[1, 0]]), torch.tensor([4, 1]))
    torch.testing.assert_close(masked_lm_loss(logits, labels), ref)
    empty = masked_lm_loss(logits, torch.full((2, 3), -100))
    assert empty.item() == 0.0
    empty.backward()


def _disjoint_sets(n_sets=8, size=5, offset=3):
    return [torch.arange(offset + i * size, offset + (i + 1) * size) for i in range(n_sets)]


def test_infonce_decreases_when_sets_pulled_together():
    torch.manual_seed(0)
    sets = _disjoint_sets()
    V, d = 3 + 8 * 5, 16
    emb = torch.randn(V, d)
    loss_fn = PathwayInfoNCE(sets, temperature=0.1, n_sets=8)

    def loss_of(e, seeds=range(10)):
        return torch.stack([loss_fn(e, generator=torch.Generator().manual_seed(s)) for s in seeds]).mean()

    before = loss_of(emb)
    moved = emb.clone()
    for s in sets:
        centroid = emb[s].mean(0)
        moved[s] = emb[s] + 0.7 * (centroid - emb[s])
    after = loss_of(moved)
    assert after < before - 0.1

    param = torch.nn.Parameter(emb.clone())
    opt = torch.optim.SGD([param], lr=0.5)
    for step in range(30):
        opt.zero_grad()
        loss_fn(param, generator=torch.Generator().manual_seed(100 + step)).backward()
        opt.step()
    assert loss_of(param.detach()) < before - 0.1


def test_infonce_contextual_mode_and_determinism():
    sets = _disjoint_sets(4, 3)
    loss_fn = PathwayInfoNCE(sets, temperature=0.1, n_sets=4)
    token_ids = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 3, 3, 40, 41])
    hidden = torch.randn(len(token_ids), 8, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    loss = loss_fn(hidden, token_ids, generator=g)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert hidden.grad[14:].abs().sum() == 0  # tokens outside every set are never drawn
    torch.testing.assert_close(loss_fn(hidden, token_ids, generator=torch.Generator().manual_seed(0)), loss.detach())
    # too few eligible sets -> zero with a gradient path
    zero = loss_fn(hidden[:2], token_ids[:2])
    assert zero.item() == 0.0 and zero.requires_grad


def test_supcon_equals_infonce_for_pairs():
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    zn = torch.nn.functional.normalize(z, dim=-1)
    sim = zn @ zn.T / 0.1
    sim.fill_diagonal_(float("-inf"))
    ref = torch.nn.functional.cross_entropy(sim, torch.tensor([1, 0, 3, 2, 5, 4]))
    torch.testing.assert_close(supervised_contrastive_loss(z, labels, 0.1), ref)


def test_infonce_rejects_bad_args():
    with pytest.raises(ValueError):
        PathwayInfoNCE(_disjoint_sets(), temperature=0.0)


def test_infonce_takes_a_mapping_and_refuses_what_would_make_its_loss_zero_silently():
    # nn probe (session 32): the docstring's own source of sets (gene_sets_to_token_ids, a dict) raised "new():
    # invalid data type 'str'"; n_sets=1, sets of another vocabulary and 1-D embeddings gave a loss of 0 or garbage
    sets = _disjoint_sets()
    table = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    from_list = PathwayInfoNCE(sets, n_sets=4)(table, generator=torch.Generator().manual_seed(1))
    as_dict = PathwayInfoNCE({f"s{i}": s for i, s in enumerate(sets)}, n_sets=4)
    torch.testing.assert_close(as_dict(table, generator=torch.Generator().manual_seed(1)), from_list)
    assert PathwayInfoNCE(sets, n_sets=np.int64(4)).n_sets == 4  # a numpy integer (a sweep's np.arange) is one
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"n_sets must be an integer >= 2"):
            PathwayInfoNCE(sets, n_sets=bad)
    with pytest.raises(ValueError, match=r"gene sets hold token id 99, but the embedding table has 50 rows"):
        PathwayInfoNCE([*sets, torch.tensor([98, 99])])(table)
    with pytest.raises(ValueError, match=r"embeddings must be \[items, d\]"):
        PathwayInfoNCE(sets)(torch.randn(50))


def test_mask_tokens_checks_its_inputs_as_the_encoder_does():
    # nn probe (session 32): float lengths and lengths beyond L were taken silently, numpy tokens raised an
    # AttributeError, a lengths vector of the wrong size a broadcasting error
    import numpy as np

    from genemamba_scvi.nn import mask_tokens

    tokens = torch.full((2, 5), 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"lengths must be integers"):
        mask_tokens(tokens, torch.tensor([5.0, 3.0]))
    with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 5"):
        mask_tokens(tokens, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match=r"lengths \[batch\], got shapes \(2, 5\) and \(3,\)"):
        mask_tokens(tokens, torch.tensor([5, 3, 1]))
    with pytest.raises(TypeError, match=r"torch.from_numpy converts"):
        mask_tokens(np.ones((2, 5), dtype=np.int64), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match=r"tokens must be integer token ids, got dtype torch.float32"):
        mask_tokens(tokens.float(), torch.tensor([5, 3]))
    narrow, _ = mask_tokens(tokens.to(torch.uint16), torch.tensor([5, 3]))  # a corpus shard's dtype (review)
    assert narrow.dtype == torch.int64
    inputs, labels = mask_tokens(tokens.int(), torch.tensor([5, 3]), generator=torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == (2, 5) and bool((labels[1, 3:] == -100).all())


def test_the_network_layers_refuse_inputs_they_would_read_wrongly():
    # nn probe (session 35): each of these gave a silently wrong answer or an error that named no input
    from genemamba_scvi.nn import BiMambaBlock, Mamba2Mixer, next_token_loss, pool_packed

    tokens = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6, 4])
    with pytest.raises(ValueError, match=r"vocab_size=5 must be above n_special=3 and every token id \(the largest"):
        mask_tokens(tokens, lengths, vocab_size=5)  # replacements were drawn from {3, 4}
    with pytest.raises(ValueError, match=r"vocab_size=3 must be above n_special=3"):
        mask_tokens(tokens, lengths, vocab_size=3)  # replacements were skipped
    with pytest.raises(TypeError, match="lengths"):
        mask_tokens(tokens, [6, 4])
    mask_tokens(tokens, lengths, vocab_size=40)  # ids up to 39: fine

    torch.manual_seed(0)
    block = BiMambaBlock(d_model=32, d_state=16, headdim=16, backend="torch")
    x = torch.randn(2, 8, 32)
    with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 8, got values from -5"):
        block(x, torch.tensor([8, -5]))  # the backward pass read the cell unreversed
    with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 8, got .* to 9"):
        block(x, torch.tensor([8, 9]))
    with pytest.raises(ValueError, match=r"lengths must be \[batch\] = \[2\] .*got shape \(3,\)"):
        block(x, torch.tensor([8, 8, 8]))
    with pytest.raises(ValueError, match=r"lengths must be integers"):
        block(x, torch.tensor([8, 7.9]))
    assert torch.equal(block(x, torch.tensor([8, 8])), block(x))  # full lengths as before
    with pytest.raises(ValueError, match=r"u must be \[batch, seqlen, d_model\], got shape \(8, 32\)"):
        Mamba2Mixer(d_model=32, d_state=16, headdim=16, backend="torch")(x[0])

    logits = torch.randn(2, 6, 40)
    with pytest.raises(ValueError, match=r"lengths must be between 0 and the sequence length 6, got .* to 50"):
        next_token_loss(logits, tokens, torch.tensor([6, 50]), encoder=False)
    with pytest.raises(ValueError, match=r"lengths must be integers"):
        next_token_loss(logits, tokens, torch.tensor([6.0, 5.5]), encoder=False)

    hidden = torch.randn(19, 4)
    for cu in ([0, 10, 16, 30], [3, 10, 16, 19], [0, 5, 10, 12]):  # the last one dropped tokens without a word
        with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to the number of packed tokens \(19\)"):
            pool_packed(hidden, torch.tensor(cu))
    assert pool_packed(hidden, torch.tensor([0, 10, 19])).shape == (2, 4)

    from genemamba_scvi.nn import GeneMambaEncoder

    for bad in (0, 40.0, True):  # torch's IndexError / TypeError named no setting
        with pytest.raises(ValueError, match=rf"vocab_size must be an integer >= 1, got {bad!r}"):
            GeneMambaEncoder(bad, d_model=32, n_layers=1, d_state=16, headdim=16, backend="torch")

    loss = PathwayInfoNCE([[3, 4, 5], [6, 7, 8]], n_per_set=2)
    with pytest.raises(ValueError, match=r"token_ids must be token ids >= 0, got -100: MLM labels"):
        loss(torch.randn(6, 8), torch.tensor([3, 4, 5, -100, 7, 8]))
