"""`python -m captioner.cli ...`: the `captioner` command (as `python -m captioner`)."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
