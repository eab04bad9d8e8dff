"""`python -m trainer.push`: Upload a trained model folder to the Hub. The code lives in trainer/hub/push.py; this entry point keeps
the command the README and the published Spaces' instructions use."""

import sys

from trainer.hub.push import main

if __name__ == "__main__":
    sys.exit(main())
