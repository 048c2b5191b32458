"""``python -m rtsmlm``: the ``rtsmlm`` command."""

import sys

from rtsmlm.cli.main import main

sys.exit(main())
