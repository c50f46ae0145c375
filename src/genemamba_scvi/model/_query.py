"""scArches' query habits of scvi-tools, answered: :class:`GeneMambaQueryMixin`."""

from __future__ import annotations

from typing import Any


class GeneMambaQueryMixin:
    """``load_query_data`` / ``prepare_query_anndata`` say what to do instead (mixed into ``GeneMambaModel``)."""

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
