"""In-silico perturbation: the token operations (Geneformer's deletion and overexpression) and the model's method."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import TINY_MODEL
from genemamba_scvi import GeneMambaModel
from genemamba_scvi.data.perturb import perturb_tokens


# ---------------------------------------------------------------------------------------------- tokens
def _rows(*cells, width=5):
    tokens = np.zeros((len(cells), width), dtype=np.int32)
    for i, c in enumerate(cells):
        tokens[i, : len(c)] = c
    return tokens, np.array([len(c) for c in cells], dtype=np.int32)


def test_delete_removes_the_gene_and_moves_the_others_up():
    tokens, lengths = _rows([5, 7, 9], [7, 5], [9, 8, 6, 4, 3])
    new, new_len = perturb_tokens(tokens, lengths, 7, "delete")
    np.testing.assert_array_equal(new, [[5, 9, 0, 0, 0], [5, 0, 0, 0, 0], [9, 8, 6, 4, 3]])
    np.testing.assert_array_equal(new_len, [2, 1, 5])
    np.testing.assert_array_equal(tokens[0], [5, 7, 9, 0, 0])  # the input is not changed


def test_overexpress_puts_the_gene_first_whether_or_not_the_cell_held_it():
    tokens, lengths = _rows([5, 7, 9], [9, 8, 6, 4, 3], [7])
    new, new_len = perturb_tokens(tokens, lengths, 7, "overexpress")
    # held: moved from its rank; absent from a full cell: added, the last gene dropped; already first: unchanged
    np.testing.assert_array_equal(new, [[7, 5, 9, 0, 0], [7, 9, 8, 6, 4], [7, 0, 0, 0, 0]])
    np.testing.assert_array_equal(new_len, [3, 5, 1])


def test_a_cls_token_stays_first():
    tokens, lengths = _rows([1, 5, 7, 9], [1, 9])
    new, new_len = perturb_tokens(tokens, lengths, 7, "overexpress", start=1)
    np.testing.assert_array_equal(new, [[1, 7, 5, 9, 0], [1, 7, 9, 0, 0]])
    new, new_len = perturb_tokens(tokens, lengths, 7, "delete", start=1)
    np.testing.assert_array_equal(new, [[1, 5, 9, 0, 0], [1, 9, 0, 0, 0]])
    np.testing.assert_array_equal(new_len, [3, 2])
    with pytest.raises(ValueError, match="perturb_type must be one of"):
        perturb_tokens(tokens, lengths, 7, "knockout")


# ---------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def model_and_data(sample48):
    adata = sample48.copy()
    GeneMambaModel.setup_anndata(adata, layer="counts")
    # max_genes above every cell's gene count: deleting a gene's counts then deletes exactly its token
    model = GeneMambaModel(adata, **{**TINY_MODEL, "max_genes": 4096})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, batch_size=16, accelerator="cpu", enable_progress_bar=False)
    return model, adata


def test_deletion_is_the_cell_embedded_without_the_gene(model_and_data):
    # the method against the public API: the same cells with the gene's counts set to zero (Geneformer's deletion,
    # as no gene enters a sequence that is not full)
    model, adata = model_and_data
    genes = ["LYZ", "CD3E", "CD74"]
    shift = model.in_silico_perturb(genes)
    assert list(shift.columns) == genes and shift.index.equals(adata.obs_names)
    z = model.get_latent_representation(adata)
    counts = adata.layers["counts"]
    for gene in genes:
        col = adata.var_names.get_loc(gene)
        holds = np.asarray(counts[:, col].todense()).ravel() > 0
        assert 0 < holds.sum() < adata.n_obs
        assert shift[gene].notna().to_numpy().tolist() == holds.tolist()  # NaN exactly where the cell lacks it
        without = adata.copy()
        zeroed = without.layers["counts"].tolil()
        zeroed[:, col] = 0
        without.layers["counts"] = zeroed.tocsr()
        z_del = model.get_latent_representation(without)
        cos = (z_del * z).sum(1) / np.linalg.norm(z_del, axis=1) / np.linalg.norm(z, axis=1)
        np.testing.assert_allclose(shift[gene].to_numpy()[holds], cos[holds], atol=1e-5)
        assert (shift[gene][holds] < 1).all()


def test_overexpression_and_indices(model_and_data):
    model, adata = model_and_data
    cells = np.arange(5, 15)
    shift = model.in_silico_perturb("CD74", indices=cells, perturb_type="overexpress")
    assert shift.index.equals(adata.obs_names[cells]) and shift["CD74"].notna().all()
    assert ((shift["CD74"] > -1) & (shift["CD74"] <= 1 + 1e-6)).all()
    # probe (session 30): a cell whose first gene is the one overexpressed is unchanged: 1, not NaN
    first = [model._tokenizer_for(adata)(adata.layers["counts"][[i]])[0][0, 0] for i in cells]
    gene = model.vocab_.decode([first[0]])[0]
    top = model.in_silico_perturb(gene, indices=cells, perturb_type="overexpress")[gene]
    assert (top[np.asarray(first) == first[0]] == 1.0).all() and top.notna().all()
    # the same cells one by one give the same numbers (a cell's result does not depend on its batch)
    one = model.in_silico_perturb("CD74", indices=[7], perturb_type="overexpress")
    np.testing.assert_allclose(one["CD74"].iloc[0], shift["CD74"].iloc[2], atol=1e-5)


def test_perturbing_a_gene_the_model_lacks_is_refused(model_and_data):
    model, _ = model_and_data
    with pytest.raises(ValueError, match=r"not genes of this model's vocabulary: \['NOTAGENE'\]"):
        model.in_silico_perturb(["LYZ", "NOTAGENE"])
    with pytest.raises(ValueError, match=r"names a gene more than once: \['LYZ', 'lyz'\]"):
        model.in_silico_perturb(["LYZ", "lyz"])  # one gene under two names
    lacking = np.flatnonzero(np.asarray(model.adata[:, "CD3E"].layers["counts"].todense()).ravel() == 0)
    with pytest.warns(UserWarning, match=r"no cell holds CD3E among its tokens"):
        assert model.in_silico_perturb("CD3E", indices=lacking)["CD3E"].isna().all()
    with pytest.raises(ValueError, match=r"genes is empty"):
        model.in_silico_perturb([])
    with pytest.raises(ValueError, match=r"perturb_type must be one of"):
        model.in_silico_perturb("LYZ", perturb_type="knockdown")
