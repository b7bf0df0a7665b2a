"""`python -m captioner ...`: the `captioner` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
