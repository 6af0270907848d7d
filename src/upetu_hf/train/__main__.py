"""`python -m upetu_hf.train ...` (also `torchrun ... -m upetu_hf.train ...`): the `upetu-train` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
