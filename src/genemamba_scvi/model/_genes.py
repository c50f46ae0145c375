"""Genes and tokens of :class:`~genemamba_scvi.model.GeneMambaModel`: gene ids, a query's genes, tokenizer settings."""

from __future__ import annotations

import dataclasses
import numbers
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from genemamba_scvi._config import MODEL_ARG_FIELDS
from genemamba_scvi._warn import user_stacklevel as _user_stacklevel
from genemamba_scvi.data.gene_ids import warn_if_case_only
from genemamba_scvi.data.normalize import compute_gene_medians, count_matrix, genes_with_counts
from genemamba_scvi.data.tokenize import TOKENIZER_SETTINGS, TokenizerSettings, with_fallback
from genemamba_scvi.data.vocab import GENE_ID_KINDS
from genemamba_scvi.dataloader import TokenizerSpec
from genemamba_scvi.model._utils import _positions

#: Default of ``min_gene_overlap`` (also written by :meth:`GeneMambaModel.pretrain`).
_MIN_GENE_OVERLAP = 0.5

#: The keys of a saved model's ``config.json`` in the order every version wrote them: ``max_genes``, the
#: architecture (:data:`~genemamba_scvi.nn.config.MODEL_ARG_FIELDS`), ``min_gene_overlap``, then the other tokenizer
#: settings. ``GeneMambaModel.__init__`` builds the configuration in this order, and a saved configuration with a key
#: outside it (a newer version's setting) is refused at load.
CONFIG_KEYS: tuple[str, ...] = (
    "max_genes",
    *MODEL_ARG_FIELDS,
    "min_gene_overlap",
    *(name for name in TOKENIZER_SETTINGS if name != "max_genes"),
)


def config_in_order(values: dict[str, Any]) -> dict[str, Any]:
    """A model's ``config.json`` from ``values`` (every key of :data:`CONFIG_KEYS`, in that order; others dropped)."""
    return {key: values[key] for key in CONFIG_KEYS}


#: The match of a query's genes to the vocabulary is kept for the gene lists a model used most recently (by the
#: genes, their column, ``min_gene_overlap``, the unknown token, the vocabulary and which genes have a median): a
#: service's requests share one gene list, whose match took a 1-cell request most of its time (32,786 genes: ~21 ms
#: against a model of all of them, ~266 ms against a 9,810-gene model, one loaded CPU thread; serving probe,
#: ``benchmarks/request_latency.py``). False: match every call (an ablation).
_GENE_MATCH_CACHE = True
_GENE_MATCH_CACHE_SIZE = 8

#: Unknown genes (with counts) beyond this share of an AnnData's genes (with counts) get the whole match report.
_UNKNOWN_REPORT_SHARE = 0.05

#: A query holding fewer of the model's genes than this share gets a warning (:func:`_check_gene_coverage`).
_GENE_COVERAGE_WARN = 0.9


def _check_known_genes_expressed(
    adata: AnnData, layer: str | None, token_ids: np.ndarray, indices: Sequence[int] | None = None
) -> None:
    """Refuse cells whose counts all fall in genes outside the vocabulary (they have no tokens to embed)."""
    known = np.asarray(token_ids) >= 0
    if known.all():
        return  # cells without any count are refused by _validate_count_layer
    known_totals = np.asarray(count_matrix(adata, layer) @ known.astype(np.float32)).ravel()
    idx = _positions(indices, adata.n_obs)
    bad = idx[known_totals[idx] == 0]
    if bad.size:
        where = "adata.X" if layer is None else f"layer {layer!r}"
        raise ValueError(
            f"{bad.size} of {idx.size} cells have counts in {where} only in genes that are not in the model's "
            f"vocabulary (e.g. {adata.obs_names[bad[:3]].tolist()}), so GeneMamba has no gene tokens to embed them. "
            "Check the gene ids (symbols or Ensembl ids in var_names, or gene_id_key=), or remove those cells."
        )


