"""``python -m pvq_model.launch``: see :func:`pvq_model.launch.cli.main`."""

import sys

from .cli import main

sys.exit(main())
