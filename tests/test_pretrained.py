"""Official GeneMamba checkpoints in every published layout, against a reference written from the published code.

The reference here is independent of the package: it reads the raw official tensors (official names, official
token ids), tokenises each cell as ``permute_genes_by_expression`` + ``cell_type_annotation.py`` of
MineSelf2016/mamba_dev do, adds the ``[CLS]`` row as ``MambaModel.resize_token_embeddings`` of
xiamengxxx/GeneMamba does, and runs ``MambaModel.forward`` with a token-by-token Mamba-2 recurrence (the
``mamba_ssm.Mamba2.step`` semantics), all in float64, one cell at a time.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
import safetensors.torch
import scipy.sparse as sp
import torch

from genemamba_scvi import GeneMambaModel
from genemamba_scvi.data.tokenize import published_tokenize
from genemamba_scvi.io import read_official_checkpoint

GENES = [f"GENE{i}" for i in range(20)]
UNKNOWN = ["NOTINVOCAB1", "NOTINVOCAB2", "NOTINVOCAB3"]
SPECIALS = ["[UNK]", "[PAD]"]
D_MODEL, N_LAYERS, D_STATE, D_CONV, EXPAND, HEADDIM = 32, 2, 8, 4, 2, 32
D_INNER = EXPAND * D_MODEL
NHEADS = D_INNER // HEADDIM
MODES = ("gate", "concat", "mean", "sum")


# ----------------------------------------------------------------------------------------------
# checkpoints in the published layouts
# ----------------------------------------------------------------------------------------------


def _official_tensors(mode: str, seed: int = 0, trained_layers: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the names of ``MambaModel`` (genemamba/models/models.py, xiamengxxx/GeneMamba)."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = len(SPECIALS) + len(GENES)
    conv_dim = D_INNER + 2 * D_STATE
    d_in_proj = 2 * D_INNER + 2 * D_STATE + NHEADS

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    t = {"embeddings.weight": rnd(n_tokens, D_MODEL)}
    for i in range(N_LAYERS):
        p = f"mamba_mixer.layers.{i}.mamba."
        t[p + "in_proj.weight"] = rnd(d_in_proj, D_MODEL, scale=0.2)
        t[p + "conv1d.weight"] = rnd(conv_dim, 1, D_CONV, scale=0.4)
        t[p + "conv1d.bias"] = rnd(conv_dim, scale=0.1)
        t[p + "dt_bias"] = rnd(NHEADS, scale=0.5) - 2.0
        t[p + "A_log"] = torch.log(1 + 15 * torch.rand(NHEADS, generator=g))
        if trained_layers:
            t[p + "D"] = 1 + rnd(NHEADS, scale=0.2)
            t[p + "norm.weight"] = 1 + rnd(D_INNER, scale=0.2)
        else:  # mamba_ssm's initial values: what a never-trained (identity) layer keeps
            t[p + "D"] = torch.ones(NHEADS)
            t[p + "norm.weight"] = torch.ones(D_INNER)
        t[p + "out_proj.weight"] = rnd(D_MODEL, D_INNER, scale=0.2)
    if mode in ("gate", "concat"):
        t["mamba_mixer.aggr.weight"] = rnd(D_MODEL, 2 * D_MODEL, scale=0.2)
        t["mamba_mixer.aggr.bias"] = rnd(D_MODEL, scale=0.1)
    t["norm_f.weight"] = 1 + rnd(D_MODEL, scale=0.2)
    t["lm_head.weight"] = rnd(n_tokens, D_MODEL, scale=0.2)
    t["lm_head.bias"] = rnd(n_tokens, scale=0.1)
    return {k: v.contiguous() for k, v in t.items()}


def _official_vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate([*SPECIALS, *GENES])}


def _write_github(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """The GitHub layout: its config.json (no mode) and gene_tokenizer.json (MineSelf2016/mamba_dev)."""
    path.mkdir()
    config = {
        "architectures": ["MambaModel"],
        "d_model": D_MODEL,
        "mamba_layer": N_LAYERS,
        "torch_dtype": "float32",
        "transformers_version": "4.40.2",
        "vocab_size": len(_official_vocab()),
    }
    (path / "config.json").write_text(json.dumps(config))
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "unk_token": "[UNK]", "pad_token": "[PAD]", "vocab": _official_vocab()},
    }
    (path / "gene_tokenizer.json").write_text(json.dumps(tokenizer))
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    return path


def _write_hf(path: Path, tensors: dict[str, torch.Tensor], mode: str | None, pooling: str | None = None) -> Path:
    """The Hugging Face names: tokenizer.json, special_tokens_map.json, tokenizer_config.json."""
    path.mkdir()
    config = {
        "model_type": "genemamba",
        "architectures": ["GeneMambaModel"],
        "vocab_size": len(_official_vocab()),
        "hidden_size": D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "pad_token_id": 1,
    }
    if mode is not None:
        config["mamba_mode"] = mode
    if pooling is not None:
        config["embedding_pooling"] = pooling
    (path / "config.json").write_text(json.dumps(config))
    added = [{"id": i, "content": t, "special": True, "normalized": False} for i, t in enumerate(SPECIALS)]
    tokenizer = {
        "version": "1.0",
        "added_tokens": added,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "model": {"type": "WordLevel", "vocab": _official_vocab(), "unk_token": "[UNK]"},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (path / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[UNK]", "pad_token": "[PAD]"}))
    tokenizer_config = {
        "added_tokens_decoder": {str(a["id"]): a for a in added},
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    return path


def _adata(seed: int = 0, n_cells: int = 12) -> anndata.AnnData:
    """Raw counts over vocabulary genes and genes outside it, with many zeros and ties."""
    rng = np.random.default_rng(seed)
    names = [*GENES[:16], UNKNOWN[0], *GENES[16:], *UNKNOWN[1:]]
    counts = rng.poisson(0.8, size=(n_cells, len(names))).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    counts[0, names.index(UNKNOWN[0])] = 9  # an unknown gene at the top of a cell
    adata = anndata.AnnData(sp.csr_matrix(counts))
    adata.var_names = names
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    return adata


# ----------------------------------------------------------------------------------------------
# the reference: the published pipeline, one cell at a time, float64
# ----------------------------------------------------------------------------------------------


def _published_tokens(counts: np.ndarray, var_names: list[str], seq_len: int, cls_id: int | None) -> list[list[int]]:
    """permute_genes_by_expression + [:, :seq_len] + [CLS] in front, with ties in token-id order, unknown genes
    (the unspecified tie order of the published sort) after the known ones."""
    vocab = _official_vocab()
    gene_ids = [vocab.get(name, vocab["[UNK]"]) for name in var_names]  # convert_tokens_to_ids -> [UNK]
    unknown = [name not in vocab for name in var_names]
    cells = []
    for row in counts:
        order = sorted(range(len(row)), key=lambda j: (-float(row[j]), unknown[j], gene_ids[j]))
        ids = [gene_ids[j] for j in order][:seq_len]
        cells.append(([cls_id] if cls_id is not None else []) + ids)
    return cells


def _mamba2_step_by_step(u: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """mamba_ssm ``Mamba2`` (ngroups=1, rmsnorm gated after the gate) as a token-by-token recurrence."""
    zxbcdt = u @ p["in_proj.weight"].T
    z, xbc, dt = torch.split(zxbcdt, [D_INNER, D_INNER + 2 * D_STATE, NHEADS], dim=-1)
    w, b = p["conv1d.weight"][:, 0, :], p["conv1d.bias"]
    L = u.shape[0]
    conv = torch.zeros_like(xbc)
    for t in range(L):
        acc = b.clone()
        for k in range(D_CONV):
            s = t - (D_CONV - 1) + k
            if s >= 0:
                acc = acc + w[:, k] * xbc[s]
        conv[t] = acc
    xbc = torch.nn.functional.silu(conv)
    x, B, C = torch.split(xbc, [D_INNER, D_STATE, D_STATE], dim=-1)
    dt = torch.nn.functional.softplus(dt + p["dt_bias"])
    A = -torch.exp(p["A_log"])
    h = torch.zeros(NHEADS, HEADDIM, D_STATE, dtype=u.dtype)
    ys = []
    for t in range(L):
        xt = x[t].reshape(NHEADS, HEADDIM)
        h = torch.exp(dt[t] * A)[:, None, None] * h + (dt[t][:, None] * xt)[:, :, None] * B[t][None, None, :]
        ys.append((h @ C[t] + p["D"][:, None] * xt).reshape(D_INNER))
    y = torch.stack(ys) * torch.nn.functional.silu(z)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    return y @ p["out_proj.weight"].T


def _reference_embedding(
    raw: dict[str, torch.Tensor], mode: str, ids: list[int], pooling: str, identity: bool = False
) -> torch.Tensor:
    """MambaModel.forward (models.py) on one cell (no padding), then mean or first-position pooling."""
    sd = {k: v.double() for k, v in raw.items()}
    emb = sd["embeddings.weight"]
    # resize_token_embeddings: the new [CLS] row is torch.mean(old_embeddings.weight.data, dim=0)
    emb = torch.cat([emb, raw["embeddings.weight"].mean(dim=0, keepdim=True).double()])
    x = emb[torch.tensor(ids)]
    for i in range(N_LAYERS):
        prefix = f"mamba_mixer.layers.{i}.mamba."
        p = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if identity:  # EncoderLayer.forward of MineSelf2016/mamba_dev returns X
            x_f, x_b = x, x
        else:
            x_f = _mamba2_step_by_step(x, p) + x
            x_b = (_mamba2_step_by_step(x.flip(0), p) + x.flip(0)).flip(0)
        if mode == "mean":
            x = (x_f + x_b) / 2
        elif mode == "sum":
            x = x_f + x_b
        elif mode == "concat":
            x = torch.cat([x_f, x_b], -1) @ sd["mamba_mixer.aggr.weight"].T + sd["mamba_mixer.aggr.bias"]
        else:
            z = torch.sigmoid(torch.cat([x_f, x_b], -1) @ sd["mamba_mixer.aggr.weight"].T + sd["mamba_mixer.aggr.bias"])
            x = z * x_f + (1 - z) * x_b
    h = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * sd["norm_f.weight"]
    return h[0] if pooling == "cls" else h.mean(0)


def _reference(raw, mode, adata, seq_len, pooling, identity=False) -> torch.Tensor:
    cls_id = len(_official_vocab()) if pooling == "cls" else None
    cells = _published_tokens(adata.X.toarray(), list(adata.var_names), seq_len, cls_id)
    return torch.stack([_reference_embedding(raw, mode, ids, pooling, identity) for ids in cells])


def _model_embeddings_float64(model: GeneMambaModel, adata: anndata.AnnData) -> torch.Tensor:
    """Our path in float64: the model's own tokenizer for this AnnData, the loaded encoder in double."""
    tokens, lengths = model._tokenizer_for(adata, warn_unknown=False)(sp.csr_matrix(adata.X))
    enc = model.module.encoder.double()
    tokens_t, lengths_t = torch.from_numpy(tokens).long(), torch.from_numpy(lengths).long()
    with torch.no_grad():
        return enc.pool(enc(tokens_t, lengths_t), lengths_t)


