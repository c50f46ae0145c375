"""In-silico perturbation (Geneformer's deletion and overexpression): :class:`GeneMambaPerturbMixin`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from genemamba_scvi._constants import LENGTHS_KEY, TOKENS_KEY
from genemamba_scvi._warn import user_stacklevel
from genemamba_scvi.data.perturb import PERTURB_TYPES, PerturbedTokenizer
from genemamba_scvi.model._utils import _positions, _query_for_this_call, _warn_if_untrained

#: cells tokenized at a time to find those holding a gene (tokens only, no model)
_SCAN_BATCH = 512


class GeneMambaPerturbMixin:
    """:meth:`in_silico_perturb` (mixed into ``GeneMambaModel``)."""

    @torch.inference_mode()
    def in_silico_perturb(
        self,
        genes: str | Sequence[str],
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        perturb_type: Literal["delete", "overexpress"] = "delete",
        batch_size: int | None = None,
        precision: str | int | None = "auto",
        progress_bar: bool | None = None,
    ) -> pd.DataFrame:
        """How far each cell's embedding moves when one gene is deleted from it, or moved to its top rank.

        Geneformer's in-silico perturbation (Theodoris et al. 2023; its ``InSilicoPerturber`` with
        ``emb_mode="cell"``), one gene at a time, on this model's tokens: ``"delete"`` removes the gene's token from
        the cell's ranked genes (those after it move up one rank; no new gene enters), ``"overexpress"`` puts it
        first (after ``<cls>`` with ``pooling="cls"``), taken from where it was, or added where the cell did not
        hold it among its top ``max_genes`` (the last gene then drops out of a full sequence). The result is the
        cosine similarity of the perturbed cell's embedding (:meth:`get_latent_representation`) to the
        unperturbed one: 1 is no change, lower is a larger shift.

        Parameters
        ----------
        genes
            A gene or a list of genes, by symbol or Ensembl id as the model's vocabulary matches them.
        adata
            AnnData of raw counts, as in :meth:`get_latent_representation` (``None``: the set-up AnnData).
        indices
            Cells to perturb (default: all).
        perturb_type
            ``"delete"`` (default) or ``"overexpress"``.
        batch_size, precision, progress_bar
            As in :meth:`get_latent_representation`.

        Returns
        -------
        DataFrame of cells x ``genes`` (indexed by ``obs_names``): the cosine similarity of each cell's embedding
        with the gene perturbed to its embedding as it is; 1 where the perturbation leaves the tokens as they are
        (overexpression of the cell's first gene). With ``"delete"`` it is NaN for a cell whose tokens do not hold
        the gene (with ``tokenization="ranked"``: not expressed, or ranked below its top ``max_genes``; the
        ``"published"`` tokenization keeps unexpressed genes as tokens, ranked last), or hold nothing else. Each
        gene costs one embedding pass over the cells it changes. Store a column with
        ``adata.obs["LYZ_deletion_shift"] = 1 - shift["LYZ"]`` (aligned by ``obs_names``; with ``indices``, the
        other cells get NaN too).

        Notes
        -----
        A shift says how much the model's view of the cell depends on the gene, not that the gene matters to the
        cell's biology: compare it with the shifts of genes of similar rank (deleting a top-ranked gene moves a
        mean-pooled embedding more than deleting a low-ranked one, whatever the gene), and over several cells.
        The score is the cosine of the cell embeddings as :meth:`get_latent_representation` pools them, the perturbed
        gene's own state included (and, with ``"overexpress"`` in a full sequence, the loss of the last gene).
        Geneformer's cell shift without ``cell_states_to_model`` is computed differently (per-gene similarities with
        the perturbed gene's position left out), so compare its numbers with these only in ranking.

        Examples
        --------
        >>> shift = model.in_silico_perturb(["CD3E", "LYZ"])  # doctest: +SKIP
        >>> adata.obs["CD3E_deletion_shift"] = 1 - shift["CD3E"]  # doctest: +SKIP
        """
        if perturb_type not in PERTURB_TYPES:
            raise ValueError(f"perturb_type must be one of {PERTURB_TYPES}, got {perturb_type!r}")
        names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        token_ids = self._perturbed_token_ids(names)
        _warn_if_untrained(self)
        with _query_for_this_call(self, adata):
            adata = self._validate_anndata(adata)
            cells = _positions(indices, adata.n_obs)
            changed, unchanged = self._cells_changed(adata, cells, token_ids, perturb_type)  # (checks the counts)
            out = np.full((len(cells), len(names)), np.nan)
            out[unchanged] = 1.0  # (overexpression of a cell's first gene: the same tokens, the same embedding)
            need = np.flatnonzero(changed.any(axis=1))  # only cells some gene changes are embedded as they are
            z = torch.zeros(len(cells), self.module.encoder.d_model)
            if need.size:
                z[need] = self._embed(adata, cells[need], batch_size, precision, progress_bar, checked=True)
            for j, token_id in enumerate(token_ids):
                rows = np.flatnonzero(changed[:, j])
                if rows.size == 0:
                    if perturb_type == "overexpress":  # (first in every cell already: 1 for each)
                        continue
                    warnings.warn(
                        f"no cell holds {names[j]} among its tokens: nothing to delete (NaN for every cell)",
                        UserWarning,
                        stacklevel=user_stacklevel(),
                    )
                    continue
                perturb = partial(PerturbedTokenizer, token_id=int(token_id), perturb_type=perturb_type)
                z_new = self._embed(adata, cells[rows], batch_size, precision, progress_bar, perturb, checked=True)
                out[rows, j] = torch.nn.functional.cosine_similarity(z_new.double(), z[rows].double(), dim=1).numpy()
        columns = pd.Index(names, name="gene")
        return pd.DataFrame(out, index=adata.obs_names[cells], columns=columns)

    def _perturbed_token_ids(self, names: list[str]) -> np.ndarray:
        """The token id of each gene, refusing genes the vocabulary lacks (and special or unknown-gene tokens)."""
        if not names:
            raise ValueError("genes is empty: name one or more genes to perturb")
        token_ids = self.vocab_.lookup(names)
        known = token_ids[token_ids >= 0]
        if len(set(known.tolist())) < len(known):  # (also one gene under two names: LYZ, lyz, its Ensembl id)
            twice = [g for g, t in zip(names, token_ids, strict=True) if t >= 0 and (known == t).sum() > 1]
            raise ValueError(f"genes names a gene more than once: {twice}")
        unk = getattr(self, "_unk_token", None)
        unk_id = None if unk is None else self.vocab_[unk]
        bad = [g for g, t in zip(names, token_ids, strict=True) if t < self.vocab_.n_special or t == unk_id]
        if bad:
            raise ValueError(
                f"{len(bad)} of the genes to perturb are not genes of this model's vocabulary: {bad[:10]} (it holds "
                f"{len(self.vocab_.genes)} genes, e.g. {self.vocab_.genes[:3]}; see model.vocab_.genes; a model "
                "built on an AnnData leaves out its genes without a count)"
            )
        return token_ids

    def _cells_changed(
        self, adata: AnnData, cells: np.ndarray, token_ids: np.ndarray, perturb_type: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two ``(cells, genes)`` masks: the perturbation changes the cell's tokens; it leaves them as they are.

        Changed: deletion of a gene the cell holds besides others, overexpression of a gene not first; unchanged:
        overexpression of the cell's first gene.
        """
        changed = np.zeros((len(cells), len(token_ids)), dtype=bool)
        unchanged = np.zeros_like(changed)
        start = int(self._config["pooling"] == "cls")
        done = 0
        for batch in self._token_loader(adata, cells, _SCAN_BATCH):
            tokens = batch[TOKENS_KEY].numpy()
            lengths = batch[LENGTHS_KEY].numpy()
            real = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
            for j, token_id in enumerate(token_ids):
                where = real & (tokens == token_id)
                if perturb_type == "delete":  # holds the gene, and some other gene
                    hit = where.any(1) & (lengths - start > 1)
                else:  # the gene not already first
                    hit = ~where[:, start] if tokens.shape[1] > start else np.ones(len(tokens), dtype=bool)
                    unchanged[done : done + len(tokens), j] = ~hit
                changed[done : done + len(tokens), j] = hit
            done += len(tokens)
        return changed, unchanged
