"""``python -m node``: the ``inkind-node`` command."""

import sys

from node.cli import main

sys.exit(main())