def _check_gene_ids(adata: AnnData, gene_id_key: str | None) -> None:
    """Refuse a missing ``gene_id_key`` column or duplicated gene ids, with a fix that works for where they are."""
    if gene_id_key is not None and gene_id_key not in adata.var:
        raise ValueError(f"gene_id_key={gene_id_key!r} is not a column of adata.var.")
    if gene_id_key is not None:
        column = adata.var[gene_id_key]
        missing = column.isna().to_numpy() | (column.astype(str).str.strip() == "").to_numpy()
        if missing.any():
            raise ValueError(
                f"adata.var[{gene_id_key!r}] (gene_id_key) has {int(missing.sum())} missing gene ids (NaN or empty), "
                f"e.g. for var_names {adata.var_names[missing][:5].tolist()}; fill them (e.g. from adata.var_names) or "
                f"drop those genes (adata = adata[:, adata.var[{gene_id_key!r}].notna()].copy()) before set-up."
            )
    genes = pd.Index(adata.var[gene_id_key].astype(str) if gene_id_key else adata.var_names)
    if not genes.has_duplicates:
        return
    dup = genes[genes.duplicated()].unique()[:5].tolist()
    if gene_id_key is None:
        fix = "make them unique (adata.var_names_make_unique()) or aggregate them before set-up"
        id_column = _unique_ensembl_column(adata)
        if id_column is not None:  # e.g. sc.read_10x_h5: duplicated symbols, unique ids in var["gene_ids"]
            fix = f"adata.var[{id_column!r}] holds unique Ensembl ids: set up with gene_id_key={id_column!r} (or {fix})"
    else:  # var_names_make_unique() would not touch this column
        fix = (
            f"keep one column per id, e.g. adata = adata[:, ~adata.var[{gene_id_key!r}].duplicated()].copy(), "
            "or sum the duplicated columns before set-up"
        )
    where = "adata.var_names" if gene_id_key is None else f"adata.var[{gene_id_key!r}] (gene_id_key)"
    raise ValueError(f"{int(genes.duplicated().sum())} duplicated gene ids in {where} (e.g. {dup}); {fix}.")


def _unique_ensembl_column(adata: AnnData) -> str | None:
    """A column of ``adata.var`` with one distinct Ensembl gene id per gene (``ENSG...``, ``ENSMUSG...``), if any."""
    for name, column in adata.var.items():
        if column.dtype.kind in "OSU" or isinstance(column.dtype, pd.CategoricalDtype | pd.StringDtype):
            values = column.astype(str)
            if values.is_unique and values.str.match(r"ENS[A-Z]*G\d").mean() >= 0.9:
                return str(name)
    return None


def _gene_id_source(gene_id_key: str | None) -> tuple[str, str]:
    """Where a query's gene ids were read, and how to point the model at the right ones, for error messages."""
    if gene_id_key is None:
        how = "set adata.var_names from the right adata.var column, or name that column with gene_id_key=..."
        return "var_names", how
    return (
        f"gene ids of adata.var[{gene_id_key!r}]",
        f"the model was set up with gene_id_key={gene_id_key!r}, so it reads that column wherever an AnnData has "
        f"it; if this AnnData's var_names hold the gene ids, drop or rename the column: del adata.var[{gene_id_key!r}]",
    )


