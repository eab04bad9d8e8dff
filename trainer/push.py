"""`python -m trainer.push`: upload a trained model folder to the Hub.

The code lives in trainer/hub/push.py; this entry point keeps the command that the README and the
published model cards and Spaces use."""

import sys

from trainer.hub.push import main

if __name__ == "__main__":
    sys.exit(main())
