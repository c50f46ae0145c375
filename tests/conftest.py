"""Shared pytest fixtures: the real data of ``shared/data`` (or the copy embedded in the package)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Triton kernels (``nn.fused``) run on CPU tensors through Triton's interpreter on machines without CUDA.
# Triton reads this when it is first imported, so it is set before any test module can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from genemamba_scvi.nn.config import GeneMambaConfig

# test helpers (e.g. ``_official_writer``) are imported as top-level modules (pytest runs with importlib mode)
sys.path.insert(0, str(Path(__file__).resolve().parent))

_SAMPLE = "celltypist_sample_559cells_counts.h5ad"


@pytest.fixture(autouse=True, scope="session")
def _scvi_logs_out_of_the_tree(tmp_path_factory):
    """scvi-tools writes early stopping's checkpoints under ``./scvi_log``: a test run left it in the checkout."""
    import scvi

    before = scvi.settings.logging_dir
    scvi.settings.logging_dir = tmp_path_factory.mktemp("scvi_log")
    yield
    scvi.settings.logging_dir = before


@pytest.fixture
def triton_bounds():
    """Fail the test if an interpreted Triton kernel loads, stores or adds outside its tensor arguments.

    Only under Triton's interpreter (CPU machines); compiled kernels on a GPU are not watched. See
    ``tests/triton_bounds.py``.
    """
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        yield []
        return
    from triton_bounds import bounds_checked

    with bounds_checked() as bad:
        yield bad
    assert not bad, f"out-of-bounds accesses by Triton kernels: {bad[:5]}"


@pytest.fixture
def nan_empty():
    """New tensors from ``torch.empty`` & co. filled with NaN (integers with their largest value) during the test,
    so that a kernel which leaves part of a buffer it was given unwritten shows in the results."""
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill


def settings(config: GeneMambaConfig) -> dict:
    """The settings of ``config`` that differ from the defaults, as keyword arguments (``**settings(cfg)``)."""
    defaults = GeneMambaConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != defaults[k]}


#: The tiny network of the ``nn`` tests: 32 wide, 8 states, heads of 16, chunks of 16, pure PyTorch.
TINY_CONFIG = GeneMambaConfig(d_model=32, d_state=8, headdim=16, chunk_size=16, backend="torch")
TINY = settings(TINY_CONFIG)

#: The tiny model of the AnnData-level tests: one 16-wide layer, heads of 8, top 64 genes.
TINY_MODEL_CONFIG = GeneMambaConfig(d_model=16, n_layers=1, headdim=8, chunk_size=16, backend="torch")
TINY_MODEL = {**settings(TINY_MODEL_CONFIG), "max_genes": 64}


def _shared_data_dir() -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if (shared / _SAMPLE).is_file():
        return shared
    from genemamba_scvi.datasets import resource_path

    return resource_path(_SAMPLE).parent  # embedded copy, same layout


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory with the real data files (``shared/data`` of the project, else the embedded copy)."""
    return _shared_data_dir()


@pytest.fixture(scope="session")
def _sample_adata_session(shared_data: Path):
    import anndata

    adata = anndata.read_h5ad(shared_data / _SAMPLE)
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def sample_adata(_sample_adata_session):
    """The 559-cell celltypist sample (raw counts in ``X`` and ``layers["counts"]``); a fresh copy per test."""
    return _sample_adata_session.copy()


@pytest.fixture(scope="module")
def sample48():
    """The first 48 cells of the celltypist sample: the genes they express plus 50 never-expressed ones (real, fast)."""
    import numpy as np

    from genemamba_scvi.datasets import load_celltypist_sample

    adata = load_celltypist_sample()[:48].copy()
    expressed = np.asarray((adata.layers["counts"] > 0).sum(axis=0)).ravel() > 0
    keep = np.where(expressed)[0].tolist() + np.where(~expressed)[0][:50].tolist()
    return adata[:, sorted(keep)].copy()


@pytest.fixture(scope="module")
def sample48_model(sample48):
    """``(model, adata)``: an untrained tiny model set up on a copy of :func:`sample48` (``layer="counts"``)."""
    import scvi

    from genemamba_scvi import GeneMambaModel

    scvi.settings.seed = 0
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    return GeneMambaModel(adata, **TINY_MODEL), adata


def build_sample_corpus(out: Path, max_genes: int, shard_size: int) -> Path:
    """A token corpus of the shipped 559-cell celltypist sample (exact medians) at ``out``."""
    from genemamba_scvi.data.corpus import build_corpus
    from genemamba_scvi.datasets import resource_path

    sample = resource_path("celltypist_sample_559cells_counts.h5ad")
    build_corpus(sample, out, max_genes=max_genes, shard_size=shard_size, median_method="exact")
    return out


def crash_callback(step: int):
    """A Lightning callback that raises ``RuntimeError("simulated crash")`` as optimiser step ``step`` starts."""
    import lightning.pytorch as pl

    class CrashAt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == step:
                raise RuntimeError("simulated crash")

    return CrashAt()
