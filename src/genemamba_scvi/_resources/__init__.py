"""Package data of genemamba-scvi (real, small, offline). See ``SOURCES.md``; load through :mod:`genemamba_scvi.datasets`."""
