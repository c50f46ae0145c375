"""Persistence of :class:`~genemamba_scvi.model.GeneMambaModel`: ``save``, ``load``, ``from_pretrained``."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi.data._constants import _SCVI_UUID_KEY
from scvi.data._utils import _assign_adata_uuid

from genemamba_scvi import __version__
from genemamba_scvi.data.normalize import NotCountsError
from genemamba_scvi.data.tokenize import TOKENIZATIONS
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.model._classifier import split_from_json, split_to_json
from genemamba_scvi.model._runs import runs_from_json
from genemamba_scvi.model._utils import (
    _ENCODER_ARGS,
    _check_model_layer,
    _holds_counts,
    _query_setup_args,
    _register_afresh,
    _set_up_again_for_load,
    _shallow_copy_for_writing,
    _torch_device,
    _user_stacklevel,
)

if TYPE_CHECKING:
    from genemamba_scvi.io import Checkpoint


def _history_to_json(history: Any) -> dict[str, dict[str, Any]] | None:
    """``model.history`` (a dict of one-column DataFrames indexed by epoch) as plain JSON-able lists."""
    if not isinstance(history, dict):
        return None
    out = {}
    for key, frame in history.items():
        frame = pd.DataFrame(frame)
        try:
            values = frame.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            continue  # not numeric: not a metric curve
        out[str(key)] = {
            "index_name": frame.index.name,
            "index": frame.index.tolist(),
            "columns": [str(c) for c in frame.columns],
            "data": values.tolist(),
        }
    return out


def _history_from_json(saved: dict[str, dict[str, Any]] | None) -> dict[str, pd.DataFrame] | None:
    """Inverse of :func:`_history_to_json`."""
    if not saved:
        return None
    return {
        key: pd.DataFrame(
            np.asarray(item["data"], dtype=np.float64).reshape(len(item["index"]), len(item["columns"])),
            index=pd.Index(item["index"], name=item.get("index_name")),
            columns=item["columns"],
        )
        for key, item in saved.items()
    }


#: scvi-tools' ``save`` arguments that have no meaning here (accepted, no effect)
_SCVI_SAVE_ARGS = frozenset({"save_kwargs", "legacy_mudata_format", "datamodule"})


def _warn_few_published_genes(token_ids: np.ndarray, n_vocab: int) -> None:
    """Warn when an AnnData holds under half of a published model's genes (a gene panel or an HVG subset)."""
    n_found = len(np.unique(token_ids[token_ids >= 0]))
    if n_found < 0.5 * n_vocab:
        warnings.warn(
            f"this AnnData holds {n_found} of the published model's {n_vocab} genes: the model ranked every measured "
            "gene of a cell, so a subset (highly variable genes, a targeted panel) gives other gene sequences than "
            "the whole transcriptome would. Pass all measured genes if you have them.",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _read_with_anndata(dir_path: Path, adata: AnnData | None) -> tuple[Checkpoint, AnnData]:
    """The checkpoint in ``dir_path`` and ``adata`` (None: the AnnData saved with it, from the same save).

    The saved AnnData is read after the checked checkpoint: a save in between gave one save's weights with the other's
    cells (review), so the read starts over when the folder's manifest changed meanwhile (three tries).
    """
    from genemamba_scvi.io import ANNDATA_FILE, read_checkpoint
    from genemamba_scvi.io._checkpoint import _SAVED_AGAIN, saved_again

    for _ in range(3):
        # an AnnData brought along: the saved one is not needed (deleted for a quota, unreadable to a colleague)
        ckpt = read_checkpoint(dir_path, skip=(ANNDATA_FILE,) if adata is not None else ())
        if adata is not None:
            return ckpt, adata
        saved_adata = _saved_anndata(ckpt)
        if not saved_again(ckpt):
            return ckpt, saved_adata
    raise ValueError(_SAVED_AGAIN.format(path=dir_path))


def _saved_anndata(ckpt: Checkpoint) -> AnnData:
    """The AnnData that ``save(..., save_anndata=True)`` wrote into the checkpoint (its checksum already verified)."""
    import anndata

    from genemamba_scvi.io import ANNDATA_FILE

    dir_path = ckpt.path
    if ANNDATA_FILE not in ckpt.files:
        hint = ""
        if (dir_path / ANNDATA_FILE).exists():
            hint = (
                f" (the {ANNDATA_FILE} there was left by an earlier save of another model state; pass it "
                f"yourself if it is the right one: adata=anndata.read_h5ad({str(dir_path / ANNDATA_FILE)!r}))"
            )
        raise ValueError(
            f"{dir_path} was saved without its AnnData: pass the AnnData to attach, "
            f"GeneMambaModel.load(dir_path, adata=adata), or save with save_anndata=True{hint}."
        )
    return anndata.read_h5ad(dir_path / ANNDATA_FILE)


#: ``convert_legacy_save``: inherited unchanged, it failed with a FileNotFoundError after creating an empty folder
_NO_CONVERSION = (
    "GeneMamba checkpoints need no conversion (scvi-tools' convert_legacy_save converts scvi-tools' own pre-0.15 "
    "saves): load the folder with GeneMambaModel.load({dir_path!r}, adata=...); nothing was written to {out!r}"
)


def _anndata_writer(adata: AnnData, dir_path: str | os.PathLike, write_kwargs: dict[str, Any]) -> Any:
    """The writer of ``save(..., save_anndata=True)``'s ``adata.h5ad``, once the disk is known to have the room."""
    from genemamba_scvi.io._files import check_room_for_anndata

    # anndata turns string columns into categoricals in place: it does so here on copies of the frames
    adata = _shallow_copy_for_writing(adata)
    where = Path(dir_path).expanduser()
    check_room_for_anndata(adata, where, write_kwargs.get("compression"), "the model's AnnData (save_anndata=True)")
    return lambda path: adata.write_h5ad(path, **write_kwargs)


def _check_saved_settings(path: str | os.PathLike, config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``config`` of a saved model, checked against the settings this version knows.

    Settings it does not know (a newer version's) are refused, naming the file and the version that wrote it; a
    model written by a newer version that loads is warned about.
    """
    from packaging.version import InvalidVersion, Version

    from genemamba_scvi.model._genes import CONFIG_KEYS

    saved_by = extra.get("genemamba_scvi_version")
    by = f"saved by genemamba-scvi {saved_by}" if saved_by else "saved by an unknown version"
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"checkpoint {path}: its config.json has settings this genemamba-scvi ({__version__}) does not know, "
            f"{unknown} ({by}); load it with that version or a later one (pip install -U genemamba-scvi)"
        )
    try:
        # by release numbers: 0.2.0+cu121 or 0.2.0.post1 is this release, not a newer one
        newer = saved_by is not None and Version(str(saved_by)).release > Version(__version__).release
    except InvalidVersion:
        newer = False
    if newer:
        warnings.warn(
            f"checkpoint {path} was {by}, newer than this genemamba-scvi ({__version__}); it loads, but results may "
            "differ from that version's (see the changelog)",
            UserWarning,
            stacklevel=3,
        )
    return config


@contextlib.contextmanager
def _counts_advice_for_load() -> Iterator[None]:
    """Set-up's advice "set up with layer=..." said as load can follow it (bad-input probe, session 33)."""
    try:
        yield
    except NotCountsError as err:
        if ": set up with layer=" not in err.hint:
            raise
        where, layer = err.hint.split(": set up with layer=", 1)
        how = f"run GeneMambaModel.setup_anndata(adata, layer={layer}) before load (load keeps that set-up)"
        raise NotCountsError(err.problem, f"{where}: {how}") from None


class GeneMambaSaveLoadMixin:
    """``save`` / ``load`` in our checkpoint format and ``from_pretrained`` for the official checkpoints.

    Mixed into :class:`~genemamba_scvi.model.GeneMambaModel` (as scvi-tools' ``base/_save_load.py``).
    """

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {
            "genemamba_scvi_version": __version__,
            "setup_args": dict(self.adata_manager.registry["setup_args"]),
            "label_names": self.label_names_,
            "labels_key": getattr(self, "labels_key_", None),
            "classifier_hidden": self.classifier_hidden_,
            "objective": self.module.objective,
            "is_trained": bool(self.is_trained_),
            "random_encoder": bool(self._random_encoder),
            "history": _history_to_json(self.history_),
            "train_runs": list(getattr(self, "train_runs_", [])),
            "split": split_to_json(self),
            **({"pretrained_on": self.pretrained_on_} if getattr(self, "pretrained_on_", None) else {}),
        }

    @classmethod
    def convert_legacy_save(cls, dir_path: str | os.PathLike, output_dir_path: str | os.PathLike, *args, **kwargs):
        """Not needed: GeneMamba checkpoints load as they are (scvi-tools' converts its pre-0.15 saves)."""
        raise NotImplementedError(_NO_CONVERSION.format(dir_path=str(dir_path), out=str(output_dir_path)))

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save weights (safetensors), config, vocabulary, gene medians and training history, atomically.

        The model directory is written next to its destination and renamed into place, so a crash leaves
        any previous model intact. :meth:`load` restores the model and ``model.history``.

        Parameters
        ----------
        dir_path
            Directory to write (created, with any missing parent directories).
        prefix
            Write into ``dir_path / f"{prefix}model"`` instead.
        overwrite
            Write into an existing directory, as scvi-tools does: the files this package writes there
            (``model.safetensors``, ``config.json``, ``vocab.json``, ``gene_medians.npy``, ``extra.json``,
            ``checksums.json``, and ``adata.h5ad`` with ``save_anndata=True``; without it an earlier ``adata.h5ad``
            stays, no longer listed, and :meth:`load` does not take it) are replaced; any other file or folder in
            it is kept unchanged. A directory that is not a saved model but holds a file of one of those names is
            refused. Without ``overwrite`` an existing ``dir_path`` raises :class:`FileExistsError` and is not
            touched.
        save_anndata
            Also write the model's AnnData to ``adata.h5ad`` in the directory (checksummed with the other files),
            so that ``GeneMambaModel.load(dir_path)`` needs no ``adata``, as in scvi-tools.
        **kwargs
            With ``save_anndata``: passed to :meth:`anndata.AnnData.write_h5ad` (e.g. ``compression="gzip"``).
            String columns are written as categoricals, as anndata and scvi-tools do (so columns with NaN and
            pandas ``"string"`` columns can be written), but from copies of ``obs`` / ``var``: the AnnData in
            memory keeps its columns as they are (anndata alone converts them in place).
            scvi-tools' ``save_kwargs``, ``legacy_mudata_format`` and ``datamodule`` are accepted and have no
            effect; other keywords raise :class:`TypeError`.
        """
        from genemamba_scvi.io import ANNDATA_FILE, write_checkpoint

        write_kwargs = {k: v for k, v in kwargs.items() if k not in _SCVI_SAVE_ARGS}
        if write_kwargs and not save_anndata:
            raise TypeError(
                f"GeneMambaModel.save() got unexpected keyword arguments {sorted(write_kwargs)}; keywords beyond "
                "dir_path, prefix, overwrite and save_anndata go to AnnData.write_h5ad, with save_anndata=True"
            )
        if str(dir_path).strip() == "":  # Path("") is the working directory (bad-input probe, session 33)
            raise ValueError("dir_path is empty: pass the folder to save the model into (e.g. 'my_model/')")
        extra_files = {}
        if save_anndata and not _holds_counts(self.adata, layer := self._setup_arg("layer")):
            where = f"adata.layers[{layer!r}]" if layer else "adata.X"
            raise ValueError(
                f"the model's AnnData no longer holds raw counts in {where} (changed after setup_anndata, e.g. by "
                "normalize_total / log1p in place), so GeneMambaModel.load could not set it up again: save without "
                "save_anndata=True (and load with an AnnData of counts), or keep the counts in a layer"
            )
        if save_anndata:
            extra_files[ANNDATA_FILE] = _anndata_writer(self.adata, dir_path, write_kwargs)
        if prefix:
            dir_path = Path(dir_path) / f"{prefix}model"
        write_checkpoint(
            dir_path,
            self.module.state_dict(),
            config=dict(self._config),
            vocab=self.vocab_,
            gene_medians=self.gene_medians_,
            extra=self._checkpoint_extra(),
            overwrite=overwrite,
            extra_files=extra_files,
        )

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict[str, Any]:
        """What a saved model was set up with, read from its files (scvi-tools' ``load_registry``).

        Returns
        -------
        ``{"model_name", "setup_method_name", "setup_args", "genemamba_scvi_version"}``; ``setup_args`` are the
        arguments of :meth:`setup_anndata` (``layer``, ``batch_key``, ``labels_key``, ``gene_id_key``).
        """
        from genemamba_scvi.io import read_checkpoint

        path = Path(dir_path) / f"{prefix}model" if prefix else Path(dir_path)
        extra = read_checkpoint(path).extra or {}
        return {
            "model_name": "GeneMambaModel",
            "setup_method_name": "setup_anndata",
            "setup_args": dict(extra.get("setup_args") or {}),
            "genemamba_scvi_version": extra.get("genemamba_scvi_version"),
        }

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the :meth:`setup_anndata` arguments of a saved model (scvi-tools' ``view_setup_args``)."""
        from scvi.data import AnnDataManager

        AnnDataManager.view_setup_method_args(GeneMambaSaveLoadMixin.load_registry(dir_path, prefix))

    @classmethod
    def _from_parts(
        cls,
        adata: AnnData,
        config: dict[str, Any],
        vocab: GeneVocab,
        gene_medians: np.ndarray | None,
        setup_args: dict[str, Any] | None,
        saved_setup: bool = False,
    ) -> GeneMambaModel:  # noqa: F821  (the class this is mixed into)
        """The model on ``adata``; ``saved_setup``: ``setup_args`` are the saved model's and win (scvi's ``load``).

        Otherwise (``from_pretrained``) they are the user's: ``adata`` is set up with them, checked by
        :meth:`setup_anndata`, replacing (with a warning) an earlier set-up that they change. A view becomes an
        AnnData of its own (as a query view does in :meth:`get_latent_representation`).
        """
        if adata.is_view:
            adata._init_as_actual(adata.copy())
        manager = cls._setup_adata_manager_store.get(adata.uns.get(_SCVI_UUID_KEY))
        if not saved_setup and setup_args:
            before = dict(manager.registry["setup_args"]) if manager is not None and manager.adata is adata else None
            if manager is not None and manager.adata is not adata:  # a copy of a registered AnnData: its own id
                _assign_adata_uuid(adata, overwrite=True)
            cls.setup_anndata(adata, **setup_args)
            after = dict(cls._setup_adata_manager_store[adata.uns[_SCVI_UUID_KEY]].registry["setup_args"])
            if before is not None and before != after:
                changed = sorted(k for k in after if before.get(k) != after[k])
                warnings.warn(
                    f"this AnnData was set up with { {k: before.get(k) for k in changed} }; it is set up again with "
                    f"the arguments given here: { {k: after[k] for k in changed} }",
                    UserWarning,
                    stacklevel=_user_stacklevel(),
                )
            return cls(adata, vocab=vocab, gene_medians=gene_medians, **config)
        if not saved_setup and not setup_args and manager is not None:  # a copy keeps its original's set-up
            setup_args = dict(manager.registry["setup_args"])
        args = _query_setup_args(adata, setup_args or {}, missing_labels_ok=saved_setup)
        if manager is not None and manager.adata is adata and saved_setup:
            _set_up_again_for_load(cls, adata, dict(manager.registry["setup_args"]), args)
        elif manager is None or manager.adata is not adata:  # not set up yet, or a copy of a registered AnnData
            if saved_setup:
                _check_model_layer(adata, args.get("layer"))
            _register_afresh(cls, adata, args)
        return cls(adata, vocab=vocab, gene_medians=gene_medians, **config)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        min_gene_overlap: float | None = None,
        **kwargs: Any,
    ) -> GeneMambaModel:  # noqa: F821  (the class this is mixed into)
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach (its genes are matched to the saved vocabulary in any order, and a poor overlap
            raises ``ValueError``). If not set up yet, :meth:`setup_anndata` is run with the saved arguments.
            ``None``: the AnnData saved with ``save(..., save_anndata=True)``; a model saved without one
            raises ``ValueError``.
        accelerator, device
            Where to put the model: scvi-tools' ``accelerator`` (``"auto"``, ``"cpu"``, ``"gpu"``) and ``device``
            (``"auto"`` or a GPU index), or a torch device name as ``device`` (``"cpu"``, ``"cuda:1"``).
        prefix
            Read ``dir_path / f"{prefix}model"`` (as :meth:`save` wrote it).
        min_gene_overlap
            Override the saved ``min_gene_overlap``: ``adata`` is refused only when both the share of its genes in
            the vocabulary and the share of the model's genes it holds are below it (see :class:`GeneMambaModel`).
        **kwargs
            scvi-tools' ``backup_url`` and ``datamodule`` are refused with a clear error (files are read
            offline from ``dir_path``), its ``allowed_classes_names_list`` is accepted and has no effect (the
            files say what they hold); any other keyword raises :class:`TypeError`.

        Raises
        ------
        FileNotFoundError
            Missing directory or file.
        ValueError
            Tampered or truncated files (checksums), or genes that do not match the vocabulary.
        """
        if kwargs.get("backup_url") is not None or kwargs.get("datamodule") is not None:
            raise ValueError("GeneMambaModel.load reads a local directory: backup_url and datamodule are not supported")
        unknown = sorted(set(kwargs) - {"backup_url", "datamodule", "allowed_classes_names_list"})
        if unknown:
            raise TypeError(
                f"GeneMambaModel.load() got unexpected keyword arguments {unknown}; it takes dir_path, adata, "
                "accelerator, device, prefix and min_gene_overlap"
            )

        if prefix:
            dir_path = Path(dir_path) / f"{prefix}model"
        ckpt, adata = _read_with_anndata(dir_path, adata)
        extra = ckpt.extra or {}
        config = _check_saved_settings(dir_path, dict(ckpt.config), extra)
        if min_gene_overlap is not None:
            config["min_gene_overlap"] = min_gene_overlap  # checked by GeneMambaModel
        # a model pre-trained on a corpus (pretrain) was never set up on an AnnData: the user's set-up is kept
        saved_setup = "setup_args" in extra
        with _counts_advice_for_load():
            model = cls._from_parts(
                adata, config, ckpt.vocab, ckpt.gene_medians, extra.get("setup_args"), saved_setup=saved_setup
            )
        if extra.get("label_names"):
            model.label_names_ = list(extra["label_names"])
            model.labels_key_ = extra.get("labels_key")
            model.classifier_hidden_ = extra.get("classifier_hidden")
            model.module.add_classifier(len(model.label_names_), hidden=model.classifier_hidden_)
        model.module.set_objective(extra.get("objective", "mlm"))
        try:
            missing, unexpected = model.module.load_state_dict(ckpt.state_dict, strict=False)
        except RuntimeError as err:  # a tensor's shape (config.json or extra.json edited by hand): torch's message
            shapes = "; ".join(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
            raise ValueError(
                f"checkpoint {dir_path} does not fit this model: its config.json / extra.json describe another "
                f"model than its weights ({shapes[:400] or err})"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {dir_path} does not fit this model: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        dev = _torch_device(accelerator, device)
        model.to_device(dev)
        model.module.eval()
        model.is_trained_ = bool(extra.get("is_trained", True))
        model._random_encoder = bool(extra.get("random_encoder", False))
        model.history_ = _history_from_json(extra.get("history"))  # None for models saved before it was kept
        model.train_runs_ = runs_from_json(extra.get("train_runs"))
        split_from_json(model, extra.get("split"))
        model.pretrained_on_ = extra.get("pretrained_on")
        return model

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        adata: AnnData,
        gene_medians: np.ndarray | None = None,
        max_genes: int = 2048,
        backend: Literal["auto", "torch", "mamba_ssm"] = "auto",
        subfolder: str | None = None,
        merge: str | None = None,
        pooling: Literal["mean", "cls"] | None = None,
        tokenization: Literal["published", "ranked"] = "published",
        identity_layers: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        min_gene_overlap: float | None = None,
        **setup_kwargs: Any,
    ) -> GeneMambaModel:  # noqa: F821  (the class this is mixed into)
        """Load an official GeneMamba checkpoint directory (Hugging Face or GitHub layout) offline.

        The directory must hold ``config.json``, ``model.safetensors`` and the tokenizer file of the
        published model (``tokenizer.json`` from Hugging Face, e.g. downloaded elsewhere with
        ``huggingface-cli download mineself2016/GeneMamba --local-dir DIR``, or ``gene_tokenizer.json``
        from the GitHub code). Our encoder is built with the published layer (``block="official"``:
        Mamba-2 + residual, no norm) and the official merge, and the weights are mapped key by key
        (strict). See the "Pre-trained checkpoints" docs page.

        Parameters
        ----------
        path
            Local checkpoint directory (or one of its size-variant subfolders), or a Hugging Face repository
            id such as ``"mineself2016/GeneMamba"`` whose files are in the local Hugging Face cache (put there
            by ``huggingface_hub`` or ``transformers``; nothing is downloaded). ``"owner/name/<variant>"``, not a
            local path, is the same as ``"owner/name"`` with ``subfolder="<variant>"``.
        adata
            AnnData of raw counts; set up with :meth:`setup_anndata` (done here with ``setup_kwargs`` if not).
        gene_medians
            ``tokenization="ranked"`` only: medians per token id; otherwise computed from ``adata``.
        max_genes
            Genes per cell (the published ``seq_len``, 2048).
        backend
            Mixer backend.
        subfolder
            Size-variant subfolder of ``path`` (e.g. ``"12l-256d"``), of a local directory or of a cached
            repository; an unknown one is refused with the list of the variants there.
        merge
            Merge mode, only needed when ``config.json`` does not state it; without it a checkpoint
            with no ``aggr`` weights gets the published default ``"mean"`` (with a warning).
        pooling
            ``"mean"`` over the real tokens or ``"cls"`` (a ``<cls>`` token in front, its final state).
            Default: ``config.json``'s ``embedding_pooling``, else ``"mean"`` (with a warning), as in the
            published embedding example.
        tokenization
            ``"published"`` (default): the input the published weights saw (genes ranked by raw value,
            zero counts kept, genes outside the vocabulary as the official ``[UNK]``);
            ``"ranked"``: this package's median-normalised ranks (see :class:`GeneMambaModel`).
        identity_layers
            Every layer returns its input (``block="official_identity"``), as in the ``EncoderLayer``
            of the MineSelf2016/mamba_dev copy of the published code. Only for weights trained with
            that code; see the docs for how to tell.
        revision
            With a repository id: the cached branch, tag or commit (default ``"main"``).
        cache_dir
            With a repository id: the Hugging Face cache directory (default ``$HF_HUB_CACHE``, else
            ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
        accelerator, device
            Where to put the model, as in :meth:`load` (default: a GPU when there is one, so that
            :meth:`get_latent_representation` runs there).
        min_gene_overlap
            As in :class:`GeneMambaModel` (default 0.5): ``adata`` (and a later query) is refused only when both
            the share of its genes in the vocabulary and the share of the vocabulary's genes it holds are below it.
        **setup_kwargs
            :meth:`setup_anndata` arguments. Given, ``adata`` is set up with them (an earlier set-up that they change
            is replaced, with a warning); without them an AnnData not set up yet is set up with the defaults, and
            one set up already is read as it was set up.

        Notes
        -----
        The published checkpoints ship no gene medians; with ``tokenization="ranked"`` and no
        ``gene_medians`` they are computed from ``adata``, which may rank genes differently from the
        corpus the model was pre-trained on.
        """
        from genemamba_scvi.io import read_official_checkpoint

        if tokenization not in TOKENIZATIONS:
            raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")
        published = tokenization == "published"
        if published and gene_medians is not None:  # (they were kept and never used: docs probe, session 32)
            raise ValueError(
                "gene_medians are used with tokenization='ranked' only; tokenization='published' (the default) ranks "
                "raw values and reads no medians: pass tokenization='ranked' to rank by them, or leave them out"
            )
        enc_kwargs, enc_state, lm_state, vocab, info = read_official_checkpoint(
            path,
            subfolder=subfolder,
            merge=merge,
            pooling=pooling,
            keep_unk=published,
            identity_layers=identity_layers,
            revision=revision,
            cache_dir=cache_dir,
        )
        if published and info.get("unk_token") is None:
            warnings.warn(
                "the official tokenizer has no unknown-gene token: genes outside its vocabulary are dropped "
                "instead of being tokenised as [UNK] as the published code does",
                UserWarning,
                stacklevel=2,
            )
        if gene_medians is None and info.get("gene_medians") is not None:
            gene_medians = np.asarray(info["gene_medians"], dtype=np.float64)
        if gene_medians is None and published:
            gene_medians = np.full(len(vocab), np.nan)  # not used by the published tokenization
        config = {k: v for k, v in enc_kwargs.items() if k in _ENCODER_ARGS}
        config.update(
            max_genes=max_genes,
            backend=backend,
            tie_lm_head=False,
            tokenization=tokenization,
            unk_token=info.get("unk_token"),
            **({"min_gene_overlap": min_gene_overlap} if min_gene_overlap is not None else {}),
        )
        model = cls._from_parts(adata, config, vocab, gene_medians, setup_kwargs)
        n_genes = len(vocab.genes) - (info.get("unk_token") in vocab)  # the unknown-gene token is no gene
        _warn_few_published_genes(model._match_genes(adata, warn_unknown=False), n_genes)
        model.module.encoder.load_state_dict(enc_state, strict=True)
        if lm_state is not None:
            model.module.lm_head.load_state_dict(lm_state, strict=True)
        dev = _torch_device(accelerator, device)
        model.to_device(dev)
        model.module.eval()
        model.is_trained_ = True
        model.pretrained_on_ = info["source"]
        return model