def _check_gene_coverage(
    match: Any,
    known: np.ndarray,
    vocab: Any,
    min_overlap: float,
    published: bool = False,
    gene_id_key: str | None = None,
    warn: bool = True,
) -> None:
    """Refuse a query whose genes do not fit the model; warn when it lacks many of the model's genes.

    ``match``: the query's :class:`~genemamba_scvi.data.vocab.GeneMatch`; ``known``: per token, whether the model
    was set up with that gene (a finite median). Two shares: of the query's var_names found in the vocabulary
    (low for a full 10x matrix against a model set up on filtered genes, which is fine), and of the model's genes
    present in the query (low for a panel, or a query filtered harder). Only both below ``min_overlap`` point to
    the wrong gene ids or species, and raise; a query with under ``_GENE_COVERAGE_WARN`` of the model's genes
    gets a warning: the missing genes rank as unexpressed in every cell, so its embeddings differ from those of
    the same cells with all genes. ``published``: a model without gene medians, whose genes are its vocabulary's
    (no coverage warning: ``from_pretrained`` warns below half of them).
    """
    model_genes = "genes of the model's vocabulary" if published else "genes the model was set up with"
    n_known = int(known.sum())
    hit = np.unique(match.token_ids[match.token_ids >= 0])
    n_have = int(known[hit].sum())
    coverage = n_have / max(n_known, 1)
    n = len(match.var_names)
    names, fix = _gene_id_source(gene_id_key)
    if match.overlap < min_overlap and coverage < min_overlap:
        raise ValueError(
            f"this AnnData's genes do not fit the model: {match.n_matched} of its {n} {names} "
            f"({100 * match.overlap:.1f}%) are in the model's vocabulary, and it holds {n_have} of the {n_known} "
            f"{model_genes} ({100 * coverage:.1f}%); min_gene_overlap is {100 * min_overlap:.0f}%. "
            f"Unmatched e.g. {match.unmatched_names[:5]}. Gene ids must be {GENE_ID_KINDS} ({fix}), or "
            "lower min_gene_overlap (GeneMambaModel.load(..., min_gene_overlap=...), from_pretrained(..., "
            "min_gene_overlap=...), or model.min_gene_overlap)."
        )
    if warn and coverage < _GENE_COVERAGE_WARN and not published:
        missing = np.flatnonzero(known)
        missing = missing[~np.isin(missing, hit)][:5]
        warnings.warn(
            f"this AnnData holds {n_have} of the {n_known} genes the model was set up with ({100 * coverage:.1f}%; "
            f"missing e.g. {vocab.decode(missing)}). Missing genes count as unexpressed in every cell: the "
            "embeddings are those of the same cells measured on all the model's genes only where the missing "
            "genes had no counts (a query holding every gene detected in its cells embeds exactly).",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _warn_unmatched_genes(
    match: Any, n_vars: int, fate: str, unknown_as: str | None = None, counted: np.ndarray | None = None
) -> bool:
    """Warn about genes without a token: unknown (kept as ``unknown_as`` if given) or held by another column.

    ``counted``: whether each column has a count in this AnnData; columns without any change no token and are not
    reported (a model built on an AnnData leaves its genes without counts out of its vocabulary, and some of those
    then match another vocabulary gene by case or alias: first-hour probe, session 30). Returns whether it warned.
    """
    counted = np.ones(len(match.token_ids), dtype=bool) if counted is None else counted
    column = {name: i for i, name in enumerate(match.var_names)}
    twice = [d for d in [*match.collisions, *match.yielded] if d[0] not in column or counted[column[d[0]]]]
    unknown = match.token_ids < 0
    n_unknown = int((unknown & counted).sum()) - len(twice)
    silent = int((unknown & ~counted).sum())
    parts = []
    if n_unknown > 0:
        with_counts = f" with counts ({silent} more without any)" if silent else ""
        parts.append(
            f"{n_unknown} of {n_vars} genes of this AnnData{with_counts} are not in the model's vocabulary and are "
            f"{fate}"
        )
    if twice:
        dropped, kept, _ = twice[0]
        parts.append(
            f"{len(twice)} columns repeat a gene another column holds (e.g. {dropped!r}, the gene of {kept!r}): only "
            "the other column's counts are used (sum the two columns to keep both)"
        )
    if not parts:
        return False
    # the match report (per stage, examples) where it helps: many genes unknown (wrong ids, another species) or
    # repeated columns; a few unknown genes (two a reference half never expressed) get one line (first-hour probe)
    many = twice or n_unknown > _UNKNOWN_REPORT_SHARE * max(int(counted.sum()), 1)
    named = [match.var_names[i] for i in np.flatnonzero(unknown & counted)[:5]]
    told = f".\n{match.report(unknown_as)}" if many else f" (e.g. {', '.join(named)})."
    warnings.warn(f"{'; '.join(parts)}{told}", UserWarning, stacklevel=_user_stacklevel())
    return True


def _match_query_genes(
    vocab: Any,
    ids: list[str],
    medians: np.ndarray | None,
    min_overlap: float,
    unk_token: str | None = None,
    gene_id_key: str | None = None,
    warn_coverage: bool = True,
) -> Any:
    """The :class:`~genemamba_scvi.data.vocab.GeneMatch` of an AnnData's gene ids against a model's vocabulary.

    Refused (:func:`_check_gene_coverage`) only when both the share of the ids found in the vocabulary and the share
    of the model's genes the AnnData holds are below ``min_overlap``: a superset of the model's genes (a full
    annotation's 60,000 features) is fine. The model's genes are those with a gene median, or, without medians (the
    published tokenization, or setting up), every gene of the vocabulary but ``unk_token``. ``gene_id_key``: the
    ``adata.var`` column ``ids`` come from (``None``: the var_names), named in the errors.
    """
    known = np.isfinite(medians) if medians is not None else None
    published = known is None or not known.any()
    if published:
        known = np.zeros(len(vocab), dtype=bool)
        known[vocab.n_special :] = True
        if unk_token is not None and unk_token in vocab:
            known[vocab[unk_token]] = False
    try:
        match = vocab.match(ids, min_overlap=0.0)
    except ValueError as err:  # no gene matched at all: the ids themselves are wrong
        if "match the vocabulary of" not in str(err):  # duplicated var_names, or two columns of one gene: its own
            raise
        genes = [g for g in vocab.genes if g != unk_token]
        names, fix = _gene_id_source(gene_id_key)
        raise ValueError(
            f"0 of {len(ids)} {names} of this AnnData match the model's vocabulary of {len(genes)} genes "
            f"(e.g. {ids[:5]}; vocabulary genes e.g. {genes[:5]}). Gene ids must be {GENE_ID_KINDS} "
            f"({fix})."
        ) from err
    match = dataclasses.replace(match, min_overlap=min_overlap)  # what its report prints
    _check_gene_coverage(match, known, vocab, min_overlap, published, gene_id_key, warn_coverage)
    return _without_unk(match, vocab, unk_token)


def _without_unk(match: Any, vocab: Any, unk_token: str | None) -> Any:
    """``match`` whose vocabulary count leaves out the unknown-gene token of a published vocabulary (not a gene)."""
    if unk_token is None or unk_token not in vocab:
        return match
    return dataclasses.replace(match, n_vocab_genes=match.n_vocab_genes - 1)


def _check_gene_overlap(value: Any) -> float:
    """``min_gene_overlap`` as a float, or a :class:`ValueError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value <= 1.0):
        raise ValueError(f"min_gene_overlap must be a fraction in [0, 1], got {value!r}")
    return float(value)


class GeneMambaGenesMixin:
    """How a model matches genes and makes tokens (mixed into ``GeneMambaModel``).

    ``max_genes``, ``min_gene_overlap`` and :attr:`tokenizer_settings` read the model's saved configuration (its one
    copy): setting ``max_genes`` or ``min_gene_overlap`` changes what the model does next and what it saves.
    """

    _config: dict[str, Any]

    @property
    def tokenizer_settings(self) -> TokenizerSettings:
        """How this model turns counts into tokens (``max_genes``, ``tokenization``, ``unk_token``, ``tie_break``)."""
        return TokenizerSettings.from_config(self._config)

    @property
    def max_genes(self) -> int:
        """Genes per cell (top-k) the model reads; settable (e.g. more genes at inference), saved with the model."""
        return int(self._config["max_genes"])

    @max_genes.setter
    def max_genes(self, value: int) -> None:
        # a new dict (a shallow copy of the model keeps its own), the summary (repr) told
        self._config = {**self._config, "max_genes": TokenizerSettings(max_genes=value).max_genes}  # checked there
        summary = getattr(self, "_model_summary_string", "")
        self._model_summary_string = re.sub(r"top-\d+ genes|all expressed genes of \d+", self._genes_read(), summary)

    def _genes_read(self) -> str:
        """The summary's words for the genes a cell becomes: top-k, or all of a panel smaller than ``max_genes``."""
        n_genes = len(self.vocab_.genes)
        slots = self.max_genes - int(self._config["pooling"] == "cls")  # (<cls> takes one of max_genes; review)
        return f"top-{self.max_genes} genes" if slots < n_genes else f"all expressed genes of {n_genes}"

    @property
    def min_gene_overlap(self) -> float:
        """The gene overlap below which an AnnData is refused (see the class); settable, saved with the model."""
        return float(self._config["min_gene_overlap"])

    @min_gene_overlap.setter
    def min_gene_overlap(self, value: float) -> None:
        self._config = {**self._config, "min_gene_overlap": _check_gene_overlap(value)}

    @property
    def _tokenization(self) -> str:
        return self.tokenizer_settings.tokenization

    @property
    def _unk_token(self) -> str | None:
        return self.tokenizer_settings.unk_token

    def _vocabulary_genes(self, adata: AnnData, tokenization: str, medians_given: bool) -> list[str]:
        """The genes of a vocabulary built from ``adata``: those with counts in it, where medians come from it.

        A gene without a count in any cell (an unfiltered 10x matrix holds thousands) would be a token no cell
        trains, without a median; a query that expresses it ranked it with a stand-in median among the trained
        genes, so that a query's embeddings depended on whether the training data had been filtered of such genes
        (probe of corrected inputs, session 30: median cosine 0.984, lowest 0.938 on a tiny model). Left out, they
        are unknown genes of a query, ignored, as after ``sc.pp.filter_genes(adata, min_cells=1)``. Medians given
        (e.g. an atlas's) and the published tokenization (which ranks unexpressed genes too) keep every gene.
        """
        ids = self._gene_ids(adata)
        if tokenization != "ranked" or medians_given:
            return ids
        counted = genes_with_counts(count_matrix(adata, self._setup_arg("layer")))
        return [gene for gene, has in zip(ids, counted, strict=True) if has]

    def _gene_ids(self, adata: AnnData) -> list[str]:
        key = self._setup_arg("gene_id_key")  # a query without that column is matched by var_names (_register_afresh)
        return list(adata.var[key].astype(str)) if key and key in adata.var else list(map(str, adata.var_names))

    def _match_genes(self, adata: AnnData, warn_unknown: bool = True) -> np.ndarray:
        medians = getattr(self, "gene_medians_", None)
        ids = self._gene_ids(adata)
        column = self._setup_arg("gene_id_key")
        column = column if column and column in adata.var else None  # where ids came from, for the errors
        gene_list = tuple(ids)
        key = hash(gene_list)  # each warning once per model and gene list (load, embed, predict: the same genes)
        coverage_told = self.__dict__.setdefault("_gene_coverage_reported", set())
        cache = self.__dict__.setdefault("_gene_match_cache", {})
        # what decides the match: the genes, their column, the settings, the vocabulary, and which of its genes have a
        # median (the coverage check; an in-place edit of gene_medians_ changes this fingerprint, not the id)
        known = None if medians is None else hash(np.isfinite(medians).tobytes())
        cache_key = (gene_list, column, self.min_gene_overlap, self._unk_token, id(self.vocab_), known)
        hit = cache.pop(cache_key, None) if _GENE_MATCH_CACHE else None
        if hit is not None and hit[0] is self.vocab_:  # (the entry holds its vocabulary: its id cannot be reused)
            match = hit[1]
            cache[cache_key] = hit  # the most recently used last
        else:
            match = _match_query_genes(
                self.vocab_, ids, medians, self.min_gene_overlap, self._unk_token, column, key not in coverage_told
            )
            match.token_ids.flags.writeable = False  # shared by every later call with these genes
            cache[cache_key] = (self.vocab_, match)
            for old in list(cache)[:-_GENE_MATCH_CACHE_SIZE]:  # the least recently used lists (one C call: threads)
                cache.pop(old, None)
        if medians is not None:  # (set-up matches before the medians exist: nothing was checked yet)
            coverage_told.add(key)
        case_told = self.__dict__.setdefault("_case_matches_reported", set())
        if key not in case_told:  # (once per model and gene list, as the other warnings)
            case_told.add(key)
            warn_if_case_only(
                self.vocab_,
                match.var_names,
                match.token_ids,
                "genes of this AnnData",
                "they are read as the model's genes of that name. Mouse symbols on a human model are read as the human "
                "genes of the same name, not checked orthologues (genes only mouse has stay unmatched); lower-case "
                "human symbols are matched the same way. model.vocab_.match(ids, min_overlap=0).report() shows each "
                "stage's count.",
            )
        n_unknown = int((match.token_ids < 0).sum())
        reported = self.__dict__.setdefault("_unknown_genes_reported", set())
        if warn_unknown and n_unknown and key not in reported:
            as_unk = self._unk_token if self._tokenization == "published" else None
            fate = "ignored" if as_unk is None else f"tokenised as {as_unk} (published tokenization)"
            # (ranked: unknown genes without a count change no token, e.g. those a model built here left out; told
            # once another AnnData of these genes has counts in them)
            counted = genes_with_counts(count_matrix(adata, self._setup_arg("layer"))) if as_unk is None else None
            if _warn_unmatched_genes(match, adata.n_vars, fate, as_unk, counted):
                reported.add(key)
        return match.token_ids

    def _medians_from(self, adata: AnnData, method: str) -> np.ndarray:
        if method not in ("exact", "tdigest"):  # a file's path (a pickled median dictionary): how to pass its values
            raise ValueError(
                f"gene_medians must be 'exact' or 'tdigest' (computed from adata), or the medians themselves: an array "
                f"per token or per gene of adata, a pandas Series or a dict of gene id -> median; got {method!r} (a "
                "pickled dictionary, as Geneformer's gene_median_dictionary.pkl: pass its values, "
                "gene_medians=pickle.load(open(path, 'rb')))"
            )
        self._match_genes(adata, warn_unknown=False)  # (before the pass: refuses genes that cannot be this model's)
        return self._per_token(adata, compute_gene_medians(adata, layer=self._setup_arg("layer"), method=method))

    def _per_token(self, adata: AnnData, col_medians: np.ndarray) -> np.ndarray:
        """Medians per gene column of ``adata`` as medians per token of the vocabulary (NaN for the others)."""
        token_ids = self._match_genes(adata, warn_unknown=False)
        medians = np.full(len(self.vocab_), np.nan)
        keep = token_ids >= 0
        medians[token_ids[keep]] = col_medians[keep]
        return medians

    def _medians_per_token(self, adata: AnnData, given: Any) -> np.ndarray:
        """``gene_medians`` as given, one per token (given per token, per gene of ``adata`` or by gene id).

        Per gene of ``adata``: the order of :func:`~genemamba_scvi.data.compute_gene_medians` on it or on files of
        its genes; by gene id: a pandas Series. A user with medians over a whole atlas and a model trained on a
        subsample of it had no way to pass them: the per-gene array was refused by shape, with no word of tokens
        (backed probe, session 28).
        """
        n_tokens = len(self.vocab_)
        if isinstance(given, Mapping):  # gene id -> median (a Geneformer median dictionary): read as a Series
            given = pd.Series(given, dtype=np.float64)
        if isinstance(given, pd.Series):
            names = [str(g) for g in given.index]
            if given.index.has_duplicates:  # the last of two values would win without a word
                twice = sorted({str(g) for g in given.index[given.index.duplicated()]})
                raise ValueError(f"gene_medians names a gene twice: {twice[:5]}")
            ids = self.vocab_.lookup(names)
            if not (ids >= 0).any():
                raise ValueError(
                    "gene_medians (a Series or dict by gene id) names no gene of the vocabulary (key it by the genes' "
                    f"ids, as {self._setup_arg('gene_id_key') or 'var_names'} names them)"
                )
            # a name the vocabulary holds as it is wins over a case variant read as the same token (an atlas holds
            # both C10ORF68 and C10orf68; a model of part of its genes holds one: claims probe, session 28)
            order = np.argsort([name not in self.vocab_ for name in names], kind="stable")
            first = order[np.unique(ids[order], return_index=True)[1]]
            keep = np.zeros(len(names), dtype=bool)
            keep[first[ids[first] >= 0]] = True
            found = ids[keep]
            medians = np.full(n_tokens, np.nan)
            medians[found] = np.asarray(given, dtype=np.float64)[keep]
            here = self._match_genes(adata, warn_unknown=False)
            missing = ~np.isin(here[here >= 0], found)
            if missing.any():  # not named in the Series: tokenized with the fallback median, ranked off
                warnings.warn(
                    f"gene_medians names no median for {int(missing.sum())} of the {int((here >= 0).sum())} genes of "
                    "this AnnData in the vocabulary; they are still tokens, ranked with the fallback median (the "
                    "median of the given medians; a NaN for a gene does the same, without this warning). To leave "
                    "them out of the tokens, as Geneformer does with the genes its median dictionary lacks, make "
                    "the model's vocabulary those genes: GeneMambaModel(adata, vocab=GeneVocab(list(medians.keys())), "
                    "gene_medians=medians)",
                    UserWarning,
                    stacklevel=_user_stacklevel(),
                )
            return medians
        medians = np.asarray(given, dtype=np.float64)
        if medians.shape == (n_tokens,):  # (also where adata.n_vars == len(vocab): per token wins, as a reload needs)
            return medians
        if medians.shape == (adata.n_vars,):
            return self._per_token(adata, medians)
        raise ValueError(
            f"gene_medians has shape {medians.shape}; expected ({n_tokens},) (one per token of the vocabulary, "
            f"specials included) or ({adata.n_vars},) (one per gene of this AnnData, as compute_gene_medians gives "
            "them); a pandas Series indexed by gene ids also works"
        )

    def _tokenizer_for(self, adata: AnnData, warn_unknown: bool = True) -> TokenizerSpec:
        token_ids = self._match_genes(adata, warn_unknown=warn_unknown)
        # genes without a median take the model's fallback (the median of all its genes' medians), fixed here: left
        # NaN, rank_tokenize took the median of this AnnData's genes, and a gene's rank moved with the other genes
        # a query holds (Geneformer probe, session 29: order changed in 192 of 279 cells, 5% of the genes dropped)
        medians = np.where(token_ids >= 0, with_fallback(self.gene_medians_)[np.clip(token_ids, 0, None)], np.nan)
        settings = self.tokenizer_settings
        return TokenizerSpec(
            gene_token_ids=token_ids,
            gene_medians=medians,
            max_genes=settings.max_genes,
            add_cls=self._config["pooling"] == "cls",
            method=settings.tokenization,
            unk_id=None if settings.unk_token is None else self.vocab_[settings.unk_token],
            tie_break=settings.tie_break,
        )
