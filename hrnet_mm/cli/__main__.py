"""``python -m hrnet_mm.cli``: the ``hrnet-mm`` command."""
import sys

from .main import main

sys.exit(main())
