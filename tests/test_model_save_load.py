"""GeneMambaModel save / load of damaged or missing model files (model/_save_load.py, io/).

From the bad-input matrix (issue 7): each test asserts the error type and that the message names the problem.
Real data: a slice of the shipped 559-cell count sample (``sample48`` in conftest)."""

from __future__ import annotations

import errno
import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

from genemamba_scvi import GeneMambaModel, __version__


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
    from genemamba_scvi.model._genes import CONFIG_KEYS

    # config.json holds every setting the loader accepts, in the order every version wrote them (max_genes first)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert tuple(config) == CONFIG_KEYS
    assert CONFIG_KEYS[:2] == ("max_genes", "d_model") and "min_gene_overlap" in CONFIG_KEYS


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

    def full_disk(*args, **kwargs):  # what safetensors raises on a full disk: no OSError (pipeline probe)
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')  # fmt: skip

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="no space left on the disk") as full:
        model.save(tmp_path / "m", overwrite=True)
    assert full.value.errno == errno.ENOSPC  # what the command line's full-disk message catches
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dir left behind
    GeneMambaModel.load(tmp_path / "m", adata=adata)


def test_a_saved_gene_id_key_column_with_other_names_is_named_with_a_fix_that_works(sample48, tmp_path):
    # lab A sets up with gene_id_key='gene_ids'; lab B's var_names hold the symbols and var['gene_ids'] something
    # else: the error called those values "var_names" and advised gene_id_key in setup_anndata, which load overrides
    import warnings

    import numpy as np

    from conftest import TINY_MODEL as TINY

    cells = sample48.copy()
    cells.var["gene_ids"] = cells.var_names.astype(str)
    GeneMambaModel.setup_anndata(cells, layer="counts", gene_id_key="gene_ids")
    model = GeneMambaModel(cells, **TINY)
    model.save(tmp_path / "m")
    query = cells.copy()
    query.var["gene_ids"] = [f"entrez:{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match=r"gene ids of adata.var\['gene_ids'\].*del adata.var\['gene_ids'\]") as err:
        GeneMambaModel.load(tmp_path / "m", adata=query)
    assert "0 of" in str(err.value) and "var_names e.g." not in str(err.value)
    del query.var["gene_ids"]  # the fix the message names: the var_names are read
    loaded = GeneMambaModel.load(tmp_path / "m", adata=query)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained: its warning is not this test's
        np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation(cells))


def test_a_config_edited_by_hand_with_its_checksum_recomputed_gets_a_clear_error(sample48_model, tmp_path):
    # d_model or the number of cell types changed in the JSON: torch's raw "Error(s) in loading state_dict" before
    import hashlib

    model, adata = sample48_model
    model.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    doc = json.loads(config.read_text())
    doc["d_model"] = 2 * doc["d_model"]
    config.write_text(json.dumps(doc))
    sums = tmp_path / "m" / "checksums.json"
    manifest = json.loads(sums.read_text())
    files = manifest["files"] if "files" in manifest else manifest
    files["config.json"] = hashlib.sha256(config.read_bytes()).hexdigest()
    sums.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"does not fit this model.*describe another model than its weights"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)