def _load(path, adata, **kwargs) -> GeneMambaModel:
    GeneMambaModel.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return GeneMambaModel.from_pretrained(path, adata, backend="torch", **kwargs)


# ----------------------------------------------------------------------------------------------
# layouts, modes, pooling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_github_layout_without_mode_loads_as_mean_and_computes_the_published_function(tmp_path, pooling):
    raw = _official_tensors("mean", seed=1)
    path = _write_github(tmp_path / "GeneMamba_24l_512d", raw)
    adata = _adata()
    GeneMambaModel.setup_anndata(adata)
    with pytest.warns(UserWarning, match=r"assuming merge='mean'.*published code's default"):
        model = GeneMambaModel.from_pretrained(path, adata, backend="torch", max_genes=12, pooling=pooling)
    assert model._config["merge"] == "mean"
    assert model._config["tokenization"] == "published"
    assert model._config["unk_token"] == "[UNK]"
    torch.testing.assert_close(
        _model_embeddings_float64(model, adata), _reference(raw, "mean", adata, 12, pooling), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_layout_each_mode_computes_the_published_function(tmp_path, mode, pooling):
    raw = _official_tensors(mode, seed=2)
    path = _write_hf(tmp_path / "GeneMamba", raw, mode=mode, pooling=pooling)
    adata = _adata(seed=3)
    model = _load(path, adata, max_genes=40)  # more than the 23 genes: every gene, zeros included
    assert model._config["merge"] == mode and model._config["pooling"] == pooling
    expected = _reference(raw, mode, adata, 40, pooling)
    torch.testing.assert_close(_model_embeddings_float64(model, adata), expected, rtol=1e-10, atol=1e-10)
    # the user-facing call (float32) agrees too
    np.testing.assert_allclose(model.get_latent_representation(), expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["sum", "gate"])
def test_hf_layout_without_mode(tmp_path, mode):
    raw = _official_tensors(mode, seed=4)
    path = _write_hf(tmp_path / "GeneMamba", raw, mode=None)
    adata = _adata(seed=5)
    if mode == "gate":  # aggr weights: gate and concat cannot be told apart, the published code itself fails
        GeneMambaModel.setup_anndata(adata)
        with pytest.raises(ValueError, match="merge='gate' or merge='concat'"):
            GeneMambaModel.from_pretrained(path, adata, backend="torch")
    model = _load(path, adata, max_genes=16, merge=mode)  # merge= stays the override
    torch.testing.assert_close(
        _model_embeddings_float64(model, adata), _reference(raw, mode, adata, 16, "mean"), rtol=1e-10, atol=1e-10
    )


def test_pooling_argument_overrides_config_and_is_validated(tmp_path):
    path = _write_hf(tmp_path / "GeneMamba", _official_tensors("mean"), mode="mean", pooling="mean")
    assert _load(path, _adata(), pooling="cls")._config["pooling"] == "cls"
    adata = _adata()
    GeneMambaModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="unsupported pooling"):
        GeneMambaModel.from_pretrained(path, adata, pooling="max")


