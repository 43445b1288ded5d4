"""``python -m edge.modelctl``: the model commands, run by name on devices (``push-ssh`` calls it there).

The commands live in :mod:`edge.tools.modelctl`; this module keeps the command line that older workstations
send to devices working.
"""

import sys

from edge.tools.modelctl import main

if __name__ == "__main__":
    sys.exit(main())
