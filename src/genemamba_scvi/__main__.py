"""``python -m genemamba_scvi``: the ``genemamba`` command."""

import sys

from genemamba_scvi.cli import main

if __name__ == "__main__":
    sys.exit(main())
