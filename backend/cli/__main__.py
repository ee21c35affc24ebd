"""``python -m backend.cli``: the ``labelloop`` command."""

import sys

from backend.cli.main import main

sys.exit(main())
