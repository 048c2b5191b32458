"""``python -m rtsmlm``: the ``rtsmlm`` command."""

import sys

from rtsmlm.cli import main

sys.exit(main())
