"""Sphinx configuration for genemamba-scvi."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

project = "genemamba-scvi"
author = "genemamba-scvi developers"
copyright = "2026, genemamba-scvi developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "force")
nb_execution_timeout = 1200
nb_execution_raise_on_error = True
nb_execution_show_tb = True
exclude_patterns = ["_build", "**.ipynb_checkpoints", "developer/*", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "autosummary.import_cycle", "config.cache"]
intersphinx_mapping = {}
html_theme = "sphinx_book_theme"
html_title = "genemamba-scvi"
nitpicky = False
