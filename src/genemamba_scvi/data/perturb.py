"""In-silico perturbation of ranked gene tokens: a gene deleted from a cell, or moved to its top rank.

The operations are Geneformer's (Theodoris et al. 2023, "Transfer learning enables predictions in network biology",
Nature 618; its ``InSilicoPerturber``): ``"delete"`` removes the gene's token from the cell's sequence (the genes
after it move up one rank; no new gene enters), ``"overexpress"`` removes it where it is and puts it first (after
``<cls>`` where the cell has one), the sequence cut back to its width where that made it longer. Written here on
the padded token arrays of :func:`~genemamba_scvi.data.tokenize.rank_tokenize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["PERTURB_TYPES", "PerturbedTokenizer", "perturb_tokens"]

PERTURB_TYPES = ("delete", "overexpress")


def perturb_tokens(
    tokens: np.ndarray,
    lengths: np.ndarray,
    token_id: int,
    perturb_type: Literal["delete", "overexpress"],
    start: int = 0,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells' tokens with one gene deleted or moved to the top rank.

    Parameters
    ----------
    tokens
        ``(n_cells, width)`` token ids, each row's first ``lengths[i]`` real, the rest ``pad_id``.
    lengths
        Real tokens of each row.
    token_id
        The gene's token id.
    perturb_type
        ``"delete"``: the gene's token removed (a cell without it is unchanged); ``"overexpress"``: the gene's token
        at position ``start`` whether or not the cell held it, the cell's other genes after it in their order, the
        last one dropped where the row would pass ``width``.
    start
        First gene position (1 where position 0 is ``<cls>``, which stays in place).
    pad_id
        Token id of padding.

    Returns
    -------
    New ``tokens`` (same shape and dtype) and ``lengths``; the inputs are not changed.
    """
    if perturb_type not in PERTURB_TYPES:
        raise ValueError(f"perturb_type must be one of {PERTURB_TYPES}, got {perturb_type!r}")
    tokens = np.asarray(tokens)
    lengths = np.asarray(lengths)
    n_cells, width = tokens.shape
    real = np.arange(width)[None, :] < lengths[:, None]
    hit = real & (tokens == token_id)
    hit[:, :start] = False  # (<cls> is never a gene)
    # the gene's positions sorted to the end of each row, the others kept in order (a stable sort of a 0/1 key)
    order = np.argsort(hit, axis=1, kind="stable")
    kept = np.take_along_axis(tokens, order, axis=1)
    new_lengths = lengths - hit.sum(axis=1)
    if perturb_type == "overexpress":
        kept = np.concatenate(
            [kept[:, :start], np.full((n_cells, 1), token_id, dtype=tokens.dtype), kept[:, start:]], axis=1
        )[:, :width]
        new_lengths = np.minimum(np.maximum(new_lengths, start) + 1, width)
    kept[np.arange(width)[None, :] >= new_lengths[:, None]] = pad_id
    return kept.astype(tokens.dtype, copy=False), new_lengths.astype(lengths.dtype, copy=False)


@dataclass(frozen=True)
class PerturbedTokenizer:
    """A tokenizer (``rows -> (tokens, lengths)``) whose cells come out with one gene perturbed.

    Attributes
    ----------
    tokenizer
        The model's tokenizer for the AnnData (a :class:`~genemamba_scvi.dataloader.TokenizerSpec`).
    token_id
        The gene's token id.
    perturb_type
        ``"delete"`` or ``"overexpress"`` (:func:`perturb_tokens`).
    """

    tokenizer: Any
    token_id: int
    perturb_type: str

    def __call__(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths of the cells in ``rows`` (a CSR block of counts), the gene perturbed in each."""
        tokens, lengths = self.tokenizer(rows)
        start = int(bool(self.tokenizer.add_cls))
        return perturb_tokens(tokens, lengths, self.token_id, self.perturb_type, start=start)  # type: ignore[arg-type]
