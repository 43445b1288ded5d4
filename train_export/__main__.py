import sys

from train_export.cli import main

sys.exit(main())
