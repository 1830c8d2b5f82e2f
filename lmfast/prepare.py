"""`python -m lmfast.prepare ...` is exactly `lmfast prepare ...` (the original entry point, kept)."""

import sys

from lmfast.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
