"""``genemamba build-corpus`` and ``genemamba pretrain``: a lab's own pre-training from a shell (a cluster job).

``build-corpus`` tokenizes .h5ad files into shards (:func:`genemamba_scvi.data.build_corpus`); ``pretrain`` trains
on them and writes a model directory (:meth:`GeneMambaModel.pretrain <genemamba_scvi.model.GeneMambaModel.pretrain>`),
with checkpoints to resume from after a job's time limit.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._cli_args import count, devices, held_out, nonnegative, positive, seed, share


def add_corpus_commands(sub: Any) -> None:
    """Register ``build-corpus`` and ``pretrain`` on the ``genemamba`` command's subparsers."""
    corpus = sub.add_parser("build-corpus", help="tokenize many .h5ad files into on-disk shards for pre-training")
    corpus.add_argument("inputs", nargs="+", help=".h5ad files or directories of them")
    corpus.add_argument("--out", required=True, help="corpus directory (resumable)")
    corpus.add_argument("--vocab", default=None, help="vocab.json (default: built from the first file's genes)")
    corpus.add_argument(
        "--gene-medians",
        default=None,
        help="a .npy of medians per token id of --vocab (a saved model's gene_medians.npy, to tokenize as it does; "
        "default: computed from the files)",
    )
    corpus.add_argument("--max-genes", type=count, default=2048, help="top-k genes per cell (default: %(default)s)")
    corpus.add_argument("--add-cls", action="store_true", help="prepend <cls> to every cell (for pooling='cls')")
    corpus.add_argument("--layer", default=None, help="layer holding the raw counts (default: X)")
    corpus.add_argument("--chunk-size", type=count, default=10_000, help="cells read at a time (default: %(default)s)")
    corpus.add_argument(
        "--shard-size", type=count, default=100_000, help="cells per shard, the unit of resuming (default: %(default)s)"
    )
    corpus.add_argument(
        "--median-method",
        choices=("tdigest", "exact"),
        default="tdigest",
        help="gene medians by a streaming t-digest or exactly (more memory) (default: %(default)s)",
    )
    corpus.add_argument("--gene-id-key", default=None, help="var column with the gene ids (default: the var_names)")
    corpus.add_argument(
        "--min-gene-overlap",
        type=share,
        default=0.5,
        help="refuse a file when its share of vocabulary genes and the vocabulary's share in it are both below this",
    )
    corpus.set_defaults(func=_build_corpus)

    run = sub.add_parser("pretrain", help="pre-train a GeneMamba model on a corpus made by build-corpus")
    run.add_argument("corpus", help="corpus directory written by build-corpus")
    run.add_argument("--save-dir", required=True, help="where the trained model is written (load it with "
                     "GeneMambaModel.load or use it with genemamba embed --model)")  # fmt: skip
    run.add_argument("--overwrite", action="store_true", help="replace an existing --save-dir")
    length = run.add_argument_group("length (without either: one pass over the corpus)")
    length.add_argument("--max-steps", type=count, default=None, help="optimiser steps")
    length.add_argument("--max-epochs", type=count, default=None, help="passes over the corpus")
    model = run.add_argument_group("model (default: the published size, 24 x 512)")
    model.add_argument("--d-model", type=count, default=None, help="model width")
    model.add_argument("--n-layers", type=count, default=None, help="Bi-Mamba layers")
    opt = run.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=count, default=32, help="cells a step per device (default: %(default)s)")
    opt.add_argument("--accumulate-grad-batches", type=count, default=1, help="batches per optimiser step")
    opt.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate (default: %(default)s)")
    opt.add_argument("--gene-sets", default=None, help="pathway loss: kegg, go_bp or a .gmt file (default: none)")
    opt.add_argument("--gamma", type=nonnegative, default=None, help="the pathway loss's weight (default: 0.1)")
    opt.add_argument(
        "--validation-size",
        type=held_out,
        default=None,
        help="cells held out for a validation loss: a share (0.01) or a count (default: none)",
    )
    opt.add_argument("--val-check-interval", type=count, default=None,
                     help="training batches between validations (for --validation-size when --max-steps ends inside "
                     "the first epoch; default: at the end of each epoch)")  # fmt: skip
    opt.add_argument("--seed", type=seed, default=0, help="initialisation, order and masks (default: %(default)s)")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="less memory for one more forward pass")
    dev = run.add_argument_group("devices")
    dev.add_argument("--accelerator", default="auto", help="auto, gpu or cpu (default: %(default)s)")
    dev.add_argument("--devices", type=devices, default="auto", help="auto, a number, or indices such as 0,1")
    dev.add_argument("--strategy", default="auto", help="auto or ddp (several GPUs) (default: %(default)s)")
    dev.add_argument("--precision", default="auto", help="auto (bf16-mixed on a GPU, 32-true on a CPU), bf16-mixed, "
                     "16-mixed or 32-true (default: %(default)s)")  # fmt: skip
    dev.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default: %(default)s)")
    ckpt = run.add_argument_group("checkpoints (to resume a stopped job)")
    ckpt.add_argument("--checkpoint-dir", default=None, help="write resumable checkpoints here")
    ckpt.add_argument("--checkpoint-every", type=count, default=None,
                      help="optimiser steps between checkpoints (default: at the end of every epoch)")  # fmt: skip
    ckpt.add_argument("--resume", default=None,
                      help="a checkpoint to resume from, or 'last' (the --checkpoint-dir's latest)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_pretrain)


def _build_corpus(args: argparse.Namespace) -> int:
    from genemamba_scvi.data.corpus import build_corpus

    manifest = build_corpus(
        args.inputs,
        args.out,
        vocab=args.vocab,
        max_genes=args.max_genes,
        layer=args.layer,
        gene_medians=_read_medians(args.gene_medians) if args.gene_medians is not None else None,
        chunk_size=args.chunk_size,
        shard_size=args.shard_size,
        median_method=args.median_method,
        add_cls=args.add_cls,
        gene_id_key=args.gene_id_key,
        min_gene_overlap=args.min_gene_overlap,
        progress=True,
    )
    print(f"[done] {manifest.n_cells} cells in {len(manifest.shards)} shards in {args.out}")
    return 0


def _read_medians(path: str) -> Any:
    """``--gene-medians``: a 1-D float ``.npy`` (read without pickle), refused by name otherwise."""
    import numpy as np

    try:
        medians = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"--gene-medians {path!r} is not a .npy array of medians: {err}") from None
    if medians.ndim != 1 or not np.issubdtype(medians.dtype, np.floating):
        raise ValueError(f"--gene-medians {path!r} must hold a 1-D float array, got {medians.dtype} {medians.shape}")
    return medians.astype(np.float64)


def _pretrain(args: argparse.Namespace) -> int:
    from genemamba_scvi import GeneMambaModel

    if args.resume == "last" and args.checkpoint_dir is None:
        raise ValueError("--resume last needs --checkpoint-dir (the folder whose last.ckpt to resume)")
    settings = {k: getattr(args, k) for k in ("d_model", "n_layers") if getattr(args, k) is not None}
    result = GeneMambaModel.pretrain(
        args.corpus,
        args.save_dir,
        overwrite=args.overwrite,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        accumulate_grad_batches=args.accumulate_grad_batches,
        lr=args.lr,
        gene_sets=args.gene_sets,
        gamma=args.gamma,
        validation_size=args.validation_size,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        num_workers=args.num_workers,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every_n_steps=args.checkpoint_every,
        ckpt_path=args.resume,
        enable_progress_bar=not args.quiet,
        **({"val_check_interval": args.val_check_interval} if args.val_check_interval is not None else {}),
        **settings,
    )
    if result.trainer.is_global_zero:
        loss = result.trainer.callback_metrics.get("train_loss")
        said = f", last logged train_loss {float(loss):.4f}" if loss is not None else ""
        print(f"[done] {result.trainer.global_step} optimiser steps{said}; model written to {args.save_dir}")
    return 0
