"""Training objectives: masked-gene LM, next-token LM (unidirectional only), pathway InfoNCE."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genemamba_scvi.nn.pooling import _need_tensors, check_lengths, check_tokens

__all__ = [
    "IGNORE_INDEX",
    "PathwayInfoNCE",
    "mask_tokens",
    "masked_lm_loss",
    "next_token_loss",
    "supervised_contrastive_loss",
]

IGNORE_INDEX = -100


def mask_tokens(
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    mask_prob: float = 0.15,
    mask_id: int = 2,
    n_special: int = 3,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    min_masked: int = 1,
    unk_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking (Devlin et al. 2019) of gene tokens.

    Each real, non-special token is selected with probability ``mask_prob``; a selected token is
    replaced by ``<mask>`` (80%), by a random gene token (10%) or kept (10%). Pads (positions
    ``>= length``) and special tokens (ids ``< n_special``, e.g. ``<cls>``) are never selected.

    Parameters
    ----------
    tokens
        ``[batch, L]`` token ids.
    lengths
        ``[batch]`` real lengths.
    mask_prob
        Selection probability.
    mask_id
        Id of ``<mask>``.
    n_special
        Ids below this are special (never selected, never drawn as random replacements).
    vocab_size
        Random replacements are drawn uniformly from ``[n_special, vocab_size)``; default
        ``max(tokens) + 1``.
    generator
        Random generator (on the device of ``tokens``) for reproducibility.
    min_masked
        Cells with fewer selected tokens get one more selected at random (when they have a candidate),
        so short cells still give a loss. 0 disables.
    unk_id
        Id of an unknown-gene token (the published ``[UNK]``, an entry at or above ``n_special``): never
        selected and never drawn as a random replacement, like the special tokens.

    Returns
    -------
    tuple
        ``(inputs, labels)``: ``inputs`` with replacements; ``labels`` = original id at selected
        positions, ``-100`` elsewhere.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    tokens = check_tokens(tokens, torch.iinfo(torch.int64).max)  # integer ids (their values: the encoder's check)
    _need_tensors(lengths=lengths)
    on_cpu = tokens.device.type == "cpu" and tokens.numel() > 0  # (read back on the CPU only: no host sync on a GPU)
    if vocab_size is not None and (vocab_size <= n_special or (on_cpu and int(tokens.max()) >= vocab_size)):
        # (replacements were drawn from [n_special, vocab_size) below the ids, or not at all: nn probe, session 35)
        raise ValueError(
            f"vocab_size={vocab_size} must be above n_special={n_special} and every token id (the largest is "
            f"{int(tokens.max()) if on_cpu else '?'}): random replacements are drawn from [n_special, vocab_size)"
        )
    if tokens.dim() != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"tokens must be [batch, L] and lengths [batch], got shapes {tuple(tokens.shape)} and "
            f"{tuple(lengths.shape)}"
        )
    check_lengths(lengths, tokens.shape[1])
    device = tokens.device
    tokens = tokens.long()
    batch, L = tokens.shape
    pos = torch.arange(L, device=device).unsqueeze(0)
    candidate = (pos < lengths.to(device).unsqueeze(1)) & (tokens >= n_special)
    if unk_id is not None:
        candidate &= tokens != unk_id

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    selected = candidate & (rand(batch, L) < mask_prob)
    if min_masked > 0:
        # add one random candidate in cells with too few selections
        short = (selected.sum(1) < min_masked) & candidate.any(1)
        if short.any():
            scores = torch.where(
                candidate & ~selected, rand(batch, L), torch.full_like(selected, -1.0, dtype=torch.float)
            )
            pick = scores.argmax(1)
            extra = torch.zeros_like(selected)
            extra[torch.arange(batch, device=device), pick] = True
            selected = selected | (extra & short.unsqueeze(1) & candidate)

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    u = rand(batch, L)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    inputs = tokens.clone()
    inputs[to_mask] = mask_id
    n_random = int(to_random.sum())
    if n_random:
        high = int(vocab_size) if vocab_size is not None else int(tokens.max()) + 1
        skip = unk_id is not None and n_special <= unk_id < high  # drawn from the genes but the unknown one
        if high - skip > n_special:
            draw = torch.randint(n_special, high - skip, (n_random,), generator=generator, device=device)
            inputs[to_random] = draw + (draw >= unk_id) if skip else draw
    return inputs, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on selected positions (``labels != -100``), computed in float32.

    Parameters
    ----------
    logits
        ``[..., vocab]``.
    labels
        ``[...]`` with ``-100`` where nothing is predicted.
    reduction
        ``"mean"`` over selected positions or ``"sum"``.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a gradient path) when nothing is selected.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).long()
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction=reduction)


def next_token_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    *,
    encoder: Any,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy (logits at ``t`` predict token ``t+1``), for the unidirectional model only.

    A bidirectional encoder sees token ``t+1`` when producing the state at ``t``, so this loss would be
    solved by copying (a leak); it is refused.

    Parameters
    ----------
    logits
        ``[batch, L, vocab]``.
    tokens
        ``[batch, L]`` the encoder's input ids.
    lengths
        ``[batch]`` real lengths (targets stop at the last real token).
    encoder
        The encoder that produced ``logits`` (anything with ``.bidirectional``), or that flag itself.
    reduction
        ``"mean"`` or ``"sum"``.

    Raises
    ------
    ValueError
        If the encoder is bidirectional.
    """
    bidirectional = encoder if isinstance(encoder, bool) else getattr(encoder, "bidirectional", None)
    if bidirectional is None:
        raise ValueError("next_token_loss needs the encoder (with a .bidirectional attribute) or a bool")
    if bidirectional:
        raise ValueError(
            "next-token prediction with a bidirectional encoder is a leak (each state already sees token t+1); "
            "use masked_lm_loss, or an encoder with bidirectional=False"
        )
    L = tokens.shape[1]
    check_lengths(lengths, L, tokens.shape[0])  # (lengths past L or 5.5 gave a loss without a word: nn probe)
    targets = tokens[:, 1:].long()
    valid = torch.arange(1, L, device=tokens.device).unsqueeze(0) < lengths.to(tokens.device).unsqueeze(1)
    labels = torch.where(valid, targets, torch.full_like(targets, IGNORE_INDEX))
    return masked_lm_loss(logits[:, :-1], labels, reduction=reduction)


