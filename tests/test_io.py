"""Checkpoint directories: our format (atomic, checksummed, no pickle) and the official GeneMamba layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import genemamba_scvi.io as gio
import genemamba_scvi.io._files as gio_files
from _official_writer import write_official_checkpoint
from genemamba_scvi.data.vocab import GeneVocab
from genemamba_scvi.io import (
    read_checkpoint,
    read_official_checkpoint,
    write_checkpoint,
)
from genemamba_scvi.nn.encoder import GeneMambaEncoder
from genemamba_scvi.nn.heads import MaskedLMHead
from genemamba_scvi.nn.mamba2 import Mamba2Mixer, RMSNorm

GENES = [f"GENE{i}" for i in range(24)]
TINY = {"d_model": 16, "n_layers": 2, "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "chunk_size": 256}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def vocab() -> GeneVocab:
    return GeneVocab(GENES)


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tied = torch.randn(5, 3, generator=g)
    base = torch.randn(4, 6, generator=g)
    return {
        "embedding.weight": tied,
        "lm_head.weight": tied,  # tied: the same tensor under two names
        "layer.weight": base.t(),  # non-contiguous view
        "layer.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "counter": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0),
    }


def _medians() -> np.ndarray:
    return np.array([1.5, np.nan, 0.25, 3.0] + [1.0] * (len(GENES) - 4))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _write(path: Path, vocab: GeneVocab, **kwargs) -> Path:
    return write_checkpoint(
        path,
        _state_dict(),
        {"d_model": 16, "note": "first"},
        vocab,
        _medians(),
        {"labels": np.array(["B", "T"]), "n": np.int64(3)},
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------
# our format
# ----------------------------------------------------------------------------------------------


def test_round_trip(tmp_path, vocab):
    sd = _state_dict()
    path = _write(tmp_path / "model", vocab)
    ck = read_checkpoint(path)
    assert set(ck.state_dict) == set(sd)
    for name, tensor in sd.items():
        assert ck.state_dict[name].dtype == tensor.dtype
        assert torch.equal(ck.state_dict[name], tensor), name
    assert ck.state_dict["lm_head.weight"] is ck.state_dict["embedding.weight"]  # tie restored
    assert ck.vocab == vocab
    np.testing.assert_array_equal(ck.gene_medians, _medians())
    assert ck.gene_medians.dtype == np.float64
    assert ck.config == {"d_model": 16, "note": "first"}
    assert ck.extra == {"labels": ["B", "T"], "n": 3}
    manifest = json.loads((path / "checksums.json").read_text())
    assert manifest["format"] == gio.CHECKPOINT_FORMAT
    assert set(manifest["files"]) == {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "gene_medians.npy",
        "extra.json",
    }
    assert _leftovers(tmp_path) == []


def test_round_trip_without_medians(tmp_path, vocab):
    path = write_checkpoint(tmp_path / "m", {"w": torch.ones(2)}, {}, vocab)
    ck = read_checkpoint(path)
    assert ck.gene_medians is None
    assert not (path / "gene_medians.npy").exists()
    assert ck.extra == {}


def test_module_state_dict_with_tied_weights_round_trips(tmp_path, vocab):
    enc = GeneMambaEncoder(len(vocab), block="official", shared_merge=True, backend="torch", **TINY)
    head = MaskedLMHead(16, len(vocab), tied_embedding=enc.embedding)
    sd = {
        **{f"encoder.{k}": v for k, v in enc.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    ck = read_checkpoint(write_checkpoint(tmp_path / "m", sd, {}, vocab))
    for name, tensor in sd.items():
        assert torch.equal(ck.state_dict[name], tensor)


def test_existing_path_is_refused_and_left_byte_identical(tmp_path, vocab):
    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)
    with pytest.raises(FileExistsError, match=str(path)):
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab)
    assert _snapshot(path) == before
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces(tmp_path, vocab):
    path = _write(tmp_path / "model", vocab)
    write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    ck = read_checkpoint(path)
    assert ck.config == {"note": "second"}
    assert set(ck.state_dict) == {"w"}
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_write_protected_model(tmp_path, vocab, monkeypatch):
    # user probe: `chmod a-w model` did not stop save(overwrite=True) (the swap needs only the parent writable), and
    # the old, read-only copy stayed behind as a hidden folder no later save could remove
    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path else real_access(p, mode, **kw))
    with pytest.raises(PermissionError, match="it is write-protected"):  # (root writes anyway: access is mocked)
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert _snapshot(path) == before and _leftovers(tmp_path) == []


def test_overwrite_wins_a_race_with_another_save_to_a_new_directory(tmp_path, vocab, monkeypatch):
    # user probe: two processes saving to a new directory with overwrite=True: the slower got FileExistsError
    path = tmp_path / "model"
    original = gio_files._move_into_place

    def other_process_first(src, dst):
        if not dst.exists():  # the other process's save lands between our check and our rename
            monkeypatch.setattr(gio_files, "_move_into_place", original)
            _write(dst, vocab)
            monkeypatch.setattr(gio_files, "_move_into_place", other_process_first)
        return original(src, dst)

    monkeypatch.setattr(gio_files, "_move_into_place", other_process_first)
    write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "ours"}, vocab, overwrite=True)
    assert read_checkpoint(path).config == {"note": "ours"} and _leftovers(tmp_path) == []
    with pytest.raises(FileExistsError):  # without overwrite the other save stays
        write_checkpoint(tmp_path / "model2", {"w": torch.zeros(1)}, {"note": "ours"}, vocab)


def test_overwrite_fallback_without_exchange(tmp_path, vocab, monkeypatch):
    monkeypatch.setattr(gio_files, "_exchange_dirs", lambda a, b: False)  # e.g. not Linux
    path = _write(tmp_path / "model", vocab)
    write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert read_checkpoint(path).config == {"note": "second"}
    assert _leftovers(tmp_path) == []


def test_overwrite_into_a_directory_that_is_not_a_checkpoint_keeps_its_files(tmp_path, vocab):
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    write_checkpoint(other, {"w": torch.zeros(1)}, {}, vocab, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "precious"
    assert set(read_checkpoint(other).state_dict) == {"w"}
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_to_replace_a_foreign_file_of_a_checkpoint_name(tmp_path, vocab):
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "vocab.json").write_text("my own vocabulary")
    with pytest.raises(ValueError, match=r"refusing to overwrite vocab\.json"):
        write_checkpoint(other, {"w": torch.zeros(1)}, {}, vocab, overwrite=True)
    assert (other / "vocab.json").read_text() == "my own vocabulary"
    assert sorted(p.name for p in other.iterdir()) == ["vocab.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2_exchange", "rename_aside"])
def test_overwrite_keeps_user_files_and_folders(tmp_path, vocab, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(gio_files, "_exchange_dirs", lambda a, b: False)
    path = _write(tmp_path / "model", vocab)
    (path / "notes.md").write_text("keep me")
    (path / "plots").mkdir()
    (path / "plots" / "loss.png").write_bytes(b"png")
    (path / "link").symlink_to("notes.md")
    write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert read_checkpoint(path).config == {"note": "second"}
    assert (path / "notes.md").read_text() == "keep me"
    assert (path / "plots" / "loss.png").read_bytes() == b"png"
    assert (path / "link").is_symlink() and (path / "link").read_text() == "keep me"
    assert not (path / "gene_medians.npy").exists()  # a file of the old model, not kept
    assert _leftovers(tmp_path) == []


def test_crash_before_the_swap_leaves_old_model_and_user_files(tmp_path, vocab, monkeypatch):
    path = _write(tmp_path / "model", vocab)
    (path / "notes.md").write_text("keep me")
    before = _snapshot(path)

    def boom(a, b):
        raise OSError("disk on fire")

    monkeypatch.setattr(gio_files, "_exchange_dirs", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert _snapshot(path) == before
    assert _leftovers(tmp_path) == []


def test_crash_in_weight_writer_leaves_old_model(tmp_path, vocab, monkeypatch):
    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert _snapshot(path) == before
    assert read_checkpoint(path).config == {"d_model": 16, "note": "first"}
    assert _leftovers(tmp_path) == []


def test_crash_in_fresh_write_leaves_nothing(tmp_path, vocab, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "model", vocab)
    assert not (tmp_path / "model").exists()
    assert _leftovers(tmp_path) == []


def test_crash_in_rename_leaves_old_model(tmp_path, vocab, monkeypatch):
    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)
    real_rename = os.rename

    def flaky_rename(src, dst):
        if ".tmp-" in os.fspath(src):  # moving the new model in fails
            raise OSError("simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(gio_files, "_exchange_dirs", lambda a, b: False)
    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated crash"):
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert _snapshot(path) == before
    assert _leftovers(tmp_path) == []


def test_crash_in_exchange_leaves_old_model(tmp_path, vocab, monkeypatch):
    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)

    def boom(a, b):
        raise OSError("simulated crash")

    monkeypatch.setattr(gio_files, "_exchange_dirs", boom)
    with pytest.raises(OSError, match="simulated crash"):
        write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert _snapshot(path) == before
    assert _leftovers(tmp_path) == []


def test_truncated_weights_raise_value_error(tmp_path, vocab):
    path = _write(tmp_path / "model", vocab)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"checksum mismatch.*model\.safetensors"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="corrupt safetensors"):
        read_checkpoint(path, verify=False)


def test_tampered_byte_raises_checksum_error(tmp_path, vocab):
    path = _write(tmp_path / "model", vocab)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checksum.*model\.safetensors"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["vocab.json", "model.safetensors", "gene_medians.npy", "checksums.json"])
def test_missing_file_raises_file_not_found(tmp_path, vocab, name):
    path = _write(tmp_path / "model", vocab)
    (path / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        read_checkpoint(path)


def test_missing_directory_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        read_checkpoint(tmp_path / "nope")


def test_nothing_is_unpickled(tmp_path, vocab, monkeypatch):
    """A pickled (object) medians file with matching checksum is refused, and torch.load is never used."""
    path = _write(tmp_path / "model", vocab)
    np.save(path / "gene_medians.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    manifest = json.loads((path / "checksums.json").read_text())
    manifest["files"]["gene_medians.npy"] = gio_files._sha256(path / "gene_medians.npy")
    (path / "checksums.json").write_text(json.dumps(manifest))

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(ValueError, match="gene_medians"):
        read_checkpoint(path)


def test_unserialisable_input_writes_nothing(tmp_path, vocab):
    with pytest.raises(ValueError, match="extra is not JSON serialisable"):
        write_checkpoint(tmp_path / "m", {"w": torch.ones(1)}, {}, vocab, extra={"f": object()})
    with pytest.raises(ValueError, match="not a tensor"):
        write_checkpoint(tmp_path / "m", {"w": [1, 2]}, {}, vocab)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# official layout
# ----------------------------------------------------------------------------------------------


def _tiny_official(vocab: GeneVocab, merge: str = "gate", seed: int = 0) -> tuple[GeneMambaEncoder, MaskedLMHead]:
    torch.manual_seed(seed)
    enc = GeneMambaEncoder(len(vocab), merge=merge, shared_merge=True, block="official", backend="torch", **TINY)
    head = MaskedLMHead(TINY["d_model"], len(vocab))
    with torch.no_grad():  # make every parameter non-trivial (norm weights, biases, special rows)
        for p in [*enc.parameters(), *head.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    return enc.eval(), head.eval()


def _kwargs_of(enc: GeneMambaEncoder, merge: str) -> dict:
    return {**TINY, "vocab_size": enc.vocab_size, "merge": merge, "shared_merge": True, "block": "official"}


def _tokens(vocab: GeneVocab, batch: int = 3, length: int = 11, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([length, length - 4, 2])[:batch]
    tokens = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        genes = torch.randperm(len(vocab.genes), generator=g)[: int(lengths[b])] + vocab.n_special
        tokens[b, : int(lengths[b])] = genes
    return tokens, lengths


def _translate(tokens: torch.Tensor, old: GeneVocab, new: GeneVocab) -> torch.Tensor:
    table = torch.tensor([new[t] for t in old.tokens])
    return table[tokens]


def _load(official) -> tuple[GeneMambaEncoder, MaskedLMHead]:
    kwargs, sd, lm_sd, _, _ = official
    enc = GeneMambaEncoder(**kwargs, backend="torch").eval()
    enc.load_state_dict(sd, strict=True)
    head = MaskedLMHead(kwargs["d_model"], kwargs["vocab_size"]).eval()
    head.load_state_dict(lm_sd, strict=True)
    return enc, head


def _assert_same_function(enc1, head1, vocab1, enc2, head2, vocab2, tokens, lengths):
    tokens2 = _translate(tokens, vocab1, vocab2)
    with torch.no_grad():
        h1, h2 = enc1(tokens, lengths), enc2(tokens2, lengths)
        l1, l2 = head1(h1), head2(h2)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    assert torch.equal(h1[real], h2[real])
    gene_cols1 = torch.tensor([vocab1[g] for g in vocab1.genes])
    gene_cols2 = torch.tensor([vocab2[g] for g in vocab1.genes])
    assert torch.equal(l1[real][:, gene_cols1], l2[real][:, gene_cols2])
    assert torch.equal(enc1.pool(h1, lengths), enc2.pool(h2, lengths))


@pytest.mark.parametrize(
    ("merge", "config_style", "key_prefix"),
    [("gate", "hf", ""), ("concat", "github", ""), ("mean", "hf", "genemamba."), ("sum", "github", "model.")],
)
def test_official_round_trip_gives_identical_outputs(tmp_path, vocab, merge, config_style, key_prefix):
    enc, head = _tiny_official(vocab, merge)
    order = list(reversed(vocab.genes))  # official gene ids in another order: rows must be permuted
    path = write_official_checkpoint(
        tmp_path / "GeneMamba",
        _kwargs_of(enc, merge),
        enc.state_dict(),
        head.state_dict(),
        vocab,
        gene_order=order,
        config_style=config_style,
        key_prefix=key_prefix,
    )
    official = read_official_checkpoint(path)
    kwargs, _, _, new_vocab, info = official
    assert kwargs == {
        **TINY,
        "vocab_size": len(vocab),
        "bidirectional": True,
        "merge": merge,
        "shared_merge": True,
        "block": "official",
        "pooling": "mean",
    }
    assert new_vocab.genes == order
    assert info["key_prefix"] == key_prefix
    assert info["dropped_tokens"] == {"[UNK]": 0}
    assert info["filled_specials"] == ["cls", "mask"]
    enc2, head2 = _load(official)
    tokens, lengths = _tokens(vocab)
    _assert_same_function(enc, head, vocab, enc2, head2, new_vocab, tokens, lengths)


def test_official_specials_cls_mask_carried_over(tmp_path, vocab):
    enc, head = _tiny_official(vocab)
    specials = ("[PAD]", "[CLS]", "[MASK]", "[UNK]")
    path = write_official_checkpoint(
        tmp_path / "o", _kwargs_of(enc, "gate"), enc.state_dict(), head.state_dict(), vocab, specials=specials
    )
    official = read_official_checkpoint(path)
    assert official.info["filled_specials"] == []
    assert official.info["official_specials"] == {"[PAD]": 0, "[CLS]": 1, "[MASK]": 2, "[UNK]": 3}
    enc2, head2 = _load(official)
    assert torch.equal(enc2.embedding.weight, enc.embedding.weight)
    assert torch.equal(head2.weight, head.weight)
    tokens, lengths = _tokens(vocab)
    tokens[:, 0] = vocab.cls_id
    tokens[0, 3] = vocab.mask_id
    _assert_same_function(enc, head, vocab, enc2, head2, official.vocab, tokens, lengths)


def _official_reference(sd: dict[str, torch.Tensor], merge: str, tokens: torch.Tensor, mask: torch.Tensor):
    """The published MambaModel forward (xiamengxxx/GeneMamba models.py), written from its description:
    per-layer ``f = Mamba2(X) + X``, ``b = flip(Mamba2(flip X) + flip X)`` (per-sequence flip with the
    padding mask), merge, ``norm_f``; one shared ``aggr``. Mixers are ours (no mamba_ssm on CPU)."""
    lengths = (~mask).sum(1)
    L = tokens.shape[1]
    pos = torch.arange(L)[None, :]
    rev = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)

    def flip_sc(x):
        return torch.gather(x, 1, rev[..., None].expand_as(x))

    x = F.embedding(tokens, sd["embeddings.weight"])
    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("mamba_mixer.layers."))
    for i in range(n_layers):
        mixer = Mamba2Mixer(16, d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=256, backend="torch")
        prefix = f"mamba_mixer.layers.{i}.mamba."
        mixer.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
        x_flip = flip_sc(x)
        x_f = mixer(x) + x
        x_b = flip_sc(mixer(x_flip) + x_flip)
        if merge == "mean":
            x = (x_f + x_b) / 2
        elif merge == "sum":
            x = x_f + x_b
        elif merge == "concat":
            x = F.linear(torch.cat([x_f, x_b], -1), sd["mamba_mixer.aggr.weight"], sd["mamba_mixer.aggr.bias"])
        else:
            z = torch.sigmoid(
                F.linear(torch.cat([x_f, x_b], -1), sd["mamba_mixer.aggr.weight"], sd["mamba_mixer.aggr.bias"])
            )
            x = z * x_f + (1 - z) * x_b
    norm = RMSNorm(TINY["d_model"], eps=1e-5)
    norm.weight.data.copy_(sd["norm_f.weight"])
    h = norm(x)
    return h, F.linear(h, sd["lm_head.weight"], sd["lm_head.bias"])


@pytest.mark.parametrize("merge", ["gate", "concat", "mean", "sum"])
def test_loaded_official_weights_compute_the_published_function(tmp_path, vocab, merge):
    """Official-layout weights, run through the published forward, match our encoder after loading."""
    enc, head = _tiny_official(vocab, merge, seed=3)
    path = write_official_checkpoint(
        tmp_path / "o", _kwargs_of(enc, merge), enc.state_dict(), head.state_dict(), vocab, config_style="github"
    )
    raw = safetensors.torch.load_file(str(path / "model.safetensors"))
    tokenizer = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    official = read_official_checkpoint(path)
    enc2, head2 = _load(official)
    tokens, lengths = _tokens(official.vocab)
    official_tokens = torch.tensor([tokenizer.get(t, tokenizer["[PAD]"]) for t in official.vocab.tokens])[tokens]
    mask = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]
    with torch.no_grad():
        h_ref, logits_ref = _official_reference(raw, merge, official_tokens, mask)
        h = enc2(tokens, lengths)
        logits = head2(h)
    real = ~mask
    torch.testing.assert_close(h[real], h_ref[real], rtol=1e-5, atol=1e-5)
    cols_ours = torch.tensor([official.vocab[g] for g in official.vocab.genes])
    cols_official = torch.tensor([tokenizer[g] for g in official.vocab.genes])
    torch.testing.assert_close(logits[real][:, cols_ours], logits_ref[real][:, cols_official], rtol=1e-5, atol=1e-5)


def _official_dir(tmp_path: Path, vocab: GeneVocab, merge: str = "gate", **kwargs) -> Path:
    enc, head = _tiny_official(vocab, merge)
    return write_official_checkpoint(
        tmp_path / "GeneMamba", _kwargs_of(enc, merge), enc.state_dict(), head.state_dict(), vocab, **kwargs
    )


def _rewrite_weights(path: Path, edit) -> None:
    tensors = safetensors.torch.load_file(str(path / "model.safetensors"))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))


def test_official_missing_key_is_named(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    _rewrite_weights(path, lambda t: t.pop("mamba_mixer.layers.1.mamba.dt_bias"))
    with pytest.raises(ValueError, match=r"missing keys.*mamba_mixer\.layers\.1\.mamba\.dt_bias"):
        read_official_checkpoint(path)


def test_official_unknown_key_is_named(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    _rewrite_weights(path, lambda t: t.update({"classifier.layers.0.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"unknown keys.*classifier\.layers\.0\.weight"):
        read_official_checkpoint(path)


def test_official_missing_aggr_contradicts_gate(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    _rewrite_weights(path, lambda t: (t.pop("mamba_mixer.aggr.weight"), t.pop("mamba_mixer.aggr.bias")))
    with pytest.raises(ValueError, match="contradicts the weights"):
        read_official_checkpoint(path)


def test_official_mamba1_checkpoint_is_refused(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    _rewrite_weights(path, lambda t: t.update({"mamba_mixer.layers.0.mamba.x_proj.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match="Mamba-1"):
        read_official_checkpoint(path)


def test_official_config_contradicting_weights(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    config = json.loads((path / "config.json").read_text())
    config["hidden_size"] = 512
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="d_model=512"):
        read_official_checkpoint(path)


def test_official_unstated_merge_needs_argument(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab, merge="concat")
    config = json.loads((path / "config.json").read_text())
    del config["mamba_mode"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="merge="):
        read_official_checkpoint(path)
    assert read_official_checkpoint(path, merge="concat").encoder_kwargs["merge"] == "concat"
    with pytest.raises(ValueError, match="contradicts"):
        read_official_checkpoint(path, merge="mean")


def test_official_size_variant_subfolder(tmp_path, vocab):
    root = _official_dir(tmp_path, vocab)
    variant = root / "2l-16d"
    variant.mkdir()
    for name in ("config.json", "model.safetensors"):
        (variant / name).write_bytes((root / name).read_bytes())
    a = read_official_checkpoint(root, subfolder="2l-16d")
    b = read_official_checkpoint(variant)  # the subfolder itself; tokenizer from the root
    assert a.vocab == b.vocab == read_official_checkpoint(root).vocab
    assert b.info["tokenizer_file"] == str(root / "tokenizer.json")
    (root / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="2l-16d"):
        read_official_checkpoint(root)


def test_official_vocab_json_tokenizer(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    (path / "tokenizer.json").unlink()
    (path / "special_tokens_map.json").unlink()
    (path / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"]))
    official = read_official_checkpoint(path)
    assert official.vocab == vocab
    assert official.info["official_specials"] == {"[UNK]": 0, "[PAD]": 1}


def test_official_unmappable_token_ids(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"][vocab.genes[-1]] = 10_000  # gap in the ids
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="cannot be mapped"):
        read_official_checkpoint(path)


def test_official_pad_token_id_must_agree(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    config = json.loads((path / "config.json").read_text())
    config["pad_token_id"] = 0  # tokenizer says [PAD] is 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pad_token_id"):
        read_official_checkpoint(path)


def test_official_pickle_only_is_refused(tmp_path, vocab):
    path = _official_dir(tmp_path, vocab)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="never unpickles"):
        read_official_checkpoint(path)


def test_official_backbone_only(tmp_path, vocab):
    enc, _ = _tiny_official(vocab)
    path = write_official_checkpoint(tmp_path / "o", _kwargs_of(enc, "gate"), enc.state_dict(), None, vocab)
    official = read_official_checkpoint(path)
    assert official.lm_head_state_dict is None
    GeneMambaEncoder(**official.encoder_kwargs, backend="torch").load_state_dict(official.encoder_state_dict)


def test_write_official_refuses_prenorm(tmp_path, vocab):
    enc = GeneMambaEncoder(len(vocab), backend="torch", **TINY)
    with pytest.raises(ValueError, match="block='official'"):
        write_official_checkpoint(tmp_path / "o", {**TINY, "block": "prenorm"}, enc.state_dict(), None, vocab)


def test_extra_files_are_checksummed_and_cannot_shadow_the_checkpoints_own(tmp_path, vocab):
    path = tmp_path / "ckpt"
    write_checkpoint(path, _state_dict(), {"a": 1}, vocab, extra_files={"notes.bin": lambda p: p.write_bytes(b"x")})
    manifest = json.loads((path / "checksums.json").read_text())
    assert "notes.bin" in manifest["files"]
    (path / "notes.bin").write_bytes(b"y")  # tampered after saving
    with pytest.raises(ValueError, match=r"checksum mismatch for .*notes\.bin"):
        read_checkpoint(path)
    for bad in ("config.json", "sub/file", ".."):
        with pytest.raises(ValueError, match="extra_files cannot be named"):
            write_checkpoint(tmp_path / "other", _state_dict(), {}, vocab, extra_files={bad: lambda p: None})
    assert not (tmp_path / "other").exists()


def test_writing_into_the_current_directory_by_a_relative_name_or_replacing_it(tmp_path, vocab, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _write(Path("model"), vocab)  # a relative name: the temporary sibling lies beside it, in the cwd
    assert read_checkpoint("model").vocab == vocab
    _write(Path("model"), vocab, overwrite=True)
    assert sorted(p.name for p in Path(".").iterdir()) == ["model"]  # no temporary left behind
    (tmp_path / "work" / "notes.txt").write_text("mine")
    for target in (Path("."), tmp_path):  # "." is its own parent; replacing it would leave the process nowhere
        with pytest.raises(ValueError, match=r"holds the current working directory"):
            _write(target, vocab, overwrite=True)
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine" and Path.cwd() == tmp_path / "work"


def test_weights_file_gets_the_same_permissions_as_the_other_files(tmp_path, vocab):
    path = _write(tmp_path / "model", vocab)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors alone would write model.safetensors as 0600


def test_a_path_through_a_symlink_and_dotdot_is_written_where_the_os_resolves_it(tmp_path, vocab, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    os.symlink(tmp_path / "a" / "b", "lnk")
    _write(Path("lnk/../out"), vocab)  # the OS resolves lnk first: a/out, not w/out
    assert (tmp_path / "a" / "out" / "config.json").is_file() and not (tmp_path / "w" / "out").exists()
    assert read_checkpoint("lnk/../out").vocab == vocab


def test_a_save_killed_mid_write_leaves_a_folder_the_next_save_removes(tmp_path, vocab):
    # kill -9 during save left a hidden .model.tmp-* folder (gigabytes with an atlas) that nothing ever removed
    import signal
    import subprocess
    import sys

    path = _write(tmp_path / "model", vocab)
    before = _snapshot(path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, genemamba_scvi.io._files as f\n"
            "def fill(tmp):\n"
            "    (tmp / 'part').write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n"
            "f._atomic_write_dir(f.Path(sys.argv[1]), fill, overwrite=True)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftover = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftover) == 1 and _snapshot(path) == before  # the old model untouched, the killed write left over
    foreign = tmp_path / ".model.tmp-00000000-1-abc"  # another host's (or an old-format) folder: not ours to remove
    foreign.mkdir()
    write_checkpoint(path, {"w": torch.zeros(1)}, {"note": "second"}, vocab, overwrite=True)
    assert not leftover[0].exists() and foreign.exists()
