"""`python -m lmfast.prepare ...` is exactly `lmfast prepare ...` (the seed's entry point)."""

import sys

from lmfast.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
