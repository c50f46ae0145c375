"""Package data of genemamba-scvi (real, small, offline); see ``SOURCES.md``.

Load it through :mod:`genemamba_scvi.datasets`.
"""