def test_missing_pooling_is_a_named_assumption(tmp_path):
    path = _write_hf(tmp_path / "GeneMamba", _official_tensors("mean"), mode="mean")
    with pytest.warns(UserWarning, match="states no embedding pooling: assuming mean pooling"):
        official = read_official_checkpoint(path)
    assert official.encoder_kwargs["pooling"] == "mean"
    assert any("pooling" in a for a in official.info["assumptions"])


# ----------------------------------------------------------------------------------------------
# [CLS] row, tokenizer names
# ----------------------------------------------------------------------------------------------


def test_cls_row_is_the_mean_of_all_official_rows_specials_included(tmp_path):
    raw = _official_tensors("mean", seed=6)
    raw["embeddings.weight"][0] += 5.0  # a distinctive [UNK] row: the gene-only mean would miss it
    path = _write_github(tmp_path / "g", raw)
    model = _load(path, _adata(), pooling="cls")
    emb = model.module.encoder.embedding.weight.detach()
    vocab = model.vocab_
    torch.testing.assert_close(emb[vocab.cls_id], raw["embeddings.weight"].mean(0))
    assert not torch.allclose(emb[vocab.cls_id], raw["embeddings.weight"][2:].mean(0), atol=1e-3)
    torch.testing.assert_close(emb[vocab.pad_id], raw["embeddings.weight"][1])  # [PAD] carried over
    torch.testing.assert_close(emb[vocab["[UNK]"]], raw["embeddings.weight"][0])  # [UNK] kept
    lm = model.module.lm_head.state_dict()
    torch.testing.assert_close(lm["weight"][vocab.cls_id], raw["lm_head.weight"].mean(0))


