"""GeneMambaConfig: one set of settings, dict round trip, and models saved by earlier versions loading unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from genemamba_scvi import GeneMambaModel
from genemamba_scvi._config import MODEL_ARG_FIELDS, GeneMambaConfig
from genemamba_scvi.io import read_checkpoint, write_checkpoint
from genemamba_scvi.module import GeneMambaModule
from genemamba_scvi.nn import GeneMambaEncoder

LEGACY = Path(__file__).parent / "data" / "legacy_model_v1"

#: config.json exactly as versions up to 0.x wrote it (keys and order)
LEGACY_KEYS = [
    "max_genes",
    "d_model",
    "n_layers",
    "d_state",
    "d_conv",
    "expand",
    "headdim",
    "chunk_size",
    "bidirectional",
    "merge",
    "shared_merge",
    "block",
    "backend",
    "pooling",
    "tie_lm_head",
    "mask_prob",
    "min_gene_overlap",
    "tokenization",
    "unk_token",
]


def test_config_round_trips_through_a_dict_and_json():
    cfg = GeneMambaConfig(d_model=64, n_layers=3, merge="mean", pooling="cls", mask_prob=0.2)
    assert GeneMambaConfig.from_dict(cfg.to_dict()) == cfg
    assert GeneMambaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_from_dict_rejects_unknown_keys_by_name_or_ignores_them():
    with pytest.raises(ValueError, match="d_modle"):
        GeneMambaConfig.from_dict({"d_modle": 64})
    assert GeneMambaConfig.from_dict({"d_model": 64, "max_genes": 10}, unknown="ignore").d_model == 64
    with pytest.raises(TypeError, match="d_modle"):
        GeneMambaConfig().replace(d_modle=3)


def test_model_settings_are_the_config_settings():
    import inspect

    params = inspect.signature(GeneMambaModel.__init__).parameters
    assert params["config"].default is None and params["settings"].kind is inspect.Parameter.VAR_KEYWORD
    assert not set(MODEL_ARG_FIELDS) & set(params)  # spelled out once, in GeneMambaConfig
    assert set(MODEL_ARG_FIELDS) == set(LEGACY_KEYS) - {"max_genes", "min_gene_overlap", "tokenization", "unk_token"}


def test_model_takes_a_config_or_its_settings_and_refuses_unknown_ones(legacy_adata):
    GeneMambaModel.setup_anndata(legacy_adata)
    tiny = {"d_model": 16, "n_layers": 1, "d_state": 8, "headdim": 8, "chunk_size": 16, "backend": "torch"}
    by_keywords = GeneMambaModel(legacy_adata, max_genes=32, **tiny)
    assert by_keywords.module.config == GeneMambaConfig(**tiny)
    by_config = GeneMambaModel(legacy_adata, max_genes=32, config=GeneMambaConfig(**tiny), merge="mean")
    assert by_config.module.config == GeneMambaConfig(**tiny, merge="mean")
    assert by_config._config["merge"] == "mean" and list(by_config._config)[1:16] == list(MODEL_ARG_FIELDS)
    with pytest.raises(TypeError, match="d_modle"):
        GeneMambaModel(legacy_adata, d_modle=16)
    with pytest.raises(TypeError, match="ngroups"):  # not saved with a model
        GeneMambaModel(legacy_adata, ngroups=2, **tiny)
    with pytest.raises(ValueError, match="norm_eps"):
        GeneMambaModel(legacy_adata, config=GeneMambaConfig(norm_eps=1e-3, **tiny))


def test_encoder_from_config_equals_encoder_from_keywords():
    cfg = GeneMambaConfig(d_model=32, n_layers=2, d_state=8, headdim=16, chunk_size=16, backend="torch")
    torch.manual_seed(0)
    a = GeneMambaEncoder(50, cfg)
    torch.manual_seed(0)
    b = GeneMambaEncoder(50, d_model=32, n_layers=2, d_state=8, headdim=16, chunk_size=16, backend="torch")
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(TypeError, match="not_a_setting"):
        GeneMambaEncoder(50, not_a_setting=1)


def test_module_takes_objective_settings_from_config_and_keywords():
    cfg = GeneMambaConfig(d_model=16, n_layers=1, headdim=8, backend="torch", mask_prob=0.3, tie_lm_head=False)
    module = GeneMambaModule(20, config=cfg)
    assert module.mask_prob == 0.3
    assert "weight" in module.lm_head.state_dict()  # untied head
    assert GeneMambaModule(20, config=cfg, mask_prob=0.1).mask_prob == 0.1
    assert GeneMambaModule(20, encoder_kwargs={"d_model": 16, "n_layers": 1, "headdim": 8}).encoder.d_model == 16


@pytest.fixture
def legacy_adata():
    return anndata.read_h5ad(LEGACY / "adata.h5ad")


def test_model_saved_by_the_previous_version_loads_unchanged(legacy_adata):
    """tests/data/legacy_model_v1 was written by the code before GeneMambaConfig (main at d04ab05)."""
    model = GeneMambaModel.load(LEGACY / "model", adata=legacy_adata)
    np.testing.assert_allclose(model.get_latent_representation(), np.load(LEGACY / "embeddings.npy"), atol=1e-5)


def test_saved_config_json_keeps_the_previous_keys(legacy_adata, tmp_path):
    model = GeneMambaModel.load(LEGACY / "model", adata=legacy_adata)
    model.save(tmp_path / "again")
    old = json.loads((LEGACY / "model" / "config.json").read_text())
    new = json.loads((tmp_path / "again" / "config.json").read_text())
    assert list(new)[: len(old)] == LEGACY_KEYS == list(old)
    assert {k: new[k] for k in old} == old
    assert {k: v for k, v in new.items() if k not in old} == {"tie_break": "median"}  # the one key added since v1
    reloaded = GeneMambaModel.load(tmp_path / "again", adata=legacy_adata)
    np.testing.assert_allclose(reloaded.get_latent_representation(), np.load(LEGACY / "embeddings.npy"), atol=1e-5)


def test_hand_written_legacy_config_dict_loads(legacy_adata, tmp_path):
    ckpt = read_checkpoint(LEGACY / "model")
    config = {  # as an earlier version wrote it, in another key order
        "d_model": 16,
        "n_layers": 1,
        "d_state": 8,
        "d_conv": 4,
        "expand": 2,
        "headdim": 8,
        "chunk_size": 16,
        "bidirectional": True,
        "merge": "mean",
        "shared_merge": False,
        "block": "prenorm",
        "backend": "torch",
        "pooling": "mean",
        "tie_lm_head": True,
        "mask_prob": 0.15,
        "min_gene_overlap": 0.5,
        "max_genes": 32,
    }
    write_checkpoint(tmp_path / "m", ckpt.state_dict, config, ckpt.vocab, ckpt.gene_medians, ckpt.extra)
    model = GeneMambaModel.load(tmp_path / "m", adata=legacy_adata)
    assert model.module.config == GeneMambaConfig.from_dict(config, unknown="ignore")
    np.testing.assert_allclose(model.get_latent_representation(), np.load(LEGACY / "embeddings.npy"), atol=1e-5)


def test_tensor_keys_and_special_tokens_live_in_constants_and_old_names_still_import():
    from genemamba_scvi import _constants, dataloader
    from genemamba_scvi.data import vocab

    assert dataloader.TOKENS_KEY == _constants.TOKENS_KEY == "tokens"
    assert dataloader.LENGTHS_KEY == _constants.LENGTHS_KEY == "lengths"
    assert vocab.SPECIAL_TOKENS == _constants.SPECIAL_TOKENS == ("<pad>", "<cls>", "<mask>")
    v = vocab.GeneVocab(["A", "B"])
    assert (v.pad_id, v.cls_id, v.mask_id) == (_constants.PAD_ID, _constants.CLS_ID, _constants.MASK_ID)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"n_layers": -2}, r"n_layers must be an integer >= 0, got -2"),
        ({"d_model": 0}, r"d_model must be an integer >= 1, got 0"),
        ({"headdim": 2.5}, r"headdim must be an integer >= 1, got 2\.5"),
        ({"chunk_size": True}, r"chunk_size must be an integer >= 1, got True"),
        ({"mask_prob": 1.5}, r"mask_prob must be in \[0, 1\], got 1\.5"),
        ({"norm_eps": 0.0}, r"norm_eps must be > 0"),
        ({"merge": "max"}, r"merge must be one of \('gate', 'mean', 'sum', 'concat'\), got 'max'"),
        ({"backend": "cuda"}, r"backend must be one of \('auto', 'torch', 'mamba_ssm'\)"),
        ({"pooling": "max"}, r"pooling must be one of \('mean', 'cls'\)"),
    ],
)
def test_impossible_settings_are_refused_when_the_config_is_made(setting, match):
    with pytest.raises(ValueError, match=match):
        GeneMambaConfig(**setting)
    with pytest.raises(ValueError, match=match):  # also through the encoder's keywords
        GeneMambaEncoder(50, **setting)


def test_model_refuses_an_impossible_max_genes_before_anything_is_built(legacy_adata):
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match=rf"max_genes must be an integer >= 1.*got {bad}"):
            GeneMambaModel(legacy_adata, n_layers=1, d_model=16, headdim=8, max_genes=bad)


def test_the_config_literals_list_what_the_layers_accept():
    """The settings' choices are spelled in GeneMambaConfig's type hints (for readers and type checkers) and owned by
    the modules that act on them: a choice added to one and not the other fails here, not in a user's run."""
    import typing

    from genemamba_scvi.io._official import _POOLING
    from genemamba_scvi.model._save_load import GeneMambaSaveLoadMixin
    from genemamba_scvi.nn.bimamba import BLOCKS, MERGE_MODES
    from genemamba_scvi.nn.pooling import POOLINGS
    from genemamba_scvi.nn.ssd import BACKENDS

    hints = typing.get_type_hints(GeneMambaConfig)
    owners = {"merge": MERGE_MODES, "block": BLOCKS, "backend": BACKENDS, "pooling": POOLINGS}
    for name, choices in owners.items():
        assert set(typing.get_args(hints[name])) == set(choices), name
    load_hint = typing.get_type_hints(GeneMambaSaveLoadMixin.from_pretrained, localns={"GeneMambaModel": object})
    load_hint = load_hint["pooling"]
    (literal,) = (a for a in typing.get_args(load_hint) if a is not type(None))  # Literal[...] | None
    assert set(typing.get_args(literal)) == set(POOLINGS)
    assert set(_POOLING.values()) == set(POOLINGS)  # the published configs' names map onto ours


def test_config_from_numpy_numbers_is_json_able():
    # nn probe (session 32): GeneMambaConfig(d_model=np.int64(32)).to_dict() failed json.dumps (a grid of settings)
    import json

    import numpy as np

    from genemamba_scvi.nn import GeneMambaConfig

    config = GeneMambaConfig(d_model=np.int64(32), headdim=np.int32(16), mask_prob=np.float64(0.2))
    assert json.loads(json.dumps(config.to_dict()))["d_model"] == 32
    assert config == GeneMambaConfig(d_model=32, headdim=16, mask_prob=0.2)