def _rewrite(path, name, edit):
    """Edit a saved model's JSON file by hand and recompute its checksum (as a newer version would write it)."""
    import hashlib

    doc = json.loads((path / name).read_text())
    (path / name).write_text(json.dumps(edit(doc)))
    sums = path / "checksums.json"
    manifest = json.loads(sums.read_text())
    manifest["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    sums.write_text(json.dumps(manifest))


def test_a_model_of_a_newer_version_is_named_as_such(sample48_model, tmp_path):
    # pipeline probe: a setting added by a later release gave "GeneMambaModel got unexpected setting(s)"; a JSON
    # list or a string where an object belongs gave an AttributeError from deep inside
    model, adata = sample48_model
    model.save(tmp_path / "m")
    _rewrite(tmp_path / "m", "extra.json", lambda d: {**d, "genemamba_scvi_version": "99.0"})
    with pytest.warns(UserWarning, match=r"saved by genemamba-scvi 99\.0, newer than this genemamba-scvi"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)
    _rewrite(tmp_path / "m", "extra.json", lambda d: {**d, "genemamba_scvi_version": f"{__version__}+cu121"})
    with warnings.catch_warnings():  # a local build of this release is not newer (review)
        warnings.simplefilter("error", UserWarning)
        GeneMambaModel.load(tmp_path / "m", adata=adata)
    _rewrite(tmp_path / "m", "extra.json", lambda d: {**d, "genemamba_scvi_version": "99.0"})
    _rewrite(tmp_path / "m", "config.json", lambda d: {**d, "new_setting": 1})
    with pytest.raises(ValueError, match=r"config\.json has settings this genemamba-scvi .* \['new_setting'\] "
                                         r"\(saved by genemamba-scvi 99\.0\)"):  # fmt: skip
        GeneMambaModel.load(tmp_path / "m", adata=adata)
    _rewrite(tmp_path / "m", "config.json", lambda d: [1, 2])
    with pytest.raises(ValueError, match=r"corrupt JSON file .*config\.json: it holds a list, not an object"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)


def test_the_same_weights_save_to_the_same_bytes(sample48_model, tmp_path):
    # serving probe: safetensors wrote its metadata in a hash map's order, which changes from save to save, so the
    # same model got other checksums (content-addressed stores saw a change)
    import struct

    model, _ = sample48_model
    digests = set()
    for i in range(6):
        model.save(tmp_path / f"m{i}")
        digests.add(hashlib.sha256((tmp_path / f"m{i}" / "model.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    raw = (tmp_path / "m0" / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert list(meta) == sorted(meta)
    assert (
        GeneMambaModel.load(tmp_path / "m0", adata=model.adata).module.state_dict().keys()
        == model.module.state_dict().keys()
    )


def test_a_save_during_a_load_is_read_again_not_mixed_or_blamed(sample48_model, tmp_path, monkeypatch):
    # serving probe: a service loading a model a training job saves again got "checksum mismatch ... modified or
    # truncated after saving" (1% of loads) for an intact model; the read now starts over when the folder's manifest
    # changed while it was read
    from genemamba_scvi.io import _checkpoint

    model, adata = sample48_model
    model.save(tmp_path / "m")
    other = GeneMambaModel.load(tmp_path / "m", adata=adata)
    with torch.no_grad():
        other.module.encoder.embedding.weight.add_(1.0)
    real_sha = _checkpoint._sha256
    saves = []

    def sha_while_saving(path):
        if not saves:  # the first file hashed: the other model is saved over the folder meanwhile
            saves.append(path)
            other.save(tmp_path / "m", overwrite=True)
        return real_sha(path)

    monkeypatch.setattr(_checkpoint, "_sha256", sha_while_saving)
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    assert saves
    weight = loaded.module.encoder.embedding.weight
    assert torch.equal(weight, other.module.encoder.embedding.weight.to(weight.device))


def test_a_load_never_mixes_the_weights_of_one_save_and_the_anndata_of_another(sample48_model, tmp_path, monkeypatch):
    # review: adata.h5ad was read after the checked checkpoint, so a save in between gave save 1's weights with
    # save 2's cells; and three saves during three reads still blamed the files
    import anndata

    from genemamba_scvi.io import _checkpoint

    model, adata = sample48_model
    model.save(tmp_path / "m", save_anndata=True)
    other = GeneMambaModel.load(tmp_path / "m")
    with torch.no_grad():
        other.module.encoder.embedding.weight.add_(1.0)
    real_read = anndata.read_h5ad
    saved = []

    def save_then_read(path, *args, **kwargs):
        if not saved:
            saved.append(path)
            other.save(tmp_path / "m", overwrite=True, save_anndata=True)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(anndata, "read_h5ad", save_then_read)
    loaded = GeneMambaModel.load(tmp_path / "m")
    assert saved
    weight = loaded.module.encoder.embedding.weight
    assert torch.equal(weight, other.module.encoder.embedding.weight.to(weight.device))
    monkeypatch.undo()
    real_sha = _checkpoint._sha256
    saves = []

    def a_save_during_every_read(path):
        if path.name == "model.safetensors" and not saves_in_progress:
            saves_in_progress.append(1)
            (model if len(saves) % 2 else other).save(tmp_path / "m", overwrite=True)
            saves.append(1)
            saves_in_progress.clear()
        return real_sha(path)

    saves_in_progress: list[int] = []
    monkeypatch.setattr(_checkpoint, "_sha256", a_save_during_every_read)
    with pytest.raises(ValueError, match="was saved again while it was read, three times running"):
        GeneMambaModel.load(tmp_path / "m", adata=adata)
    assert len(saves) >= 3


def test_overwriting_keeps_the_folders_mode_and_group(sample48_model, tmp_path):
    # HPC probe: the swapped-in folder took the saver's umask and primary group: a private model became
    # world-readable, a lab's shared model (group lab, setgid) lost its group and colleagues could not load it
    import os
    import stat

    model, _ = sample48_model
    model.save(tmp_path / "m")
    os.chmod(tmp_path / "m", 0o2750)
    gid = 4321 if os.geteuid() == 0 else os.getgid()  # (root may give any group; a user, one of its own)
    os.chown(tmp_path / "m", -1, gid)
    model.save(tmp_path / "m", overwrite=True)
    info = (tmp_path / "m").stat()
    assert stat.S_IMODE(info.st_mode) == 0o2750
    assert info.st_gid == gid
    assert all(p.stat().st_gid == gid for p in (tmp_path / "m").iterdir())


def test_overwriting_through_a_symbolic_link_names_the_link(sample48_model, tmp_path):
    # HPC probe: a model folder linked into scratch; the save said "it is not a directory"
    model, _ = sample48_model
    model.save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match=r"it is a symbolic link \(to .*real\); pass the real folder's path"):
        model.save(tmp_path / "link", overwrite=True)
    model.save(tmp_path / "real", overwrite=True)


def test_a_model_whose_saved_anndata_is_gone_loads_with_an_anndata_given(sample48_model, tmp_path):
    # HPC probe: adata.h5ad deleted (a quota) or unreadable to a colleague: the weights were intact, yet the model
    # could not be loaded even with adata=; without adata= it is still named as missing
    model, adata = sample48_model
    model.save(tmp_path / "m", save_anndata=True)
    (tmp_path / "m" / "adata.h5ad").unlink()
    loaded = GeneMambaModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"is missing adata\.h5ad \(.*pass adata= to load it without\)"):
        GeneMambaModel.load(tmp_path / "m")


def test_a_file_the_saver_cannot_read_in_the_model_folder_is_named(sample48_model, tmp_path, monkeypatch):
    # HPC probe: a colleague's private file in a shared model folder failed the save in shutil's traceback
    import os
    import shutil

    model, _ = sample48_model
    model.save(tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("private")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def denied(src, dst, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "link", denied)  # (root reads every file: the colleague's mode is simulated)
    monkeypatch.setattr(shutil, "copy2", denied)
    with pytest.raises(PermissionError, match=r"cannot keep .*notes\.txt while replacing the model .*nothing was"):
        model.save(tmp_path / "m", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