def test_gene_tokenizer_json_is_read_with_its_model_level_specials(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    with pytest.warns(UserWarning):
        official = read_official_checkpoint(path)
    assert official.info["tokenizer_file"].endswith("gene_tokenizer.json")
    assert official.info["official_specials"] == {"[UNK]": 0, "[PAD]": 1}
    assert official.vocab.genes == GENES
    assert official.info["dropped_tokens"] == {"[UNK]": 0}
    with pytest.warns(UserWarning):
        kept = read_official_checkpoint(path, keep_unk=True)
    assert kept.vocab.genes == ["[UNK]", *GENES] and kept.info["unk_token"] == "[UNK]"
    assert kept.info["dropped_tokens"] == {}


def test_tokenizer_config_declares_specials(tmp_path):
    raw = _official_tensors("mean")
    path = _write_hf(tmp_path / "h", raw, mode="mean", pooling="mean")
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["added_tokens"] = []
    tok["model"].pop("unk_token")
    vocab = {"<unknown>": 0, "[PAD]": 1, **{g: i + 2 for i, g in enumerate(GENES)}}
    tok["model"]["vocab"] = vocab
    (path / "tokenizer.json").write_text(json.dumps(tok))
    (path / "special_tokens_map.json").unlink()
    (path / "tokenizer_config.json").write_text(json.dumps({"unk_token": "<unknown>", "pad_token": "[PAD]"}))
    official = read_official_checkpoint(path, keep_unk=True)
    assert official.info["unk_token"] == "<unknown>"
    assert official.vocab.genes == ["<unknown>", *GENES]


# ----------------------------------------------------------------------------------------------
# the published tokenization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unk", [99, 3])  # the official [UNK] is the lowest gene id (3)
@pytest.mark.parametrize(("max_genes", "add_cls"), [(5, False), (12, True), (40, False), (40, True)])
def test_published_tokenize_matches_a_slow_per_cell_reference(max_genes, add_cls, unk):
    rng = np.random.default_rng(7)
    counts = rng.poisson(0.6, size=(30, 23)).astype(np.float64)
    counts[3] = 0  # an empty cell: every gene tied at zero
    ids = rng.permutation(np.arange(4, 4 + 23))
    ids[[4, 10]] = -1  # genes outside the vocabulary
    tokens, lengths = published_tokenize(
        sp.csr_matrix(counts), ids, max_genes=max_genes, add_cls=add_cls, unk_id=unk, chunk_size=7
    )
    tok = [int(i) if i >= 0 else unk for i in ids]
    for c, row in enumerate(counts):
        order = sorted(range(len(row)), key=lambda j: (-row[j], ids[j] < 0, tok[j]))  # ties by id, unknown last
        expected = ([1] if add_cls else []) + [tok[j] for j in order][:max_genes]
        assert lengths[c] == len(expected)
        assert tokens[c, : lengths[c]].tolist() == expected
        assert not tokens[c, lengths[c] :].any()
    # without an unknown token, genes outside the vocabulary are left out
    tokens, lengths = published_tokenize(counts, ids, max_genes=40)
    assert (lengths == 21).all() and not np.isin(tokens, [unk, -1]).any()


def test_published_tokenize_does_not_depend_on_zero_columns_of_unknown_genes():
    # [UNK] took the lowest id, so every zero-count unknown column sorted before the zero-count known genes and
    # filled the tail of every cell with fewer detected genes than max_genes (39% of the tokens of the 559-cell
    # sample): adding, filtering or subsetting all-zero unknown columns changed the embeddings
    rng = np.random.default_rng(4)
    counts = rng.poisson(0.3, size=(12, 40)).astype(np.float64)
    ids = np.arange(4, 44)
    ids[[1, 5, 9]] = -1
    counts[:, 5] = 0  # an unknown gene no cell expresses
    wide = np.hstack([counts, np.zeros((12, 25))])  # + 25 all-zero unknown columns
    wide_ids = np.concatenate([ids, np.full(25, -1)])
    for max_genes in (20, 37):
        a = published_tokenize(counts, ids, max_genes=max_genes, unk_id=3)
        b = published_tokenize(wide, wide_ids, max_genes=max_genes, unk_id=3)
        c = published_tokenize(np.delete(counts, 5, axis=1), np.delete(ids, 5), max_genes=max_genes, unk_id=3)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0])
    expressed_unknown = counts[:, [1, 9]].sum(axis=1) > 0  # an expressed unknown gene still ranks by its count
    tokens, _ = published_tokenize(counts, ids, max_genes=37, unk_id=3)
    assert ((tokens == 3).any(axis=1) == expressed_unknown).all()


