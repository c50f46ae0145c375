"""Shared pytest fixtures: the real data of ``shared/data`` (or the copy embedded in the package)."""

from __future__ import annotations

from pathlib import Path

import pytest

_SAMPLE = "celltypist_sample_559cells_counts.h5ad"


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
