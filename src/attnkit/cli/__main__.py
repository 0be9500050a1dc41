"""``python -m attnkit.cli``: the same as the ``attnkit`` command."""

import sys

from .main import main

sys.exit(main())