def test_published_tokenize_does_not_depend_on_the_column_order():
    # ties (the zero-count genes above all) follow the token ids, not adata.var's order: a user's reordered or
    # differently sorted AnnData gives the same tokens (until session 19 they followed the columns)
    rng = np.random.default_rng(9)
    counts = rng.poisson(0.5, size=(20, 30)).astype(np.float64)
    ids = np.arange(3, 33)
    ids[[2, 7]] = -1
    perm = rng.permutation(30)
    for unk in (99, None):
        a = published_tokenize(sp.csr_matrix(counts), ids, max_genes=25, unk_id=unk)
        b = published_tokenize(sp.csr_matrix(counts[:, perm]), ids[perm], max_genes=25, unk_id=unk)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_published_tokenize_is_invariant_to_library_size_and_log():
    rng = np.random.default_rng(8)
    counts = rng.poisson(2.0, size=(10, 15)).astype(np.float64)
    ids = np.arange(3, 18)
    norm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    assert np.array_equal(published_tokenize(counts, ids)[0], published_tokenize(norm, ids)[0])


def test_published_tokenize_refuses_negative_values():
    with pytest.raises(ValueError, match="negative"):
        published_tokenize(np.array([[1.0, -1.0]]), np.array([3, 4]))


def test_model_tokens_are_the_published_ones(tmp_path):
    """The loader of a from_pretrained model emits exactly the reference tokens, translated to our ids."""
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata(seed=9)
    model = _load(path, adata, max_genes=10, pooling="cls")
    tokens, lengths = model._tokenizer_for(adata, warn_unknown=False)(sp.csr_matrix(adata.X))
    official = _official_vocab()
    to_official = {model.vocab_[t]: official[t] for t in official if t in model.vocab_ or t == "[UNK]"}
    to_official[model.vocab_.cls_id] = len(official)
    ours = [[to_official[int(t)] for t in row[:n]] for row, n in zip(tokens, lengths, strict=True)]
    assert ours == _published_tokens(adata.X.toarray(), list(adata.var_names), 10, len(official))


