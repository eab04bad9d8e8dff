"""`python -m trainer.export`: the GGUF export of trainer/export/gguf.py."""

import sys

from trainer.export.gguf import main

if __name__ == "__main__":
    sys.exit(main())
