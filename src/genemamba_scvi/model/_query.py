"""scvi-tools habits with no GeneMamba counterpart, answered: :class:`GeneMambaQueryMixin`.

scArches' query surgery, and the generative-model methods of scVI (normalised expression, differential expression,
ELBO, posterior samples): each raises ``NotImplementedError`` saying what to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_NOT_A_VAE = "GeneMamba is not a VAE: no ELBO, likelihood or reconstruction of counts"
_NO_ELBO = (
    "it is not a VAE (no ELBO, likelihood or reconstruction of counts). Its losses are in model.history "
    "(train_loss / validation_loss, lm_loss_train, pathway_loss_train, ...); to score the embedding, "
    "genemamba_scvi.metrics.benchmark_integration"
)


def _not_offered(name: str, why: str, instead: str) -> Callable[..., Any]:
    """A method of scvi-tools' generative models that raises ``NotImplementedError`` saying what to use instead."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"GeneMambaModel has no {name}: {instead}")

    method.__name__, method.__qualname__ = name, f"GeneMambaQueryMixin.{name}"
    method.__doc__ = (
        f"Not offered: {why}.\n\nRaises\n------\nNotImplementedError\n    Always, naming what to use instead.\n"
    )
    return method


class GeneMambaQueryMixin:
    """scvi-tools methods GeneMamba does not offer say what to do instead (mixed into ``GeneMambaModel``)."""

    @classmethod
    def load_query_data(cls, *args: Any, **kwargs: Any) -> Any:
        """Not offered: scArches' surgery adds batch-specific weights, and GeneMamba has no batch input.

        A saved or published model embeds new cells as they are: ``model.get_latent_representation(query)`` and
        ``model.predict(query)`` match the query's genes to the model's vocabulary by id (any order, missing or
        extra genes); to adapt the model to the query, ``GeneMambaModel.load(path, adata=query)`` then ``train``.

        Raises
        ------
        NotImplementedError
            Always, with the above.
        """
        raise NotImplementedError(
            "GeneMambaModel has no load_query_data (scArches surgery: GeneMamba has no batch input to extend). Embed "
            "or classify the query with the model as it is: model.get_latent_representation(query), "
            "model.predict(query) (genes are matched by id); to fine-tune on the query, "
            "GeneMambaModel.load(path, adata=query) and then train()"
        )

    @classmethod
    def prepare_query_anndata(cls, *args: Any, **kwargs: Any) -> Any:
        """Not needed: a query's genes are matched to the vocabulary by id (see :meth:`load_query_data`).

        Raises
        ------
        NotImplementedError
            Always, saying so.
        """
        raise NotImplementedError(
            "GeneMambaModel needs no prepare_query_anndata: pass the query as it is to get_latent_representation or "
            "predict; its genes are matched to the model's vocabulary by id (any order, missing or extra genes)"
        )

    get_normalized_expression = _not_offered(
        "get_normalized_expression",
        "GeneMamba has no decoder of counts (it is not a generative model like scVI)",
        "it is an encoder with no decoder of counts, so it cannot denoise expression as scVI does. Normalise the "
        "counts with scanpy (sc.pp.normalize_total(adata); sc.pp.log1p(adata)); to see how a gene moves a cell's "
        "embedding, use model.in_silico_perturb",
    )
    differential_expression = _not_offered(
        "differential_expression",
        "scVI's differential expression samples its count likelihood, which GeneMamba does not have",
        "scVI's samples its count model; GeneMamba has none. Group the cells with the embedding and test the "
        "counts: sc.pp.neighbors(adata, use_rep='X_genemamba'); sc.tl.leiden(adata); then "
        "sc.tl.rank_genes_groups(adata, 'leiden') on log-normalised counts",
    )
    differential_abundance = _not_offered(
        "differential_abundance",
        "scvi-tools' differential abundance needs a latent distribution; GeneMamba's embedding is a point",
        "it needs a posterior over the latent space; GeneMamba's embedding is deterministic. Test neighbourhood "
        "abundance on obsm['X_genemamba'] with a tool such as Milo (pertpy) after "
        "sc.pp.neighbors(adata, use_rep='X_genemamba')",
    )
    get_elbo = _not_offered("get_elbo", _NOT_A_VAE, _NO_ELBO)
    get_marginal_ll = _not_offered("get_marginal_ll", _NOT_A_VAE, _NO_ELBO)
    get_reconstruction_error = _not_offered("get_reconstruction_error", _NOT_A_VAE, _NO_ELBO)
    posterior_predictive_sample = _not_offered(
        "posterior_predictive_sample",
        "GeneMamba has no count likelihood to sample from",
        "it models the ranked gene sequence of a cell, not its counts, so there is no count distribution to sample",
    )