def test_published_model_embeds_a_reordered_anndata_the_same(tmp_path):
    """docs/api.md: query genes are matched by id in any order, under the published tokenization too."""
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata(seed=10)
    model = _load(path, adata, max_genes=10)
    reordered = adata[:, np.random.default_rng(3).permutation(adata.n_vars)].copy()
    z = model.get_latent_representation()
    assert np.array_equal(z, model.get_latent_representation(reordered))


def test_from_pretrained_sets_up_with_the_arguments_given_also_on_a_set_up_anndata(tmp_path):
    # user probe: set-up arguments were silently ignored when the AnnData was set up already
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata(seed=11)
    adata.layers["counts"] = adata.X.copy()
    GeneMambaModel.setup_anndata(adata)
    with pytest.warns(UserWarning, match=r"set up again with the arguments given here: \{'layer': 'counts'\}"):
        model = GeneMambaModel.from_pretrained(path, adata, backend="torch", layer="counts")
    assert model.adata_manager.registry["setup_args"]["layer"] == "counts"
    with pytest.raises((KeyError, ValueError), match="no_such_column"):
        GeneMambaModel.from_pretrained(path, adata, backend="torch", labels_key="no_such_column")
    fresh = _adata(seed=11)
    with pytest.raises((KeyError, ValueError), match="no_such_column"):
        GeneMambaModel.from_pretrained(path, fresh, backend="torch", labels_key="no_such_column")


def test_the_unknown_gene_token_is_not_counted_or_listed_as_a_gene(tmp_path):
    # user probe: "20 of 21 vocabulary genes present" with every gene present, and an [UNK] row of gene embeddings
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata(seed=12)
    model = _load(path, adata)
    assert model._unk_token is not None and model._unk_token in model.vocab_
    emb = model.get_gene_embeddings()
    assert list(emb.index) == GENES
    with pytest.warns(UserWarning, match=r"vocabulary coverage: 20 of 20 vocabulary genes") as caught:
        model.get_latent_representation(adata[:, ::-1].copy())  # a new gene list: the unknown genes are reported
    # they are tokenised as [UNK], not dropped (the report said "dropped" beside a warning that said [UNK])
    report = next(str(w.message) for w in caught if "vocabulary coverage" in str(w.message))
    assert "tokenised as [UNK]" in report and "not in vocabulary, as [UNK]:" in report and "dropped, not" not in report


