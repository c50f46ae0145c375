"""Output heads: masked-gene LM head and cell classifier head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierHead", "MaskedLMHead"]


class MaskedLMHead(nn.Module):
    """Token logits ``h W^T + b`` over the vocabulary.

    Parameters
    ----------
    d_model
        Width of the hidden states.
    vocab_size
        Number of tokens.
    tied_embedding
        If given, ``W`` is this embedding's weight (weight tying; the head then has only ``bias``).
        The embedding is referenced, not registered, so the state dict holds it once.
    bias
        Learn a per-token bias (the published ``lm_head`` has one).

    Notes
    -----
    State-dict keys: ``weight`` (untied only) and ``bias``, like ``nn.Linear`` (the published ``lm_head``).
    """

    def __init__(
        self, d_model: int, vocab_size: int, tied_embedding: nn.Embedding | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.vocab_size = vocab_size
        if tied_embedding is not None:
            if tuple(tied_embedding.weight.shape) != (vocab_size, d_model):
                raise ValueError(
                    f"tied embedding has shape {tuple(tied_embedding.weight.shape)}, expected {(vocab_size, d_model)}"
                )
            self._tied = (tied_embedding,)  # a tuple: not registered as a submodule
            self.weight = None
        else:
            self._tied = ()
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
            nn.init.normal_(self.weight, std=d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def tied(self) -> bool:
        """Whether the weight is the embedding's."""
        return bool(self._tied)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., d_model] -> [..., vocab_size]`` logits."""
        weight = self._tied[0].weight if self._tied else self.weight
        return F.linear(hidden, weight, self.bias)


class ClassifierHead(nn.Module):
    """Cell-type classifier on cell embeddings: ``Linear`` or a small MLP, with dropout.

    Parameters
    ----------
    d_in
        Embedding width.
    n_classes
        Number of classes.
    hidden
        ``None``: ``Dropout -> Linear(d_in, n_classes)``. An int: ``Linear(d_in, hidden) -> GELU ->
        Dropout -> Linear(hidden, n_classes)`` (``n_hidden_layers`` hidden layers).
    dropout
        Dropout probability.
    n_hidden_layers
        Hidden layers of the MLP (ignored without ``hidden``).
    """

    def __init__(
        self,
        d_in: int,
        n_classes: int,
        hidden: int | None = None,
        dropout: float = 0.1,
        n_hidden_layers: int = 1,
    ) -> None:
        super().__init__()
        self.d_in = d_in
        self.n_classes = n_classes
        layers: list[nn.Module] = []
        if hidden is None:
            layers += [nn.Dropout(dropout), nn.Linear(d_in, n_classes)]
        else:
            width = d_in
            if n_hidden_layers < 1:
                raise ValueError(f"n_hidden_layers must be >= 1 with hidden={hidden} (hidden=None: a linear head)")
            for _ in range(n_hidden_layers):
                layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
                width = hidden
            layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, d_in] -> [batch, n_classes]`` logits."""
        return self.net(x)
