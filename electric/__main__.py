"""``python -m electric``: the CLI, for launchers that run a module (``torchrun -m electric``)."""

import sys

from electric.cli import main

if __name__ == "__main__":
    sys.exit(main())