def test_published_model_without_medians_judges_a_query_by_its_own_genes(tmp_path):
    """No gene medians (published tokenization): no coverage warning on a query, and the query-side rule refuses."""
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata(seed=9)
    model = _load(path, adata, max_genes=10)
    assert not np.isfinite(model.gene_medians_).any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_latent_representation(adata[:, 4:].copy())
    assert not [w for w in caught if "genes the model was set up with" in str(w.message)]
    wrong = adata.copy()
    wrong.var_names = [f"X{i}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match="match the model's vocabulary"):
        model.get_latent_representation(wrong)


def test_ranked_tokenization_stays_available(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata()
    model = _load(path, adata, tokenization="ranked")
    assert model._config["tokenization"] == "ranked" and "[UNK]" not in model.vocab_
    assert np.isfinite(model.gene_medians_[model.vocab_.n_special :]).any()
    assert model.get_latent_representation().shape == (adata.n_obs, D_MODEL)
    # medians given with the published tokenization were kept and never used (docs probe, session 32)
    with pytest.raises(ValueError, match=r"gene_medians are used with tokenization='ranked' only"):
        _load(path, _adata(), gene_medians=model.gene_medians_)


# ----------------------------------------------------------------------------------------------
# stored with the model
# ----------------------------------------------------------------------------------------------


def _drop_config_fields(path: Path, names: tuple[str, ...]) -> None:
    """Rewrite config.json without ``names`` (as a model saved before they existed) and fix its checksum."""
    config = json.loads((path / "config.json").read_text())
    for name in names:
        config.pop(name)
    (path / "config.json").write_text(json.dumps(config))
    manifest = json.loads((path / "checksums.json").read_text())
    manifest["files"]["config.json"] = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    (path / "checksums.json").write_text(json.dumps(manifest))


def test_published_tokenization_round_trips_through_save_and_load(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean", seed=10))
    adata = _adata(seed=11)
    model = _load(path, adata, max_genes=12, pooling="cls")
    before = model.get_latent_representation()
    model.save(tmp_path / "saved")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = GeneMambaModel.load(tmp_path / "saved", adata=adata)
    assert loaded._config["tokenization"] == "published" and loaded._config["unk_token"] == "[UNK]"
    assert loaded.pretrained_on_ == model.pretrained_on_ == str(path)  # where the weights came from, kept
    np.testing.assert_array_equal(loaded.get_latent_representation(), before)
    # the kept [UNK] is never a masked-gene target in further training (it was half of them on real data)
    assert model.module.unk_id == loaded.module.unk_id == model.vocab_["[UNK]"] >= model.vocab_.n_special


def test_models_saved_without_the_field_load_with_the_default(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata()
    model = _load(path, adata, tokenization="ranked")
    model.save(tmp_path / "saved")
    _drop_config_fields(tmp_path / "saved", ("tokenization", "unk_token"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = GeneMambaModel.load(tmp_path / "saved", adata=adata)
    assert loaded._config["tokenization"] == "ranked" and loaded._config["unk_token"] is None
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_bad_tokenization_is_refused(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean"))
    adata = _adata()
    GeneMambaModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="tokenization must be one of"):
        GeneMambaModel.from_pretrained(path, adata, tokenization="geneformer")


# ----------------------------------------------------------------------------------------------
# the identity-layer variant
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_identity_layers_compute_the_mamba_dev_function(tmp_path, mode):
    raw = _official_tensors(mode, seed=12)
    path = _write_hf(tmp_path / "h", raw, mode=mode, pooling="mean")
    adata = _adata(seed=13)
    model = _load(path, adata, max_genes=14, identity_layers=True)
    assert model._config["block"] == "official_identity"
    got = _model_embeddings_float64(model, adata)
    torch.testing.assert_close(got, _reference(raw, mode, adata, 14, "mean", identity=True), rtol=1e-10, atol=1e-10)
    full = _reference(raw, mode, adata, 14, "mean")
    assert not torch.allclose(got, full, atol=1e-3)  # the flag changes the function


def test_identity_layers_with_mean_merge_are_the_layer_free_baseline(tmp_path):
    raw = _official_tensors("mean", seed=14)
    path = _write_github(tmp_path / "g", raw)
    adata = _adata(seed=15)
    model = _load(path, adata, max_genes=14, identity_layers=True)
    tokens, lengths = model._tokenizer_for(adata, warn_unknown=False)(sp.csr_matrix(adata.X))
    assert (lengths == 14).all()  # published tokenization: every cell has max_genes tokens, no padding
    emb = model.module.encoder.embedding.weight.detach().double()[torch.from_numpy(tokens).long()]
    h = emb * torch.rsqrt(emb.square().mean(-1, keepdim=True) + 1e-5) * raw["norm_f.weight"].double()
    torch.testing.assert_close(_model_embeddings_float64(model, adata), h.mean(1), rtol=1e-10, atol=1e-10)


def test_untrained_layers_are_reported(tmp_path):
    path = _write_github(tmp_path / "g", _official_tensors("mean", trained_layers=False))
    with pytest.warns(UserWarning, match="identity_layers=True"):
        official = read_official_checkpoint(path)
    assert official.info["layers_at_init"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_official_checkpoint(path, identity_layers=True, merge="mean", pooling="mean")
    trained = _write_github(tmp_path / "t", _official_tensors("mean"))
    with pytest.warns(UserWarning):
        assert read_official_checkpoint(trained).info["layers_at_init"] is False
