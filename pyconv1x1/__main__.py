"""`python -m pyconv1x1`: the same command line as the `pyconv1x1` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
