"""`python -m rewardlab ...` runs the command line, like the `rewardlab` script."""

import sys

from rewardlab.cli import main

sys.exit(main())
