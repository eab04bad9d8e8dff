"""`python -m trainer.inference`: chat with a trained model from the command line.

The code lives in trainer/serve/inference.py; this entry point keeps the command that the README and the
published model cards and Spaces use."""

import sys

from trainer.serve.inference import main

if __name__ == "__main__":
    sys.exit(main())
