"""Command line: ``genemamba demo``, ``genemamba embed``, ``genemamba build-corpus`` and ``genemamba pretrain``.

``demo`` is the embedded default job; ``embed`` writes cell embeddings of an .h5ad file with a saved or a published
model; ``build-corpus`` tokenizes many .h5ad files into shards for pre-training, and ``pretrain`` trains a model on
them (``_cli_corpus``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from ._cli_args import count, positive, seed, share
from ._cli_corpus import add_corpus_commands
from ._cli_demo import run_demo
from ._constants import LATENT_KEY
from ._warn import StderrHandler

#: what ``genemamba demo`` writes into ``--out``
_VAR_NAMES = "var_names"  # the --gene-id-key value that reads the var_names
#: options holding a path, "~" expanded
_PATH_OPTIONS = ("model", "out", "vocab", "save_dir", "checkpoint_dir", "gene_medians", "corpus", "resume", "gene_sets")
#: --out suffixes of other formats, refused by name (``genemamba embed`` writes HDF5 .h5ad only)
_OTHER_FORMATS = {".zarr": "zarr store", ".loom": "loom file", ".h5mu": "MuData file", ".csv": "CSV file"}


def _embed(args: argparse.Namespace) -> int:
    import anndata
    import pandas as pd

    from genemamba_scvi import GeneMambaModel
    from genemamba_scvi.data._corpus_io import check_h5ad_file
    from genemamba_scvi.io._checkpoint import looks_saved_by_load_side
    from genemamba_scvi.io._files import (
        _atomic_write_file,
        anndata_write_bytes,
        check_free_space,
        check_room_for_anndata,
    )

    source, out = Path(args.input).expanduser(), Path(args.out).expanduser()  # ~ too after --out= (no shell)
    if not source.is_file():
        what = "is a directory, not an .h5ad file" if source.is_dir() else "no such file"
        raise FileNotFoundError(f"input {source}: {what}")
    check_h5ad_file(source)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the input file; genemamba embed never overwrites its input")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name the .h5ad file to write")
    if out.suffix.lower() in _OTHER_FORMATS:  # an HDF5 file named .zarr is read by nothing (downstream probe)
        h5ad = out.stem if out.stem.endswith(".h5ad") else out.with_suffix(".h5ad").name  # (x.h5ad.zarr: x.h5ad)
        raise ValueError(
            f"--out {out} names a {_OTHER_FORMATS[out.suffix.lower()]}, but genemamba embed writes an .h5ad file "
            f"(HDF5); write {h5ad} and convert it (anndata.read_h5ad(...).write_zarr(...) for zarr)"
        )
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not args.key.strip() or "/" in args.key:
        raise ValueError(
            f"--key must name the obsm key to write, without '/' (got {args.key!r}: anndata writes such a key as "
            "nested groups, a file it cannot read back)"
        )
    _check_writable(out)  # before the embedding, not after it
    saved = looks_saved_by_load_side(args.model)  # load() then names a missing manifest or scvi-tools' model.pt
    _check_cli_model(args, out, saved)
    with warnings.catch_warnings():  # anndata's "Variable names are not unique" (twice): named once, below
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = anndata.read_h5ad(source)
    if args.gene_id_key == _VAR_NAMES and _VAR_NAMES not in adata.var:
        args.gene_id_key, adata_var_names_only = None, True  # the var_names, even where a saved model's column is
    else:
        adata_var_names_only = False
    if args.gene_id_key is None and not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"{source}: {len(dup)} gene names occur in more than one column of var_names (e.g. {list(dup[:5])}); a "
            "gene must name one column: make them unique in the file (in Python: adata.var_names_make_unique(), "
            "then adata.write_h5ad(...)), or pass --gene-id-key with a var column of unique gene ids"
        )
    var_of_counts = adata.var
    if args.layer is None:
        counts = adata.X
    elif args.layer in adata.layers:
        counts = adata.layers[args.layer]
    elif args.layer == "raw" and adata.raw is not None:  # scanpy's place for the counts: all genes of adata.raw
        counts, var_of_counts = adata.raw.X, adata.raw.var
    else:
        raise ValueError(
            f"--layer {args.layer!r} is not a layer of {source} (layers: {list(adata.layers.keys())}; "
            "without --layer the raw counts are read from X)"
        )
    _check_cli_counts(adata, counts, args.layer, source)
    keep = _empty_cells(adata.obs_names, counts, args.layer, source, drop=args.drop_empty_cells)
    if keep is not None:  # --drop-empty-cells: the written file holds the other cells
        adata, counts = adata[keep].copy(), counts[keep]
    if getattr(counts, "format", None) == "csc":  # read by rows (scvi-tools' set-up warns about CSC to no end here)
        counts = counts.tocsr()
    # the model sees a bare AnnData of the counts and genes: scvi's set-up columns never reach the written file
    genes = _gene_expression_rows(var_of_counts, source)
    counts, var = (counts, var_of_counts.copy()) if genes is None else (counts[:, genes], var_of_counts[genes].copy())
    if adata_var_names_only:  # no var column, so a saved model's gene_id_key column cannot be read
        var = pd.DataFrame(index=var.index.copy())
    work = anndata.AnnData(X=counts, obs=pd.DataFrame(index=adata.obs_names.copy()), var=var)
    if saved:
        if args.gene_id_key is not None:  # the ids in that column are the genes: matched to the saved vocabulary
            _check_gene_id_column(work, args.gene_id_key, source)
            work.var = pd.DataFrame(index=pd.Index(work.var[args.gene_id_key].astype(str), name=None))
        layer = GeneMambaModel.load_registry(args.model)["setup_args"].get("layer")
        if layer is not None:
            work.layers[layer] = counts  # where the model was set up to read counts
        try:
            model = GeneMambaModel.load(
                args.model, adata=work, accelerator=args.accelerator, min_gene_overlap=args.min_gene_overlap
            )
        except ValueError as err:  # a saved gene_id_key column holding other ids: this command's way round it
            if "drop or rename the column" not in str(err):
                raise
            raise ValueError(f"{err} (with this command: --gene-id-key {_VAR_NAMES})") from None
    else:  # a published checkpoint: a directory or a Hub id in the local Hugging Face cache
        if args.gene_id_key is not None:
            _check_gene_id_column(work, args.gene_id_key, source)
        GeneMambaModel.setup_anndata(work, gene_id_key=args.gene_id_key)
        hub = {k: getattr(args, k) for k in ("subfolder", "revision", "cache_dir") if getattr(args, k) is not None}
        max_genes = 2048 if args.max_genes is None else args.max_genes
        model = GeneMambaModel.from_pretrained(
            args.model,
            work,
            max_genes=max_genes,
            accelerator=args.accelerator,
            min_gene_overlap=args.min_gene_overlap,
            **hub,
        )
    compression = _x_compression(source)  # a copy of the input: as compressed as it was
    # the room for the copy and its embedding (float32, d_model columns), checked before hours of embedding
    embedding_bytes = adata.n_obs * int(model.module.encoder.d_model) * 4
    check_free_space(out.parent, anndata_write_bytes(adata, compression) + embedding_bytes, out.name)
    z = model.get_latent_representation(batch_size=args.batch_size, progress_bar=not args.quiet)
    if args.key in adata.obsm:  # the copy replaces it; the input file keeps it
        print(f"genemamba embed: note: obsm[{args.key!r}] of the input is replaced in {out.name} (pass --key to keep "
              "both)", file=sys.stderr)  # fmt: skip
    adata.obsm[args.key] = z
    local = Path(args.model).expanduser()
    record = {"model": str(local.resolve()) if local.is_dir() else str(args.model), "counts": args.layer or "X"}
    record.update({k: getattr(args, k) for k in ("subfolder", "revision") if getattr(args, k) is not None})
    # what shaped the embedding besides the weights: the tokenizer's settings (all of them), the merge and pooling
    shaped = {**model.tokenizer_settings.to_config(), **{k: model._config.get(k) for k in ("merge", "pooling")}}
    record.update({k: v for k, v in shaped.items() if v is not None})
    record["genemamba_scvi_version"] = __version__
    if saved:  # the path alone names whatever is there later (a model saved over it; repro probe)
        import hashlib

        from .io._checkpoint import CHECKSUMS_FILE

        record["model_checksums_sha256"] = hashlib.sha256((local / CHECKSUMS_FILE).read_bytes()).hexdigest()
    adata.uns.setdefault("genemamba", {})[args.key] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    check_room_for_anndata(adata, out.parent, compression, out.name)  # again: the disk may have filled meanwhile
    _atomic_write_file(out, functools.partial(_write_unless_terminated, adata, compression), overwrite=args.overwrite)
    print(f"[done] wrote {out}: obsm[{args.key!r}], {z.shape[0]} cells x {z.shape[1]} (model {args.model})")
    return 0


def _write_unless_terminated(adata: Any, compression: str | None, path: Path) -> None:
    """``adata.write_h5ad(path)``; a SIGTERM or Ctrl-C during it stops the command before the file is renamed.

    (h5py runs Python code in callbacks whose exceptions are only printed, so the handler's own exception can be
    lost while the file is written; its flag is not.)
    """
    adata.write_h5ad(path, compression=compression)
    if _STOP_RECEIVED[0] is not None:
        raise _Terminated if _STOP_RECEIVED[0] == signal.SIGTERM else KeyboardInterrupt


def _x_compression(source: Path) -> str | None:
    """The HDF5 compression of the input's X ("gzip", "lzf" or None), which the written copy keeps."""
    import h5py

    with h5py.File(source, "r") as f:
        x = f.get("X")
        data = x.get("data") if isinstance(x, h5py.Group) else x
        compression = getattr(data, "compression", None)
    return compression if compression in ("gzip", "lzf") else None


