"""``python -m torchgraft``: the command line (also what ``torchrun -m torchgraft`` runs)."""

import sys

from .cli.main import main

sys.exit(main())
