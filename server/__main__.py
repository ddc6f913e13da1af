"""``python -m server`` is the ``voxpipe`` command."""

import sys

from server.cli import main

sys.exit(main())