def _check_writable(out: Path) -> None:
    """Refuse an output this user may not write: its folder (or nearest existing parent), or the file itself.

    A write-protected output file would be replaced by the rename all the same (another user's file in a shared,
    group-writable folder; HPC probe), where ``save`` refuses a write-protected model.
    """
    if out.is_file() and not os.access(out, os.W_OK):
        raise ValueError(f"refusing to overwrite {out}: it is write-protected (make it writable first to replace it)")
    from genemamba_scvi.io._files import nearest_existing, new_folder_error

    folder = nearest_existing(out.parent)
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {out}: {folder} is not a folder this user can write into")
    if (err := new_folder_error(folder)) is not None:  # (root passes os.access on /proc or a read-only mount)
        raise ValueError(f"cannot write {out}: {folder} takes no new files ({err.strerror or err})")


def _check_cli_model(args: argparse.Namespace, out: Path, saved: bool) -> None:
    """Refuse a --model naming nothing, options a saved model does not take, and an --out among the model's files."""
    from genemamba_scvi.io._hub_cache import hub_repo_dir, looks_like_repo_id, split_repo_subfolder

    model_path = Path(args.model)
    split = split_repo_subfolder(args.model)
    repo_id = args.model if looks_like_repo_id(args.model) else (split[0] if split else None)
    if not model_path.exists() and repo_id is None:
        raise FileNotFoundError(
            f"--model {args.model}: no such directory (give a model saved with GeneMambaModel.save, a published "
            "checkpoint directory, or a Hugging Face repository id such as mineself2016/GeneMamba in the local cache, "
            "with --subfolder <variant> or as mineself2016/GeneMamba/<variant> for a size variant)"
        )
    if saved:
        given = [
            option
            for option, value in (
                ("--max-genes", args.max_genes),
                ("--subfolder", args.subfolder),
                ("--revision", args.revision),
                ("--cache-dir", args.cache_dir),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to published checkpoints only; --model {args.model} is a model saved with "
                "GeneMambaModel.save, which keeps its own number of genes per cell and its files: leave them out"
            )
    # the model's own files are never replaced: its directory, or the cached repository of a Hub id
    protected = [model_path] if model_path.exists() else [hub_repo_dir(repo_id, args.cache_dir)]
    for target in {out.resolve(), Path(os.path.abspath(out))}:
        for folder in protected:
            if target.is_relative_to(folder.resolve()) or target.is_relative_to(Path(os.path.abspath(folder))):
                if folder == model_path and not (saved or args.subfolder or (model_path / "config.json").is_file()):
                    raise ValueError(  # e.g. --model . from a data folder: the model is what is wrong
                        f"--model {args.model} is not a model directory (no checksums.json of a model saved with "
                        "GeneMambaModel.save, no config.json of a published checkpoint)"
                    )
                raise ValueError(
                    f"--out {out} is inside the model's directory {folder}; write the embedding somewhere else"
                )


def _gene_expression_rows(var: Any, source: Path) -> Any:
    """Mask of the "Gene Expression" rows of a Cell Ranger file (``None``: no such column, or only genes).

    Antibody or CRISPR features are no genes (the API refuses them); the command leaves them out and says so.
    """
    from genemamba_scvi.data.gene_ids import non_gene_features

    found = non_gene_features(var)
    if found is None:
        return None
    column, genes = found
    warnings.warn(
        f"{source}: left out {int((~genes).sum())} features of var[{column!r}] other than 'Gene Expression' "
        f"({var[column].astype(str)[~genes].value_counts().to_dict()}); the embedding reads the {int(genes.sum())} "
        "gene rows",
        UserWarning,
        stacklevel=2,
    )
    return genes


def _check_gene_id_column(adata: Any, key: str, source: Path) -> None:
    if key not in adata.var:
        raise ValueError(
            f"--gene-id-key {key!r} is not a column of var of {source} (columns: {list(adata.var.columns)}; "
            "without --gene-id-key the var_names are the gene ids)"
        )
    from genemamba_scvi.model._genes import _check_gene_ids

    _check_gene_ids(adata, key)


def _check_cli_counts(adata: Any, counts: Any, layer: str | None, source: Path) -> None:
    """Refuse non-count input naming what the command read and the ``--layer`` that holds counts, if one does."""
    from genemamba_scvi.data.normalize import AMBIENT_HINT, NotCountsError, find_raw_counts, validate_counts

    where = f"layer {layer!r} of {source}" if layer else f"X of {source}"
    try:
        validate_counts(counts, where)
    except NotCountsError as err:
        found = find_raw_counts(adata, layer)
        if found is None:
            hint = "no layer, X or raw of this file holds raw counts"
            if err.hint.endswith(AMBIENT_HINT):  # non-integer values: corrected counts have a way forward
                hint += f"; {AMBIENT_HINT}"
        elif found[1] is not None:
            hint = f"{found[0]} holds them: pass --layer {found[1]}"
        elif found[0] == "adata.X":
            hint = "X holds them: leave out --layer"
        elif found[0].startswith("adata.raw"):
            hint = "the file's raw holds them: pass --layer raw"
        else:
            hint = f"{found[0]} holds them: write them to a layer of the file and pass --layer with its name"
        raise ValueError(f"{err.problem}; genemamba embed needs raw counts — {hint}") from None


def _empty_cells(obs_names: Any, counts: Any, layer: str | None, source: Path, drop: bool = False) -> Any:
    """Cells without counts, named in the file's own terms (the model's set-up would name its own layer).

    Refused; or with ``drop`` announced on stderr and the mask of the cells to keep returned (None: none empty).
    """
    import numpy as np

    empty = np.asarray(counts.sum(axis=1)).ravel() == 0
    if not empty.any():
        return None
    where = f"layer {layer!r}" if layer else "X"
    examples = list(obs_names[empty][:5])
    what = f"{int(empty.sum())} of {empty.size} cells of {source} have no counts in {where} (e.g. {examples})"
    if drop:
        print(f"[note] {what}: dropped (--drop-empty-cells); the written file holds the other cells", file=sys.stderr)
        return ~empty
    raise ValueError(
        f"{what}: a cell without counts has no genes to rank, and genemamba embed writes every cell of its input; "
        "pass --drop-empty-cells to leave them out of the written file, or drop them from the file first"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genemamba`` command."""
    parser = argparse.ArgumentParser(prog="genemamba", description=__doc__.replace("``", ""))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a tiny GeneMamba on the shipped 559-cell sample and embed it (CPU)")
    demo.add_argument("--out", default="demo_output", help="output directory (created; default: %(default)s)")
    demo.add_argument("--epochs", type=count, default=6, help="pre-training epochs (default: %(default)s)")
    demo.add_argument("--lr", type=positive, default=1e-2, help="peak learning rate (default: %(default)s)")
    demo.add_argument("--d-model", type=count, default=32, help="model width (default: %(default)s)")
    demo.add_argument("--n-layers", type=count, default=2, help="Bi-Mamba layers (default: %(default)s)")
    demo.add_argument("--max-genes", type=count, default=256, help="top-k genes per cell (default: %(default)s)")
    demo.add_argument("--batch-size", type=count, default=16, help="cells per training step (default: %(default)s)")
    demo.add_argument("--seed", type=seed, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out (else refused)"
    )
    demo.set_defaults(func=run_demo)

    embed = sub.add_parser(
        "embed",
        help="write cell embeddings of an .h5ad file (raw counts) with a saved or a published GeneMamba model",
        description="Read INPUT (raw counts in X, or in --layer), embed every cell with MODEL and write a copy of "
        "INPUT with the embedding in obsm[--key] to --out. MODEL is a directory written by GeneMambaModel.save, a "
        "published GeneMamba checkpoint directory, or a Hugging Face id in the local cache (a size variant with "
        "--subfolder, or as OWNER/NAME/VARIANT). The input file and the model's files are never modified and an "
        "existing output is replaced only with --overwrite.",
    )
    embed.add_argument("input", help=".h5ad file of raw counts")
    embed.add_argument("--model", required=True, help="model directory, or a Hugging Face id in the local cache")
    embed.add_argument("--out", required=True, help=".h5ad file to write (the input plus the embedding)")
    embed.add_argument(
        "--layer", default=None, help="layer holding the raw counts, or 'raw' for the file's raw (default: X)"
    )
    embed.add_argument("--key", default=LATENT_KEY, help="obsm key of the embedding (default: %(default)s)")
    embed.add_argument(
        "--gene-id-key",
        default=None,
        help="var column of the gene ids (default: a saved model's own gene_id_key column where the file has it, "
        f"else the var_names; {_VAR_NAMES!r}: the var_names even where the file has that column)",
    )
    embed.add_argument("--max-genes", type=count, default=None, help="published models: top-k genes (default: 2048)")
    embed.add_argument("--subfolder", default=None, help="published models: size-variant subfolder of --model")
    embed.add_argument("--revision", default=None, help="Hub id: cached branch, tag or commit (default: main)")
    embed.add_argument(
        "--cache-dir", default=None, help="Hub id: Hugging Face cache directory (default: $HF_HUB_CACHE or ~/.cache)"
    )
    embed.add_argument(
        "--min-gene-overlap",
        type=share,
        default=None,
        help="refuse the input only when both the share of its genes in the model's vocabulary and the share of the "
        "model's genes it holds are below this (default: the model's, 0.5)",
    )
    embed.add_argument("--batch-size", type=count, default=None, help="cells per forward pass (default: automatic)")
    embed.add_argument(
        "--accelerator",
        default="auto",
        choices=("auto", "gpu", "cuda", "cpu"),
        help="auto (a GPU when there is one), gpu or cpu (default: %(default)s)",
    )
    embed.add_argument(
        "--drop-empty-cells", action="store_true", help="leave cells without counts out of --out (default: refuse)"
    )
    embed.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)

    add_corpus_commands(sub)

    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a bad option (argparse printed which) or --help: the exit status, returned
        return int(exit_.code or 0)
    # Our own messages only: a handler on the root logger would print every Lightning INFO line a second time.
    package_logger = logging.getLogger("genemamba_scvi")
    if not package_logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.WARNING)
    for name in _PATH_OPTIONS:  # "--out=~/x": the shell leaves "~" after "=" as it is
        if isinstance(getattr(args, name, None), str) and getattr(args, name).startswith("~"):
            setattr(args, name, os.path.expanduser(getattr(args, name)))
    previous = _stop_on_signals()
    try:
        with warnings.catch_warnings():  # the message, not the Python file and source line it was raised from
            warnings.showwarning = functools.partial(_show_warning, args.command)
            status = int(args.func(args))
        if _STOP_RECEIVED[0] is not None:  # its exception was lost (e.g. inside a library's callback): work finished
            return _stopped(args.command, _STOP_RECEIVED[0] == signal.SIGTERM, " (after its outputs were written)")
        return status
    # bad input: the message, not a traceback (a folder given for a file, e.g. --resume ckpt/: cluster probe)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as err:
        print(f"genemamba {args.command}: error: {_cli_spelling(str(err), sub.choices[args.command])}", file=sys.stderr)
        return 2
    except PermissionError as err:  # a folder or file this user may not write: the message, not a traceback
        print(f"genemamba {args.command}: error: permission denied: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: no traceback; outputs are written atomically (their
        # temporaries removed on the way out), so nothing half-written is left; the flag too: Lightning re-raises its
        # own kind
        last = re.search(r"ckpt_path='([^']+)'", str(stop)) if args.command == "pretrain" else None  # how to resume
        return _stopped(args.command, isinstance(stop, _Terminated) or _STOP_RECEIVED[0] == signal.SIGTERM,
                        f"; its checkpoints are kept: run the same command with --resume last (or --resume "
                        f"{last.group(1)}) to go on" if last else "")  # fmt: skip
    except SystemExit:  # Lightning's answer to a stop while it trains is exit(1); the training runner turns it
        # into KeyboardInterrupt, so this is the fallback for a path that does not
        if _STOP_RECEIVED[0] is None:
            raise
        return _stopped(args.command, _STOP_RECEIVED[0] == signal.SIGTERM)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # the free-space check's own message says how much is needed and free; the disk's own error, where
        what = err.strerror if str(err.strerror).startswith("not enough free space") else (
            f"no space left on the disk ({err.filename or err}): free some")  # fmt: skip
        print(f"genemamba {args.command}: error: {what}; run the same command again when there is room (outputs are "
              "written atomically; build-corpus resumes where it stopped)", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _STOP_RECEIVED[0] = None


def _stopped(command: str, terminated: bool, after: str = "") -> int:
    """Say that a command was stopped (SIGTERM: "terminated", Ctrl-C: "interrupted"); its exit status (143 / 130)."""
    print(f"genemamba {command}: {'terminated' if terminated else 'interrupted'}{after}", file=sys.stderr)
    return 143 if terminated else 130


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a pipeline's, a scheduler's or ``kill``'s stop) raised like Ctrl-C, so temporaries are removed."""


#: The stopping signal (SIGTERM or SIGINT) that arrived during the running command, kept apart from its exception,
#: which can be lost.
_STOP_RECEIVED: list[int | None] = [None]


def _raise_stop(signum: int, frame: Any) -> None:
    _STOP_RECEIVED[0] = signum
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _stop_on_signals() -> dict[int, Any]:
    """Make SIGTERM stop the command as Ctrl-C does, each remembered by a flag; the old handlers, by signal.

    (SIGTERM left a hidden temporary output before.) A Ctrl-C its caller ignores (SIG_IGN) stays ignored.
    """
    previous = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_stop)
    except ValueError:  # not the main thread (main() called from a thread): left as it is
        pass
    return previous


def _show_warning(command: str, message: Warning | str, category: type, *args: Any, **kwargs: Any) -> None:
    print(f"genemamba {command}: warning: {message}", file=sys.stderr)


def _cli_spelling(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the library's Python spellings of this command's options written as its options.

    ``layer='counts'`` becomes ``--layer 'counts'``, ``overwrite=True`` ``--overwrite``, ``subfolder=...``
    ``--subfolder <...>``, and a snake_case name alone (``batch_size must be ...``) its option; spellings of
    arguments the command does not have, and those inside a Python call of the message
    (``GeneMambaModel.load(..., min_gene_overlap=...)``), are left as they are.
    """
    options = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"}
    for python_name, dest in (("out_dir", "out"), ("min_overlap", "min_gene_overlap")):  # the library's spellings
        if dest in options:
            options.setdefault(python_name, options[dest])

    def as_option(match: re.Match) -> str:
        flag = options.get(match.group(1))
        if flag is None or _inside_python_call(message, match.start()):
            return match.group(0)
        value = match.group(2)
        if value is None:  # "batch_size must be ...": the name alone
            return flag if "_" in match.group(1) else match.group(0)
        if not value:  # "gene_id_key=)": the option named alone
            return flag
        if value in ("True", "None"):
            return flag if value == "True" else f"no {flag}"
        return f"{flag} {'<...>' if value == '...' else value}"

    value = r"'[^']*'|\"[^\"]*\"|\.\.\.|<[^>]*>|[\w.-]+|(?=[),;]|$)"
    return re.sub(rf"(?<![\w.'-])([a-z_]+)(?:=({value})|(?![\w=(]))", as_option, message)


def _inside_python_call(text: str, pos: int) -> bool:
    """Whether ``pos`` lies inside the parentheses of a call (``name(...)``) in ``text``."""
    calls = []
    for k, char in enumerate(text[:pos]):
        if char == "(":
            calls.append(k > 0 and (text[k - 1].isalnum() or text[k - 1] in "_."))
        elif char == ")" and calls:
            calls.pop()
    return any(calls)


if __name__ == "__main__":
    sys.exit(main())
