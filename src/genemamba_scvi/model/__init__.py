"""The scvi-tools face of GeneMamba: :class:`GeneMambaModel`.

- :mod:`genemamba_scvi.model._model`: the AnnData-facing class (set-up, tokenization, inference),
- :mod:`genemamba_scvi.model._training`: ``train``, ``train_classifier`` and corpus ``pretrain`` (a mixin),
- :mod:`genemamba_scvi.model._save_load`: ``save``, ``load`` and ``from_pretrained`` (a mixin),
- :mod:`genemamba_scvi.model._query`: scArches' ``load_query_data`` habit answered (a mixin),
- :mod:`genemamba_scvi.model._classifier`: the cell-type head's label codes, class weights and checks,
- :mod:`genemamba_scvi.model._genes`: gene ids at set-up and a query's genes against the vocabulary,
- :mod:`genemamba_scvi.model._utils`: AnnData checks shared by them.
"""

from genemamba_scvi._constants import LATENT_KEY
from genemamba_scvi.model._classifier import _class_weights, _label_codes  # noqa: F401
from genemamba_scvi.model._genes import (  # noqa: F401
    _check_known_genes_expressed,
)
from genemamba_scvi.model._model import GeneMambaModel

# private helpers, importable from here as before the split
from genemamba_scvi.model._save_load import GeneMambaSaveLoadMixin, _history_from_json, _history_to_json  # noqa: F401
from genemamba_scvi.model._training import (  # noqa: F401
    GeneMambaTrainingMixin,
    _GeneMambaTrainRunner,
    _ResumableCheckpoint,
)
from genemamba_scvi.model._utils import (  # noqa: F401
    _ENCODER_ARGS,
    _check_obs_key,
    _register_afresh,
    _validate_count_layer,
)

__all__ = ["LATENT_KEY", "GeneMambaModel", "GeneMambaSaveLoadMixin", "GeneMambaTrainingMixin"]
