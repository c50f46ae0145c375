"""Token corpus: :class:`TokenCorpus` reads a corpus directory back (memory-mapped, numpy only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._corpus_io import (
    MEDIANS_FILE,
    VOCAB_FILE,
    shard_problems,
    token_dtype,
)
from ._corpus_manifest import Manifest
from .vocab import GeneVocab

__all__ = ["TokenCorpus"]


# ---------------------------------------------------------------------------------------------- reading back
class TokenCorpus:
    """Read-only, memory-mapped view of a corpus written by :func:`build_corpus` (numpy only).

    Cells are addressed by a *cell index* ``0 .. n_cells - 1`` over the non-empty rows of all shards in
    manifest order. Shards are opened lazily with ``np.load(mmap_mode="r")``; the object pickles without
    its memory maps, so it can be sent to data-loader worker processes.

    Parameters
    ----------
    root
        Corpus directory.
    verify
        Re-hash every shard and compare with the manifest (reads the whole corpus once).

    Raises
    ------
    ValueError
        If the corpus is incomplete (re-run :func:`build_corpus` to finish it) or a shard is corrupt.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = False):
        self.root = Path(root).expanduser().resolve()
        self.manifest = Manifest.read(self.root)
        if not self.manifest.is_complete:
            raise ValueError(
                f"the corpus in {str(self.root)!r} is incomplete ({self.manifest.n_rows} of "
                f"{self.manifest.n_input_cells} cells written): re-run build_corpus with the same arguments to "
                "finish it"
            )
        self.max_genes = self.manifest.max_genes
        problems = {
            f"{self.manifest.shard_path(s).name}/{name}": why
            for s in self.manifest.shards
            for name, why in shard_problems(self.manifest.shard_path(s), int(s["n"])).items()
        }
        missing = [path for path, why in problems.items() if why == "missing"]
        if missing:  # found now, not as numpy's FileNotFoundError in the middle of a training run
            raise ValueError(
                f"the corpus in {str(self.root)!r} lacks {len(missing)} shard file(s) its manifest lists (e.g. "
                f"{missing[:3]}): restore them, or build the corpus again into an empty directory"
            )
        damaged = [f"{path}: {why}" for path, why in problems.items()]
        if damaged:  # found now, not as numpy's "mmap length is greater than file size" naming no file
            raise ValueError(
                f"the corpus in {str(self.root)!r} has {len(damaged)} damaged shard file(s) (e.g. {damaged[:2]}): "
                "build the corpus again into an empty directory (a disk that filled up, or a copy cut short?)"
            )
        n = np.array([s["n"] for s in self.manifest.shards], dtype=np.int64)
        self._offsets = np.zeros(n.size + 1, dtype=np.int64)
        np.cumsum(n, out=self._offsets[1:])
        # global row ids of empty rows (normally none); cell index -> row: v + #empties before it
        empties = []
        for i, s in enumerate(self.manifest.shards):
            if s["n_empty"]:
                lengths = np.load(self.manifest.shard_path(s) / "lengths.npy", mmap_mode="r")
                empties.append(np.flatnonzero(np.asarray(lengths) == 0) + self._offsets[i])
        self._empty_rows = np.concatenate(empties) if empties else np.zeros(0, dtype=np.int64)
        self._empty_key = self._empty_rows - np.arange(self._empty_rows.size)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if verify:
            self.verify()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return self.n_cells

    @property
    def n_cells(self) -> int:
        """Number of trainable (non-empty) cells."""
        return int(self._offsets[-1]) - int(self._empty_rows.size)

    @property
    def vocab(self) -> GeneVocab:
        """The corpus vocabulary."""
        return GeneVocab.from_json(self.root / VOCAB_FILE)

    @property
    def gene_medians(self) -> np.ndarray:
        """Medians per token id used to tokenize the corpus."""
        return np.load(self.root / MEDIANS_FILE)

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._maps.get(i)
        if m is None:
            d = self.manifest.shard_path(i)
            m = (np.load(d / "tokens.npy", mmap_mode="r"), np.load(d / "lengths.npy", mmap_mode="r"))
            self._maps[i] = m
        return m

    def rows_of(self, cells: np.ndarray) -> np.ndarray:
        """Global row ids (over all shards, empty rows included) of cell indices."""
        cells = np.asarray(cells, dtype=np.int64)
        if cells.size and (cells.min() < 0 or cells.max() >= self.n_cells):
            raise IndexError(f"cell index out of range [0, {self.n_cells})")
        if self._empty_rows.size == 0:
            return cells
        return cells + np.searchsorted(self._empty_key, cells, side="right")

    def cell_ids(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(file index, row in that file)`` of cell indices (trace a cell to its input file)."""
        rows = self.rows_of(cells)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        file_of = np.array([s["file"] for s in self.manifest.shards], dtype=np.int64)
        start = np.array([s["row_start"] for s in self.manifest.shards], dtype=np.int64)
        return file_of[shard], start[shard] + rows - self._offsets[shard]

    def lengths_of(self, cells: np.ndarray) -> np.ndarray:
        """Token counts (``int32``) of cell indices, in the order given (reads only the length arrays)."""
        rows = self.rows_of(cells)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.zeros(rows.size, dtype=np.int32)
        for i in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == i)
            out[sel] = self._shard(i)[1][rows[sel] - self._offsets[i]]
        return out

    def get(self, cells: np.ndarray, trim: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths of cell indices, in the order given.

        Parameters
        ----------
        cells
            Cell indices (one index: one row, ``n = 1``).
        trim
            Cut the token columns to the longest cell of the request.

        Returns
        -------
        ``tokens`` (storage dtype, ``[n, L]``) and ``lengths`` (``int32 [n]``).
        """
        rows = self.rows_of(np.atleast_1d(np.asarray(cells)))
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        tokens = np.zeros((rows.size, self.max_genes), dtype=token_dtype(int(self.manifest.config["vocab_size"])))
        lengths = np.zeros(rows.size, dtype=np.int32)
        for i in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == i)
            local = rows[sel] - self._offsets[i]
            order = np.argsort(local, kind="stable")  # increasing offsets: sequential reads of the map
            tok_map, len_map = self._shard(i)
            tokens[sel[order]] = tok_map[local[order]]
            lengths[sel[order]] = len_map[local[order]]
        if trim:
            tokens = tokens[:, : max(int(lengths.max(initial=0)), 1)]
        return tokens, lengths

    def verify(self) -> None:
        """Re-hash every shard; raise ``ValueError`` naming the first corrupt one."""
        for i, s in enumerate(self.manifest.shards):
            tok, lens = self._shard(i)
            digest = hashlib.sha256()
            for a in range(0, tok.shape[0], 8192):
                digest.update(np.ascontiguousarray(tok[a : a + 8192]).tobytes())
            digest.update(np.ascontiguousarray(lens).tobytes())
            if digest.hexdigest() != s["sha256"]:
                raise ValueError(f"shard {s['name']} of {str(self.root)!r} is corrupt (sha256 mismatch)")
