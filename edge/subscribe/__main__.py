"""``python -m edge.subscribe``: the subscriber tools without the daemon's CLI."""

import sys

from edge.subscribe.cli import main

sys.exit(main())
