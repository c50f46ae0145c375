"""Every code block a user would copy from the README and the docs pages runs (issue 17).

Each page's ```python blocks (and its ``genemamba ...`` command lines) run in order, in one namespace, in a
fresh directory that holds small real inputs: ``atlas/`` and ``more_data/`` with cells of the shipped
sample, and an official-layout checkpoint ``GeneMamba/`` (fabricated from a tiny random encoder, since the
published weights cannot be downloaded here). Sizes are shrunk by the substitutions in ``SMALL`` (the
published 512 x 24 becomes 32 x 2, GPUs become the CPU, 100,000 steps become 2), so the blocks check that
the code is right, not how long it takes. A block preceded by ``<!-- docs-test: skip (reason) -->`` is not
run; the tutorials are notebooks, executed by the docs build.
"""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "<!-- docs-test: skip"

SMALL = [
    (r"\bd_model=\d+", "d_model=32"),
    (r"\bn_layers=\d+", "n_layers=2"),
    (r"\bmax_genes=\d+", "max_genes=64"),
    (r"--max-genes \d+", "--max-genes 64"),
    (r"\bmax_epochs=\d+", "max_epochs=1"),
    (r"\bmax_steps=[\d_]+", "max_steps=2"),
    (r"\bbatch_size=\d+", "batch_size=16"),
    (r"\bcheckpoint_every_n_steps=[\d_]+", "checkpoint_every_n_steps=1"),
    (r"\bshard_size=[\d_]+", "shard_size=50"),
    (r"\baccumulate_grad_batches=\d+", "accumulate_grad_batches=1"),
    (r'\baccelerator="gpu"', 'accelerator="cpu"'),
    (r"\bdevices=\d+", "devices=1"),
    (r'\bstrategy="ddp[a-z_]*"', 'strategy="auto"'),
    (r'\bprecision="bf16-mixed"', 'precision="32-true"'),
    (r'gene_sets="go_bp"', 'gene_sets="kegg"'),
    (r"<variant>", "small"),
]


def _blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of the page's runnable blocks, in order."""
    text = page.read_text(encoding="utf-8")
    out = []
    for match in re.finditer(r"^```(\w+)[^\n]*\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()[-1:] or [""]
        if before[0].startswith(SKIP_MARK):
            continue
        lang, code = match.group(1), match.group(2)
        if lang == "bash":
            code = "\n".join(line for line in code.splitlines() if line.startswith("genemamba "))
        if lang in ("python", "bash") and code.strip():
            out.append((text[: match.start()].count("\n") + 1, lang, code))
    return out


def _shrink(code: str) -> str:
    for pattern, replacement in SMALL:
        code = re.sub(pattern, replacement, code)
    return code


def _inputs(workdir: Path) -> dict:
    """Small real inputs in ``workdir``; returns the namespace a page starts with."""
    import numpy as np
    import scvi
    import torch

    from _official_writer import cache_like_huggingface_hub, write_official_checkpoint
    from genemamba_scvi.data.vocab import GeneVocab
    from genemamba_scvi.datasets import load_celltypist_sample
    from genemamba_scvi.nn import GeneMambaEncoder, MaskedLMHead

    scvi.settings.seed = 0
    sample = load_celltypist_sample()
    sample = sample[:80, np.asarray((sample.layers["counts"][:80] > 0).sum(axis=0)).ravel() > 0].copy()
    for folder, cells in (("atlas", slice(0, 40)), ("more_data", slice(40, 80))):
        (workdir / folder).mkdir()
        name = "study_7.h5ad" if folder == "more_data" else "sample.h5ad"
        sample[cells].copy().write_h5ad(workdir / folder / name)
    vocab = GeneVocab.from_var_names(list(sample.var_names))
    kwargs = {"d_model": 32, "n_layers": 2, "d_state": 16, "headdim": 16, "chunk_size": 32}
    torch.manual_seed(0)
    enc = GeneMambaEncoder(len(vocab), merge="gate", shared_merge=True, block="official", backend="torch", **kwargs)
    head = MaskedLMHead(32, len(vocab))
    enc_kwargs = {**kwargs, "vocab_size": len(vocab), "merge": "gate", "shared_merge": True, "block": "official"}
    for target in ("GeneMamba", "GeneMamba/small"):
        write_official_checkpoint(workdir / target, enc_kwargs, enc.state_dict(), head.state_dict(), vocab)
    cache_like_huggingface_hub(workdir / "hf_cache", "mineself2016/GeneMamba", workdir / "GeneMamba")
    adata = sample[:40].copy()
    return {"adata": adata}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    blocks = _blocks(page)
    if not blocks:
        pytest.skip("no code blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # where _inputs caches the official layout
    namespace = _inputs(tmp_path)
    from genemamba_scvi.cli import main

    for line, lang, code in blocks:
        code = _shrink(code)
        where = f"{page.relative_to(ROOT)}:{line}"
        if lang == "bash":
            for command in code.splitlines():
                args = [a for arg in shlex.split(command, comments=True)[1:] for a in (glob.glob(arg) or [arg])]
                assert main(args) == 0, where
            continue
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the code block at {where} failed:\n{code}") from err


def test_skip_marks_name_a_reason():
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith(SKIP_MARK):
                assert re.match(r"<!-- docs-test: skip \(.+\) -->$", line), f"{page.name}: {line}"


def test_docs_build_refuses_a_plotting_cell_without_image(monkeypatch):
    """The Sphinx hook in docs/conf.py fails the build when an executed notebook cell plots nothing."""
    import importlib.util
    import os
    from types import SimpleNamespace

    from docutils import nodes
    from sphinx.errors import ExtensionError

    for var in ("MPLBACKEND", "PYTHONWARNINGS"):  # conf.py sets them for the notebook kernels; restore after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)

    def cell(code: str, with_image: bool) -> nodes.container:
        source = nodes.container(nb_element="cell_code_source")
        source += nodes.literal_block(code, code)
        output = nodes.container(nb_element="cell_code_output")
        if with_image:
            output += nodes.image(uri="umap.png")
        node = nodes.container(nb_element="cell_code")
        node += [source, output]
        return node

    app = SimpleNamespace(env=SimpleNamespace(docname="tutorials/quickstart"))
    doc = nodes.section()
    doc += [cell("x = 1", False), cell('sc.pl.umap(adata, color="leiden")', True)]
    conf._check_plots_have_images(app, doc)  # fine: the plotting cell has its picture
    doc += cell('sc.pl.umap(adata, color="leiden")', False)
    with pytest.raises(ExtensionError, match="produced no image"):
        conf._check_plots_have_images(app, doc)
