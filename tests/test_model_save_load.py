"""GeneMambaModel save / load of damaged or missing model files (model/_save_load.py, io/).

From the bad-input matrix (issue 7): each test asserts the error type and that the message names the problem.
Real data: a slice of the shipped 559-cell count sample (``sample48`` in conftest)."""

from __future__ import annotations

import json

import pytest

from genemamba_scvi import GeneMambaModel


# ----------------------------------------------------------------------------- model files
def test_load_missing_dir(sample48_model, tmp_path):
    _, adata = sample48_model
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        GeneMambaModel.load(tmp_path / "nothing_here", adata=adata)


def test_load_truncated_weights(sample48_model, tmp_path):
    model, adata = sample48_model
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)


def test_load_tampered_weights(sample48_model, tmp_path):
    model, adata = sample48_model
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"(?i)checksum.*model\.safetensors|model\.safetensors.*checksum"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)


def test_load_never_unpickles(sample48_model, tmp_path):
    model, _ = sample48_model
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "model.safetensors" in files
    assert not any(name.endswith((".pt", ".pkl", ".ckpt")) for name in files)
    json.loads((tmp_path / "m" / "config.json").read_text())


def test_save_crash_keeps_old_model(sample48_model, tmp_path, monkeypatch):
    import safetensors.torch

    model, adata = sample48_model
    model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="simulated"):
        model.save(tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dir left behind
    GeneMambaModel.load(tmp_path / "m", adata=adata)