def supervised_contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out") on L2-normalised features.

    With two items per label this is InfoNCE (van den Oord et al. 2018) with in-batch negatives.

    Parameters
    ----------
    z
        ``[n, d]`` features (normalised here).
    labels
        ``[n]`` integer labels; items with equal labels are positives.
    temperature
        Softmax temperature.
    exclude
        Optional ``[n, n]`` bool, True for pairs to drop from the denominator (e.g. unlabelled
        positives such as a gene that also belongs to the anchor's set).

    Returns
    -------
    torch.Tensor
        Mean over anchors that have at least one positive (0 if none).
    """
    n = z.shape[0]
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    drop = eye if exclude is None else (eye | (exclude & ~pos))
    sim = sim.masked_fill(drop, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


class PathwayInfoNCE(nn.Module):
    """Pathway contrastive loss: genes of one gene set are pulled together, other sets pushed apart.

    Each call samples up to ``n_sets`` gene sets that have at least two items available, draws
    ``n_per_set`` distinct items (anchor and positive(s)) from each, and applies the supervised
    contrastive / InfoNCE loss (van den Oord et al. 2018, "Representation Learning with Contrastive
    Predictive Coding"; Khosla et al. 2020, "Supervised Contrastive Learning") on L2-normalised
    embeddings with temperature ``temperature``: items of other sampled sets are the negatives. An item
    of another sampled set whose gene also belongs to the anchor's set is left out of the denominator
    (it is neither a positive nor a fair negative).

    Parameters
    ----------
    gene_sets
        Token ids of each set: a sequence of id tensors / lists, or a mapping ``{set name: ids}`` such as
        ``data.gene_sets.gene_sets_to_token_ids`` returns (its values are used).
    temperature
        Softmax temperature (default 0.1).
    n_sets
        Sets sampled per call (at least 2: the other sets are the negatives).
    n_per_set
        Items drawn per sampled set (2: one anchor, one positive).

    Notes
    -----
    Two inputs are supported by :meth:`forward`:

    * a gene embedding table ``[V, d]`` (items are genes, token id = row);
    * contextual token states ``[N, d]`` with their ``token_ids`` ``[N]`` (items are token occurrences, so
      positives may be the same gene in two cells or two genes of one set), as in GeneMamba's
      ``ALGORITHM.md``.
    """

    def __init__(
        self,
        gene_sets: Sequence[torch.Tensor] | Mapping[str, Any],
        temperature: float = 0.1,
        n_sets: int = 64,
        n_per_set: int = 2,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if n_per_set < 2:
            raise ValueError("n_per_set must be >= 2")
        if isinstance(n_sets, bool) or not isinstance(n_sets, numbers.Integral) or n_sets < 2:
            raise ValueError(
                f"n_sets must be an integer >= 2 (one set alone has no negatives: its loss is 0), got {n_sets!r}"
            )
        if isinstance(gene_sets, Mapping):  # {name: ids}, as gene_sets_to_token_ids returns
            gene_sets = list(gene_sets.values())
        sets = [torch.unique(torch.as_tensor(s, dtype=torch.long).reshape(-1)) for s in gene_sets]
        sets = [s[s >= 0] for s in sets]
        self.temperature = float(temperature)
        self.n_sets = int(n_sets)
        self.n_per_set = int(n_per_set)
        flat = torch.cat(sets) if sets else torch.zeros(0, dtype=torch.long)
        owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(sets)]) if sets else flat
        # flattened (gene, set) membership; buffers move with .to(device) but stay out of checkpoints
        self.register_buffer("set_genes", flat, persistent=False)
        self.register_buffer("set_owner", owner, persistent=False)
        self.n_total_sets = len(sets)
        self.max_token = int(flat.max()) + 1 if flat.numel() else 0

    def extra_repr(self) -> str:
        """The settings, for ``repr``."""
        return f"n_gene_sets={self.n_total_sets}, temperature={self.temperature}, n_sets={self.n_sets}"

    def forward(
        self,
        embeddings: torch.Tensor,
        token_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Contrastive loss on sampled gene sets.

        Parameters
        ----------
        embeddings
            ``[V, d]`` gene embeddings (row = token id), or ``[N, d]`` contextual states with ``token_ids``.
        token_ids
            ``[N]`` token ids of the rows of ``embeddings`` (contextual mode).
        generator
            Random generator on the device of ``embeddings``.

        Returns
        -------
        torch.Tensor
            Scalar loss; 0 (with a gradient path) when fewer than two sets have enough items.
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [items, d], got shape {tuple(embeddings.shape)}")
        device = embeddings.device
        n_items = embeddings.shape[0]
        if token_ids is None:
            if self.max_token > n_items:  # a table of genes: every set's ids must be rows of it
                raise ValueError(
                    f"the gene sets hold token id {self.max_token - 1}, but the embedding table has {n_items} rows: "
                    "sets made with another vocabulary? (their genes would never be drawn and the loss would be 0)"
                )
            token_ids = torch.arange(n_items, device=device)
        token_ids = token_ids.to(device).long().reshape(-1)
        if token_ids.shape[0] != n_items:
            raise ValueError("token_ids must have one id per row of embeddings")
        if self.set_genes.device != device:  # e.g. created after the model moved to the GPU
            self.set_genes = self.set_genes.to(device)
            self.set_owner = self.set_owner.to(device)
        zero = embeddings.sum() * 0.0
        if self.n_total_sets < 2 or n_items < 2:
            return zero
        lo, hi = torch.stack(torch.aminmax(token_ids)).tolist()  # (one read back, as the max alone was)
        if lo < 0:  # (bincount's own error named no input: nn probe, session 35)
            raise ValueError(
                f"token_ids must be token ids >= 0, got {lo}: MLM labels (-100 where nothing is predicted)? pass the "
                "ids of the tokens whose states the rows of embeddings are"
            )
        n_tok = max(self.max_token, hi + 1)
        count = torch.bincount(token_ids, minlength=n_tok)  # occurrences of each token among the items
        # items available per set: sum of occurrences of its genes
        per_set = torch.zeros(self.n_total_sets, dtype=torch.long, device=device)
        per_set.index_add_(0, self.set_owner, count[self.set_genes])
        eligible = torch.nonzero(per_set >= self.n_per_set).squeeze(1)
        if eligible.numel() < 2:
            return zero
        order = torch.randperm(eligible.numel(), generator=generator, device=device)
        chosen = eligible[order[: self.n_sets]]
        S = chosen.numel()
        # membership of the chosen sets over tokens: [S, n_tok]
        member = torch.zeros(S, n_tok, dtype=torch.bool, device=device)
        slot = torch.full((self.n_total_sets,), -1, dtype=torch.long, device=device)
        slot[chosen] = torch.arange(S, device=device)
        keep = slot[self.set_owner] >= 0
        member[slot[self.set_owner[keep]], self.set_genes[keep]] = True
        # draw n_per_set distinct items per set: top-k of random scores over the set's items
        in_set = member[:, token_ids]  # [S, N]
        scores = torch.rand(S, n_items, generator=generator, device=device).masked_fill(~in_set, -1.0)
        picks = scores.topk(self.n_per_set, dim=1).indices  # [S, k], all valid since per_set >= k
        items = picks.reshape(-1)
        labels = torch.arange(S, device=device).repeat_interleave(self.n_per_set)
        # exclude pairs (anchor i, item j) where j's gene is in i's set but j was drawn for another set
        exclude = member[labels][:, token_ids[items]]
        return supervised_contrastive_loss(embeddings[items], labels, self.temperature, exclude=exclude)
