"""GeneMambaModule: the scvi-tools module wrapping the pure-PyTorch GeneMamba encoder and heads."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from genemamba_scvi._constants import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi._warn import user_stacklevel
from genemamba_scvi.nn import (
    ClassifierHead,
    GeneMambaConfig,
    GeneMambaEncoder,
    MaskedLMHead,
    PathwayInfoNCE,
    mask_tokens,
    masked_lm_loss,
    next_token_loss,
)

Objective = Literal["mlm", "next_token"]
GeneSetsLike = Union[str, "os.PathLike", Mapping[str, Sequence[str]], None]
Mode = Literal["pretrain", "classify"]


if TYPE_CHECKING:
    from genemamba_scvi.data.vocab import GeneVocab

logger = logging.getLogger("genemamba_scvi")


#: Pack the real tokens of a batch on a CPU too (``False``: the padded batch, the path before session 17; for
#: ``benchmarks/cpu_speed.py``).
_PACK_ON_CPU = True


def _check_gene_set_mapping(gene_sets: Any) -> None:
    """Refuse ``gene_sets`` that are no ``{name: [genes]}`` mapping.

    A list failed inside with an AttributeError; a string per set was read letter by letter.
    """
    shape = "'go_bp', 'kegg', a .gmt path or a {name: [genes]} mapping"
    if not isinstance(gene_sets, Mapping):
        raise TypeError(f"gene_sets must be {shape}, got a {type(gene_sets).__name__}")
    if not gene_sets:
        raise ValueError(f"gene_sets is an empty mapping; pass {shape}, or gene_sets=None")
    for name, members in gene_sets.items():
        if isinstance(members, str) or not isinstance(members, Iterable):
            raise TypeError(f"gene_sets[{name!r}] must be a list of genes, got {members!r}")


def gene_set_tensors(gene_sets: GeneSetsLike, vocab: GeneVocab) -> list[torch.Tensor] | None:
    """Token-id tensors of the gene sets for the pathway InfoNCE.

    Parameters
    ----------
    gene_sets
        ``"go_bp"`` / ``"kegg"`` (the shipped GMTs), a GMT path, a ``{name: [genes]}`` mapping, or ``None``.
    vocab
        Vocabulary mapping gene symbols / Ensembl ids to token ids (unknown genes are dropped).

    Returns
    -------
    One ``LongTensor`` of token ids per set with at least two vocabulary genes, or ``None``.
    """
    from genemamba_scvi.data.gene_sets import (
        SHIPPED_GENE_SETS,
        check_gene_sets_source,
        gene_sets_to_token_ids,
        read_gmt,
    )

    if gene_sets is None:
        return None
    if isinstance(gene_sets, str) and gene_sets in SHIPPED_GENE_SETS:
        from genemamba_scvi.datasets import load_gene_sets

        gene_sets = load_gene_sets(gene_sets)
    elif isinstance(gene_sets, str | os.PathLike):
        check_gene_sets_source(gene_sets)
        gene_sets = read_gmt(gene_sets)
    else:
        _check_gene_set_mapping(gene_sets)
        gene_sets = {name: list(members) for name, members in gene_sets.items()}  # (generators: read once)
    token_sets = gene_sets_to_token_ids(gene_sets, vocab, min_size=2)
    if not token_sets:
        raise ValueError(
            "none of the gene sets has two or more genes in the model's vocabulary (the shipped 'go_bp' and 'kegg' "
            "name human gene symbols: are the model's genes of another species, or the sets' ids of another kind?)"
        )
    # InfoNCE contrasts sets: with one, or sets that all map to the same genes (a small panel), its loss is 0 in every
    # step (no pair of genes is a negative), and gamma does nothing
    if len({v.tobytes() for v in token_sets.values()}) < 2:
        which = (
            f"only one gene set ({next(iter(token_sets))!r}) has two or more genes in the model's vocabulary"
            if len(token_sets) == 1
            else f"the {len(token_sets)} gene sets with two or more genes in the model's vocabulary all hold the same "
            f"genes there ({vocab.decode(next(iter(token_sets.values()))[:5])})"
        )
        raise ValueError(
            f"{which}; the pathway loss contrasts sets with each other and needs two or more sets of different genes "
            "(or pass gene_sets=None)"
        )
    dropped = [name for name in gene_sets if name not in token_sets]
    # a handful (a user's own): named; of the shipped hundreds a few drop by design, more than half is a mismatch
    if dropped and (len(gene_sets) <= 100 or 2 * len(dropped) > len(gene_sets)):
        warnings.warn(
            f"{len(dropped)} of the {len(gene_sets)} gene sets have fewer than two genes in the model's vocabulary "
            f"and are left out of the pathway loss ({len(token_sets)} used; are the sets' gene ids those of the "
            f"model, symbols or Ensembl ids?): {dropped[:10]}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    logger.info("pathway InfoNCE: %d gene sets with >= 2 vocabulary genes", len(token_sets))
    return [torch.as_tensor(np.asarray(v), dtype=torch.long) for v in token_sets.values()]


class GeneMambaModule(BaseModuleClass):
    """Encoder + heads + losses in the scvi-tools module protocol.

    ``inference`` runs the Bi-Mamba encoder on the tokens (masking them first when pre-training with
    the masked-gene objective) and pools a cell embedding ``z``; ``generative`` is empty (GeneMamba
    decodes nothing per cell); ``loss`` is, with ``mode="pretrain"``, the masked-gene (or, for the
    unidirectional ablation, next-token) cross-entropy plus ``gamma`` x the pathway InfoNCE, and with
    ``mode="classify"`` the cross-entropy of the classifier head. ``mode``, ``gamma`` and ``class_weights``
    are keyword arguments of :meth:`loss`, given by the training plan (scvi-tools' ``loss_kwargs``: the
    plan's extra keyword arguments), not module state.

    Parameters
    ----------
    vocab_size
        Number of tokens including the special tokens.
    encoder_kwargs
        Encoder settings that override those of ``config`` (``d_model``, ``n_layers``, ``bidirectional``,
        ``backend``, ``pooling``, ...; see :class:`~genemamba_scvi.nn.config.GeneMambaConfig`).
    objective
        ``"mlm"`` (masked-gene prediction, default) or ``"next_token"`` (only with a unidirectional
        encoder: a bidirectional stack sees token t+1 and would leak it).
    mask_prob
        Fraction of real tokens masked per cell for ``"mlm"`` (``None``: ``config.mask_prob``, 0.15).
    gamma
        Default weight of the pathway InfoNCE term (when :meth:`loss` is not given ``gamma``).
    temperature
        InfoNCE temperature.
    tie_lm_head
        Tie the LM head weights to the token embedding (``None``: ``config.tie_lm_head``, ``True``).
    mask_id, n_special
        Id of ``<mask>`` and number of special tokens (they are never masked or predicted).
    config
        Encoder and objective settings (:class:`~genemamba_scvi.nn.config.GeneMambaConfig`; default: all
        defaults).
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_kwargs: dict | None = None,
        objective: Objective = "mlm",
        mask_prob: float | None = None,
        gamma: float = 0.1,
        temperature: float = 0.1,
        tie_lm_head: bool | None = None,
        mask_id: int = 2,
        n_special: int = 3,
        config: GeneMambaConfig | None = None,
    ):
        super().__init__()
        config = (config or GeneMambaConfig()).replace(**(encoder_kwargs or {}))
        if mask_prob is not None:
            config = config.replace(mask_prob=mask_prob)
        if tie_lm_head is not None:
            config = config.replace(tie_lm_head=tie_lm_head)
        self.config = config
        self.encoder = GeneMambaEncoder(vocab_size, config)
        self.vocab_size = vocab_size
        tied = self.encoder.embedding if config.tie_lm_head else None
        self.lm_head = MaskedLMHead(self.encoder.d_model, vocab_size, tied_embedding=tied)
        self.classifier: ClassifierHead | None = None
        self.mask_id = mask_id
        self.n_special = n_special
        self.unk_id: int | None = None  # the published [UNK] kept as a gene entry: never masked (set by the model)
        self.gamma = gamma
        self.temperature = temperature
        self.pathway_loss: PathwayInfoNCE | None = None
        self.set_objective(objective)

    # ------------------------------------------------------------------ configuration
    @property
    def mask_prob(self) -> float:
        """Masking rate of the masked-gene objective (``config.mask_prob``)."""
        return self.config.mask_prob

    def set_objective(self, objective: Objective) -> None:
        """Choose the pre-training objective; refuses next-token prediction on a bidirectional encoder."""
        if objective not in ("mlm", "next_token"):
            raise ValueError(f"objective must be 'mlm' or 'next_token', got {objective!r}")
        if objective == "next_token" and self.encoder.bidirectional:
            raise ValueError(
                "objective='next_token' leaks the target on a bidirectional encoder (every layer reads token "
                "t+1 in the backward pass). Use objective='mlm', or build the model with bidirectional=False "
                "(the GeneMamba_U ablation)."
            )
        self.objective = objective

    def set_gene_sets(self, gene_sets: list[torch.Tensor] | None, gamma: float | None = None) -> None:
        """Set the token-id gene sets of the pathway InfoNCE (``None`` disables it).

        ``gamma``, if given, replaces the default weight of the term (:meth:`loss` may also be given one).
        """
        if gamma is not None:
            self.gamma = float(gamma)
        self.pathway_loss = PathwayInfoNCE(gene_sets, temperature=self.temperature) if gene_sets else None

    def add_classifier(self, n_labels: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        """Attach (or replace) the cell-type classifier head."""
        self.classifier = ClassifierHead(self.encoder.d_model, n_labels, hidden=hidden, dropout=dropout)
        self.classifier.to(next(self.encoder.parameters()).device)
        self.n_labels = n_labels

    def _encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # On the mamba-ssm kernels and on a CPU, pack the real tokens of all cells (each cell and its reversal as
        # two sequences of one varlen row): pads are never computed (benchmarks/results/throughput_h100.json,
        # cpu_speed.json). The torch backend on a GPU keeps the padded batch (not measured packed).
        on_cpu = tokens.device.type == "cpu"
        packed = self.encoder.resolved_backend(tokens.device) == "mamba_ssm" or (on_cpu and _PACK_ON_CPU)
        return self.encoder(tokens, lengths, packed=packed)

    # ------------------------------------------------------------------ scvi protocol
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tokens": tensors[TOKENS_KEY], "lengths": tensors[LENGTHS_KEY]}

    def _get_generative_input(self, tensors, inference_outputs) -> dict:
        return {}

    def _mask(
        self, tokens: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(
            tokens,
            lengths,
            mask_prob=self.mask_prob,
            mask_id=self.mask_id,
            n_special=self.n_special,
            vocab_size=self.vocab_size,
            generator=generator,
            unk_id=self.unk_id,
        )

    def forward(
        self,
        tensors,
        get_inference_input_kwargs: dict | None = None,
        get_generative_input_kwargs: dict | None = None,
        inference_kwargs: dict | None = None,
        generative_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        compute_loss: bool = True,
    ):
        """scvi-tools' forward pass; with ``loss_kwargs={"mode": "classify"}`` the tokens are not masked."""
        if (loss_kwargs or {}).get("mode") == "classify":
            inference_kwargs = {"mask": False, **(inference_kwargs or {})}
        inputs_kwargs = (get_inference_input_kwargs, get_generative_input_kwargs)
        return super().forward(tensors, *inputs_kwargs, inference_kwargs, generative_kwargs, loss_kwargs, compute_loss)

    @auto_move_data
    def inference(
        self, tokens: torch.Tensor, lengths: torch.Tensor, mask: bool = True
    ) -> dict[str, torch.Tensor | None]:
        """Encode tokens; returns ``hidden`` [B, L, d], cell embedding ``z`` [B, d] and MLM targets.

        While training with the masked-gene objective, tokens are masked first (``mask=False``: never).
        """
        mlm_labels = None
        inputs = tokens
        if mask and self.training and self.objective == "mlm":
            inputs, mlm_labels = self._mask(tokens, lengths)
        hidden = self._encode(inputs, lengths)
        z = self.encoder.pool(hidden, lengths)
        return {"hidden": hidden, "z": z, "mlm_labels": mlm_labels}

    def generative(self) -> dict:
        """GeneMamba has no per-cell generative model; the heads are applied in :meth:`loss`."""
        return {}

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Classifier logits from cell embeddings."""
        if self.classifier is None:
            raise RuntimeError("No classifier head: train one with GeneMambaModel.train_classifier().")
        return self.classifier(z)

    def loss(
        self,
        tensors,
        inference_outputs,
        generative_outputs,
        mode: Mode = "pretrain",
        gamma: float | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> LossOutput:
        """Pre-training or classification loss (see the class docstring).

        Parameters
        ----------
        tensors, inference_outputs, generative_outputs
            As in scvi-tools' module protocol.
        mode
            ``"pretrain"`` (masked-gene or next-token cross-entropy + ``gamma`` x pathway InfoNCE) or
            ``"classify"`` (cross-entropy of the classifier head).
        gamma
            Weight of the pathway InfoNCE term (``None``: the module's ``gamma``); used when gene sets are set.
        class_weights
            ``"classify"``: per-class weights of the cross-entropy (``None``: unweighted).

        Returns
        -------
        LossOutput
            The loss and the metrics to log.
        """
        if mode not in ("pretrain", "classify"):
            raise ValueError(f"mode must be 'pretrain' or 'classify', got {mode!r}")
        hidden, z = inference_outputs["hidden"], inference_outputs["z"]
        n_obs = hidden.shape[0]
        if mode == "classify":
            logits = self.classify(z)
            labels = tensors[REGISTRY_KEYS.LABELS_KEY].long().view(-1)
            weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
            ce = F.cross_entropy(logits, labels, weight=weight)
            acc = (logits.argmax(-1) == labels).float().mean()
            return LossOutput(
                loss=ce,
                n_obs_minibatch=n_obs,
                classification_loss=ce,
                logits=logits,
                true_labels=labels.view(-1, 1),
                extra_metrics={"accuracy": acc.detach()},
            )

        metrics: dict[str, torch.Tensor] = {}
        if self.objective == "mlm":
            labels = inference_outputs["mlm_labels"]
            if labels is None:  # evaluation mode: mask fresh targets
                lengths = tensors[LENGTHS_KEY].to(hidden.device)
                inputs, labels = self._mask(tensors[TOKENS_KEY].to(hidden.device), lengths)
                hidden = self._encode(inputs, lengths)
            selected = labels != -100
            logits = self.lm_head(hidden[selected])
            lm = masked_lm_loss(logits, labels[selected])
            metrics["mlm_accuracy"] = (logits.argmax(-1) == labels[selected]).float().mean().detach()
        else:
            tokens = tensors[TOKENS_KEY].to(hidden.device)
            lengths = tensors[LENGTHS_KEY].to(hidden.device)
            lm = next_token_loss(self.lm_head(hidden), tokens, lengths, encoder=self.encoder)
        metrics["lm_loss"] = lm.detach()
        total = lm
        gamma = self.gamma if gamma is None else float(gamma)
        if self.pathway_loss is not None and gamma > 0:
            pw = self.pathway_loss(self.encoder.embedding.weight)
            metrics["pathway_loss"] = pw.detach()
            total = total + gamma * pw
        return LossOutput(loss=total, n_obs_minibatch=n_obs, extra_metrics=metrics)
