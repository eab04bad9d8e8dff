"""`python -m trainer.push_space`: deploy a Space folder to the Hub.

The code lives in trainer/hub/spaces.py; this entry point keeps the command that the README and the
published model cards and Spaces use."""

import sys

from trainer.hub.spaces import main

if __name__ == "__main__":
    sys.exit(main())
