"""Gene vocabulary: special tokens, gene <-> token id, and matching a dataset's genes to it.

Token ids: ``<pad>`` = 0, ``<cls>`` = 1, ``<mask>`` = 2, then the genes in order from id 3.
Vocabulary genes are kept exactly as given (gene symbols, Ensembl ids, with or without version).

:meth:`GeneVocab.match` maps a dataset's ``var_names`` (symbols or Ensembl ids, versioned or not, even
mixed) to token ids. Every name is resolved on its own, in this order of priority:

1. ``direct``: the name is a vocabulary gene.
2. ``version``: both are Ensembl ids and agree once version suffixes are stripped and case ignored
   (``ENSG00000141510.12`` -> ``ENSG00000141510``; ``_PAR_Y`` suffixes are kept).
3. ``mapped`` through GENCODE v44 with exact case: an Ensembl id whose GENCODE symbol is a vocabulary gene, or a
   symbol whose GENCODE id is (a gene's own id outranks a case variant of its symbol: a query holding
   ``ENSG00000273045`` and an unrelated ``C2ORF15`` column gives C2orf15's token to the former).
4. ``case``: a symbol that equals exactly one vocabulary gene when case is ignored.
5. ``mapped``: through the other embedded tables (see :func:`genemamba_scvi.datasets.load_gene_id_table`), in
   sub-steps of decreasing priority: org.Hs.eg.db 3.16.0 with exact case; GENCODE then org.Hs.eg.db ignoring case;
   then one more hop through both tables (symbol -> id -> other symbol of that id, e.g. a renamed gene;
   id -> symbol -> other ids). A match through org.Hs.eg.db or that hop never joins two genes that GENCODE v44
   holds as different genes (org.Hs.eg.db lists some paralogous or overlapping loci's ids under one symbol, e.g.
   ``HLA-DQA1`` with ids of ``HLA-DQA2``).

A name never takes a token already claimed at a higher priority (e.g. ``C1ORF220`` yields to
``C1orf220``); two names that claim the same token at the same priority are a collision.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from genemamba_scvi._constants import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from genemamba_scvi.data.gene_ids import _distinct_genes, _gene_tables, strip_ensembl_version

__all__ = [
    "CLS_TOKEN",
    "MASK_TOKEN",
    "MATCH_METHODS",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "GeneMatch",
    "GeneVocab",
    "strip_ensembl_version",
]


MATCH_METHODS: tuple[str, ...] = ("direct", "version", "case", "mapped")
"""Names of the match stages, in priority order; ``GeneMatch.method`` holds their index (-1: unmatched)."""

#: What gene ids a vocabulary reads, in the errors of a failed match (mouse Ensembl ids are Ensembl ids: panel probe)
GENE_ID_KINDS = (
    "gene symbols or Ensembl gene ids of the vocabulary's species (a human vocabulary, as GeneMamba's and "
    "Geneformer's published ones, reads human symbols and ENSG... ids; mouse ENSMUSG... ids never match it)"
)

# internal match stages in priority order -> reported method (index into MATCH_METHODS)
# 3/4: GENCODE / org.Hs.eg.db table, exact case; 5/6: the same ignoring case; 7: two hops through the union
_STAGE_METHOD: tuple[int, ...] = (0, 1, 2, 3, 3, 3, 3, 3)
# the order the stages are tried in: GENCODE's exact mapping (3) before the case-insensitive symbol (2), see above
_STAGE_ORDER: tuple[int, ...] = (0, 1, 3, 2, 4, 5, 6, 7)

_FORMAT = "genemamba-scvi/vocab"
_FORMAT_VERSION = 1
_AMBIGUOUS = -2


def _examples(items: Iterable[Any], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dup: dict[str, None] = {}
    for g in names:
        if g in seen:
            dup[g] = None
        seen.add(g)
    return list(dup)


@dataclass(frozen=True)
class GeneMatch:
    """Result of :meth:`GeneVocab.match`.

    Attributes
    ----------
    var_names
        The dataset's gene names, in order.
    token_ids
        ``int64`` array of ``len(var_names)``: the token id of each gene, -1 where it is not in the vocabulary.
    method
        ``int8`` array: index into :data:`MATCH_METHODS` of the stage that matched each gene, -1 if unmatched.
    n_vocab_genes
        Number of genes in the vocabulary (specials excluded).
    min_overlap
        The threshold that was applied.
    collisions
        ``(dropped var_name, kept var_name, vocabulary gene)`` for names dropped because another name of the
        same priority took their token (only with ``on_collision="first"``).
    yielded
        ``(dropped var_name, kept var_name, vocabulary gene)`` for names whose gene another name holds at a higher
        priority: the same gene twice in the data (e.g. a symbol column and an Ensembl-id column of one gene).
    mapped
        ``(var_name, vocabulary gene)`` for names matched through the symbol <-> Ensembl tables (another name of
        the gene, e.g. an alias or the gene's Ensembl id), listed in :meth:`report` so that each can be checked.
    """

    var_names: list[str]
    token_ids: np.ndarray
    method: np.ndarray
    n_vocab_genes: int
    min_overlap: float
    collisions: list[tuple[str, str, str]] = field(default_factory=list)
    yielded: list[tuple[str, str, str]] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def matched(self) -> np.ndarray:
        """Boolean mask of the var_names that have a token."""
        return self.token_ids >= 0

    @property
    def n_matched(self) -> int:
        """Number of var_names with a token."""
        return int(self.matched.sum())

    @property
    def overlap(self) -> float:
        """Fraction of var_names with a token."""
        return self.n_matched / max(len(self.var_names), 1)

    @property
    def unmatched_names(self) -> list[str]:
        """var_names without a token (not in the vocabulary, or dropped as collisions)."""
        return [g for g, t in zip(self.var_names, self.token_ids.tolist()) if t < 0]

    def counts(self) -> dict[str, int]:
        """Number of var_names matched by each stage (keys of :data:`MATCH_METHODS`) and ``"unmatched"``."""
        out = {name: int((self.method == i).sum()) for i, name in enumerate(MATCH_METHODS)}
        out["unmatched"] = int((self.method < 0).sum())
        return out

    def report(self, unknown_as: str | None = None) -> str:
        """Human-readable coverage report: matched (by stage), dropped, duplicates, examples.

        ``unknown_as``: the token that genes outside the vocabulary take (the published ``[UNK]``), when they are
        not dropped.
        """
        c = self.counts()
        n = len(self.var_names)
        dups = [*self.collisions, *self.yielded]
        n_dup = len(dups)
        n_missing = c["unmatched"] - n_dup
        dup_names = {d for d, _, _ in dups}
        missing = [g for g in self.unmatched_names if g not in dup_names]
        n_hit = len(np.unique(self.token_ids[self.token_ids >= 0]))
        lines = [
            f"GeneMamba gene matching: {self.n_matched:,} of {n:,} var_names matched "
            f"({100 * self.overlap:.1f}%; min_overlap {100 * self.min_overlap:.0f}%)",
            f"  directly:                          {c['direct']:>8,}",
            f"  after stripping version suffixes:  {c['version']:>8,}",
            f"  case-insensitively (symbols):      {c['case']:>8,}",
            f"  via symbol<->Ensembl mapping:      {c['mapped']:>8,}"
            + (f"  e.g. {_examples([f'{a}->{b}' for a, b in self.mapped])}" if self.mapped else ""),
            f"  {'dropped, not in vocabulary:' if unknown_as is None else f'not in vocabulary, as {unknown_as}:':<35}"
            f"{n_missing:>8,}" + (f"  e.g. {_examples(missing)}" if missing else ""),
            f"  dropped, duplicate of another gene:{n_dup:>8,}"
            + (f"  e.g. {_examples([f'{d}->{g} (kept {k})' for d, k, g in dups])}" if n_dup else ""),
            f"vocabulary coverage: {n_hit:,} of {self.n_vocab_genes:,} vocabulary genes present in the data "
            f"({100 * n_hit / max(self.n_vocab_genes, 1):.1f}%)",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


class GeneVocab:
    """Vocabulary of gene tokens: ``<pad>`` = 0, ``<cls>`` = 1, ``<mask>`` = 2, genes from id 3.

    Parameters
    ----------
    genes
        Gene identifiers (symbols or Ensembl ids), kept exactly as given. Must be unique non-empty strings
        that are not special tokens.

    Attributes
    ----------
    genes
        The genes, in token order (token id of ``genes[i]`` is ``i + n_special``).
    pad_id, cls_id, mask_id
        Ids of the special tokens (0, 1, 2).
    n_special
        Number of special tokens (3).

    Examples
    --------
    >>> vocab = GeneVocab(["CD3E", "MS4A1", "ENSG00000141510"])
    >>> len(vocab), vocab["MS4A1"]
    (6, 4)
    >>> vocab.match(["ENSG00000198851.10", "TP53", "MS4A1", "XIST"], min_overlap=0.5).token_ids.tolist()
    [3, 5, 4, -1]
    """

    pad_id: int = 0
    cls_id: int = 1
    mask_id: int = 2
    n_special: int = len(SPECIAL_TOKENS)
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS

    def __init__(self, genes: Sequence[str]) -> None:
        genes = list(genes)
        bad = [g for g in genes if not isinstance(g, str) or not g.strip()]
        if bad:
            raise ValueError(f"gene names must be non-empty strings; got {_examples(bad)}")
        special = [g for g in genes if g in SPECIAL_TOKENS]
        if special:
            raise ValueError(f"gene names may not be special tokens {SPECIAL_TOKENS}; got {_examples(special)}")
        dup = _duplicates(genes)
        if dup:
            raise ValueError(f"duplicated genes in vocabulary: {_examples(dup)}; make the gene names unique first")
        self.genes: list[str] = genes
        self._index: dict[str, int] = {g: i + self.n_special for i, g in enumerate(genes)}
        self._by_base_cache: dict[str, int] | None = None
        self._by_lower_cache: dict[str, int] | None = None

    # ------------------------------------------------------------------ basics
    @classmethod
    def from_var_names(cls, var_names: Iterable[Any]) -> GeneVocab:
        """Vocabulary of a dataset's genes, in ``var_names`` order (names kept as given).

        Raises
        ------
        ValueError
            If ``var_names`` has duplicates (examples are named).
        """
        names = [str(g) for g in var_names]
        dup = _duplicates(names)
        if dup:
            raise ValueError(
                f"var_names has {len(dup)} duplicated names, e.g. {_examples(dup)}; "
                "call adata.var_names_make_unique() or use unique gene ids"
            )
        return cls(names)

    def __len__(self) -> int:
        return self.n_special + len(self.genes)

    def __getitem__(self, gene: str) -> int:
        if gene in self._index:
            return self._index[gene]
        if gene in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(gene)
        raise KeyError(f"gene {gene!r} is not in the vocabulary (use vocab.match() to map symbols/Ensembl ids)")

    def __contains__(self, gene: object) -> bool:
        return gene in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocab) and self.genes == other.genes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GeneVocab({len(self.genes)} genes + {self.n_special} special tokens, e.g. {_examples(self.genes, 3)})"

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order (special tokens, then genes)."""
        return [*SPECIAL_TOKENS, *self.genes]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of the given ids.

        Raises
        ------
        ValueError
            For an id outside ``[0, len(vocab))`` (e.g. the -1 of an unmatched gene).
        """
        toks = self.tokens
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(toks):
                raise ValueError(f"token id {i} is outside the vocabulary (0..{len(toks) - 1})")
            out.append(toks[i])
        return out

    # ------------------------------------------------------------- persistence
    def sha256(self) -> str:
        """SHA-256 hex digest of the gene list (UTF-8, joined by newlines; special tokens are fixed)."""
        return hashlib.sha256("\n".join(self.genes).encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation (format tag, special tokens, genes, sha256)."""
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "special_tokens": list(SPECIAL_TOKENS),
            "genes": list(self.genes),
            "sha256": self.sha256(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeneVocab:
        """Inverse of :meth:`to_dict`; checks the format, the special tokens and the checksum.

        Raises
        ------
        ValueError
            If the dictionary is not a GeneMamba vocabulary, its special tokens differ, or its sha256
            does not match its gene list.
        """
        if not isinstance(d, dict) or "genes" not in d:
            raise ValueError("not a GeneMamba vocabulary: expected a dict with a 'genes' list")
        if d.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"not a GeneMamba vocabulary: format is {d.get('format')!r}, expected {_FORMAT!r}")
        if int(d.get("format_version", _FORMAT_VERSION)) > _FORMAT_VERSION:
            raise ValueError(
                f"vocabulary format_version {d['format_version']} is newer than this genemamba-scvi understands "
                f"({_FORMAT_VERSION}); upgrade genemamba-scvi"
            )
        special = tuple(d.get("special_tokens", SPECIAL_TOKENS))
        if special != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary special tokens {special} differ from {SPECIAL_TOKENS}")
        vocab = cls(d["genes"])
        expected = d.get("sha256")
        if expected is not None and expected != vocab.sha256():
            raise ValueError(
                f"vocabulary checksum mismatch: file says sha256 {expected[:12]}..., gene list gives "
                f"{vocab.sha256()[:12]}... (file edited or corrupted)"
            )
        return vocab

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (see :meth:`to_dict`)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> GeneVocab:
        """Read a vocabulary written by :meth:`to_json` (checksum verified)."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)!r}: {e}") from None

    # ---------------------------------------------------------------- matching
    @property
    def _by_base(self) -> dict[str, int]:
        if self._by_base_cache is None:
            idx: dict[str, int] = {}
            for g, i in self._index.items():
                base = strip_ensembl_version(g)
                if base is not None:
                    idx[base] = _AMBIGUOUS if base in idx else i
            self._by_base_cache = idx
        return self._by_base_cache

    @property
    def _by_lower(self) -> dict[str, int]:
        if self._by_lower_cache is None:
            idx: dict[str, int] = {}
            for g, i in self._index.items():
                if strip_ensembl_version(g) is None:
                    key = g.strip().lower()
                    idx[key] = _AMBIGUOUS if key in idx else i
            self._by_lower_cache = idx
        return self._by_lower_cache

    def _symbol_candidates(self, symbol: str) -> list[int]:
        i = self._index.get(symbol)
        if i is not None:
            return [i]
        i = self._by_lower.get(symbol.lower(), -1)
        return [i] if i >= 0 else []

    def _id_candidates(self, ens: str) -> list[int]:
        i = self._by_base.get(ens, -1)
        return [i] if i >= 0 else []

    def _candidates(self, name: str, stage: int) -> list[int]:
        """Candidate token ids of one name at one internal stage (see ``_STAGE_METHOD``), best first."""
        if stage == 0:
            i = self._index.get(name)
            return [] if i is None else [i]
        base = strip_ensembl_version(name)
        if stage == 1:
            return [] if base is None else self._id_candidates(base)
        if stage == 2:
            if base is not None:
                return []
            i = self._by_lower.get(name.strip().lower(), -1)
            return [i] if i >= 0 else []
        # stages 3-7: symbol <-> Ensembl id through the embedded tables (GENCODE before org.Hs.eg.db)
        gencode, orghs, union = _gene_tables()
        table = union if stage == 7 else (gencode, orghs)[(stage - 3) % 2]
        any_case = stage in (5, 6)
        cands: list[int] = []
        if base is not None:
            syms = table.id2sym.get(base.removesuffix("_PAR_Y"), [])
            if stage == 7:  # id -> symbol -> other ids of that symbol
                cands = [c for s in syms for e in table.sym2id.get(s, []) for c in self._id_candidates(e)]
            elif any_case:
                cands = [i for s in syms if (i := self._by_lower.get(s.lower(), -1)) >= 0]
            else:
                cands = [self._index[s] for s in syms if s in self._index]
        else:
            sym = name.strip()
            if stage == 7:  # symbol -> ids -> other symbols of those ids (renamed genes, aliases)
                ids = table.sym2id.get(sym) or table.sym2id_lower.get(sym.lower(), [])
                cands = [c for e in ids for s in table.id2sym.get(e, []) for c in self._symbol_candidates(s)]
            else:
                ids = table.sym2id_lower.get(sym.lower(), []) if any_case else table.sym2id.get(sym, [])
                cands = [c for e in ids for c in self._id_candidates(e)]
        if stage in (4, 6, 7):  # org.Hs.eg.db and the union's hop: never from one current GENCODE gene to another
            cands = [c for c in cands if not _distinct_genes(name, self.genes[c - self.n_special])]
        return list(dict.fromkeys(cands))

    def lookup(self, names: Iterable[Any]) -> np.ndarray:
        """Token ids of gene names with the same resolution rules as :meth:`match`, without its checks.

        Duplicates and several names mapping to one token are allowed here (used for gene sets).

        Returns
        -------
        ``int64`` array, -1 for names not in the vocabulary.
        """
        out = []
        for name in names:
            name = str(name)
            tok = -1
            for stage in _STAGE_ORDER:
                cands = self._candidates(name, stage)
                if cands:
                    tok = cands[0]
                    break
            out.append(tok)
        return np.asarray(out, dtype=np.int64)

    def match(
        self,
        var_names: Iterable[Any],
        min_overlap: float = 0.5,
        on_collision: Literal["raise", "first"] = "raise",
    ) -> GeneMatch:
        """Map a dataset's genes to token ids.

        Parameters
        ----------
        var_names
            The dataset's gene names: symbols or Ensembl ids, with or without version suffix, or a mix.
            Each name is resolved on its own (see the module docstring for the rules and their priority).
        min_overlap
            Smallest accepted fraction of ``var_names`` that must match (default 0.5). A dataset with no
            match at all is always refused.
        on_collision
            When two names of the same priority resolve to the same token (e.g. ``ENSG...1.1`` and
            ``ENSG...1.2``): ``"raise"`` (default) raises, ``"first"`` keeps the first name and drops the
            others (they are listed in the report). A name never takes a token claimed by a higher-priority
            match (e.g. an alias mapped through the tables yields to the exact gene).

        Returns
        -------
        :class:`GeneMatch` with ``token_ids`` (``int64``, -1 for genes not in the vocabulary) and ``report()``.

        Raises
        ------
        ValueError
            If ``var_names`` has duplicates, if two names collide on one token (``on_collision="raise"``), or
            if fewer than ``min_overlap`` of the names match (the message says how many matched of how many,
            with examples of unmatched names and of vocabulary genes).
        """
        if on_collision not in ("raise", "first"):
            raise ValueError(f"on_collision must be 'raise' or 'first', got {on_collision!r}")
        if not 0.0 <= float(min_overlap) <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
        names = [str(g) for g in var_names]
        n = len(names)
        if n == 0:
            raise ValueError("var_names is empty: the dataset has no genes")
        dup = _duplicates(names)
        if dup:
            raise ValueError(
                f"var_names has {len(dup)} duplicated names, e.g. {_examples(dup)}; "
                "call adata.var_names_make_unique() or use unique gene ids (e.g. Ensembl ids)"
            )

        token_ids = np.full(n, -1, dtype=np.int64)
        method = np.full(n, -1, dtype=np.int8)
        claimed: dict[int, int] = {}  # token id -> position of the var_name holding it
        collisions: list[tuple[str, str, str]] = []
        first_yield: dict[int, int] = {}  # position -> the token it could not take (claimed at a higher priority)
        pending = list(range(n))
        for stage in _STAGE_ORDER:
            how = _STAGE_METHOD[stage]
            if not pending:
                break
            stage_claims: dict[int, int] = {}
            conflicts: list[tuple[int, int, int]] = []
            still: list[int] = []
            for pos in pending:
                found = self._candidates(names[pos], stage)
                cands = [c for c in found if c not in claimed]
                if not cands:
                    if found:
                        first_yield.setdefault(pos, found[0])
                    still.append(pos)
                    continue
                tok = cands[0]
                if tok in stage_claims:
                    conflicts.append((pos, stage_claims[tok], tok))
                    continue
                stage_claims[tok] = pos
                token_ids[pos] = tok
                method[pos] = how
            if conflicts:
                if on_collision == "raise":
                    shown = "; ".join(
                        f"{names[b]!r} and {names[a]!r} -> {self.tokens[t]!r}" for a, b, t in conflicts[:5]
                    )
                    raise ValueError(
                        f"{len(conflicts)} var_names map to a token already taken by another var_name "
                        f"({MATCH_METHODS[how]} match): {shown}. Remove one column of each pair from the data (or sum "
                        "the two into one); called directly, GeneVocab.match(..., on_collision='first') keeps the first"
                    )
                collisions += [(names[a], names[b], self.tokens[t]) for a, b, t in conflicts]
            claimed.update(stage_claims)
            pending = still

        yielded = [
            (names[pos], names[claimed[tok]], self.tokens[tok]) for pos, tok in first_yield.items() if method[pos] < 0
        ]
        result = GeneMatch(
            var_names=names,
            token_ids=token_ids,
            method=method,
            n_vocab_genes=len(self.genes),
            min_overlap=float(min_overlap),
            collisions=collisions,
            yielded=yielded,
            mapped=[
                (names[i], self.genes[token_ids[i] - self.n_special])
                for i in np.flatnonzero(method == MATCH_METHODS.index("mapped"))
            ],
        )
        n_matched = result.n_matched
        if n_matched == 0 or result.overlap < min_overlap:
            unmatched = result.unmatched_names
            # (with no gene matched, no threshold is to blame: bad-input probe, session 33, was told to lower 0%)
            share = (
                f"none of the {n} var_names match the vocabulary of {len(self.genes)} genes. "
                if n_matched == 0
                else f"only {n_matched} of {n} var_names ({100 * result.overlap:.1f}%) match the vocabulary of "
                f"{len(self.genes)} genes; min_overlap is {100 * min_overlap:.0f}%. "
            )
            lower = (
                ""
                if n_matched == 0
                else ", or lower min_overlap (a model built on an AnnData holds only its genes with a count: its own "
                "unfiltered matrix matches with min_overlap=0)"
            )
            raise ValueError(
                f"{share}Unmatched var_names e.g. {_examples(unmatched)}; vocabulary genes e.g. "
                f"{_examples(self.genes)}. var_names must be {GENE_ID_KINDS} (set adata.var_names from the right "
                f"adata.var column){lower}"
            )
        return result
