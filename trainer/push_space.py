"""`python -m trainer.push_space`: Deploy a Space folder to the Hub. The code lives in trainer/hub/spaces.py; this entry point keeps
the command the README and the published Spaces' instructions use."""

import sys

from trainer.hub.spaces import main

if __name__ == "__main__":
    sys.exit(main())
