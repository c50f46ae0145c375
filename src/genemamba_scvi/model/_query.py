"""scvi-tools habits with no GeneMamba counterpart, answered: :class:`GeneMambaQueryMixin`.

scArches' query surgery, and the generative-model methods of scVI (normalised expression, differential expression,
ELBO, posterior samples): each raises ``NotImplementedError`` saying what to use instead.
"""

from __future__ import annotations

from typing import Any


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

    def get_normalized_expression(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: GeneMamba has no decoder of counts (it is not a generative model like scVI).

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(
            "GeneMambaModel has no get_normalized_expression: it is an encoder with no decoder of counts, so it "
            "cannot denoise expression as scVI does. Normalise the counts with scanpy "
            "(sc.pp.normalize_total(adata); sc.pp.log1p(adata)); to see how a gene moves a cell's embedding, use "
            "model.in_silico_perturb"
        )

    def differential_expression(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: scVI's differential expression samples its count likelihood, which GeneMamba does not have.

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(
            "GeneMambaModel has no differential_expression (scVI's samples its count model; GeneMamba has none). "
            "Group the cells with the embedding and test the counts: sc.pp.neighbors(adata, use_rep='X_genemamba'); "
            "sc.tl.leiden(adata); then sc.tl.rank_genes_groups(adata, 'leiden') on log-normalised counts"
        )

    def differential_abundance(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: scvi-tools' differential abundance needs a latent distribution; GeneMamba's is a point.

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(
            "GeneMambaModel has no differential_abundance (it needs a posterior over the latent space; GeneMamba's "
            "embedding is deterministic). Test neighbourhood abundance on obsm['X_genemamba'] with a tool such as "
            "Milo (pertpy) after sc.pp.neighbors(adata, use_rep='X_genemamba')"
        )

    def get_elbo(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: GeneMamba is not a VAE (see :meth:`get_reconstruction_error`).

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(_NO_ELBO.format(name="get_elbo"))

    def get_marginal_ll(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: GeneMamba is not a VAE (see :meth:`get_reconstruction_error`).

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(_NO_ELBO.format(name="get_marginal_ll"))

    def get_reconstruction_error(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: GeneMamba is not a VAE; its training loss is the masked-gene (LM) loss, in ``model.history``.

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(_NO_ELBO.format(name="get_reconstruction_error"))

    def posterior_predictive_sample(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: GeneMamba has no count likelihood to sample from.

        Raises
        ------
        NotImplementedError
            Always, saying so.
        """
        raise NotImplementedError(
            "GeneMambaModel has no posterior_predictive_sample: it models the ranked gene sequence of a cell, not "
            "its counts, so there is no count distribution to sample"
        )


_NO_ELBO = (
    "GeneMambaModel has no {name}: it is not a VAE (no ELBO, likelihood or reconstruction of counts). Its losses "
    "are in model.history (train_loss / validation_loss, lm_loss_train, pathway_loss_train, ...); to score the "
    "embedding, genemamba_scvi.metrics.benchmark_integration"
)
