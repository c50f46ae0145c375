"""Sphinx configuration for genemamba-scvi."""

from __future__ import annotations

import os
import re

# Notebook kernels inherit this environment: with MPLBACKEND=Agg (set by .ci/run for the tests) a kernel
# draws figures nobody shows, and plotting cells come out without a picture. The inline backend is what
# Jupyter itself uses; the Sphinx process never opens a window either way.
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
# tqdm.auto (imported by scvi-tools) warns in every kernel without ipywidgets; the docs show no widgets anyway.
os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"

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
templates_path = ["_templates"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_ivar = True  # "Attributes" sections as fields: no duplicates of the generated attribute pages
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = os.environ.get("NB_EXECUTION_MODE", "force")
nb_execution_timeout = 1200
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True  # one stderr/stdout box per cell, not one per write
exclude_patterns = ["_build", "**.ipynb_checkpoints", "developer/*", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "autosummary.import_cycle", "config.cache"]
intersphinx_mapping = {}
html_theme = "sphinx_book_theme"
html_title = "genemamba-scvi"
nitpicky = False

# scvi-tools base-class members that do not apply to GeneMamba: it converts scvi-tools' own legacy save format.
_HIDDEN_MEMBERS = {"convert_legacy_save"}

# A notebook cell that calls one of these plots something; it must come out with a picture.
_PLOT_CALL = re.compile(r"\b(sc\.pl\.\w+|plt\.\w+|sns\.\w+)\(|\.plot\(")


def _skip_hidden_members(app, what, name, obj, skip, options):
    return True if name in _HIDDEN_MEMBERS else None


def _check_plots_have_images(app, doctree):
    """Fail the build when an executed notebook cell that plots produced no image (e.g. a non-inline backend)."""
    from docutils import nodes
    from sphinx.errors import ExtensionError

    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        sources = [n for n in cell.findall(nodes.literal_block) if n.parent.get("nb_element") == "cell_code_source"]
        source = sources[0].astext() if sources else ""
        if _PLOT_CALL.search(source) and not any(True for _ in cell.findall(nodes.image)):
            raise ExtensionError(
                f"{app.env.docname}: a notebook cell that plots produced no image:\n{source}\n"
                "(is the kernel's matplotlib backend inline? does the cell end with the plot?)"
            )


def setup(app):
    app.connect("autodoc-skip-member", _skip_hidden_members)
    app.connect("doctree-read", _check_plots_have_images)
