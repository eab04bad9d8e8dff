"""`python -m trainer.inference`: Chat with a trained model from the command line. The code lives in trainer/serve/inference.py; this entry point keeps
the command the README and the published Spaces' instructions use."""

import sys

from trainer.serve.inference import main

if __name__ == "__main__":
    sys.exit(main())
