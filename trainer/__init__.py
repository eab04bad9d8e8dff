"""alpaca-medis: training, evaluation, serving and publishing of Alpaca-style Indonesian medical chat models."""

from pathlib import Path

# The repository root (in a Space: the folder app.py and trainer/ were deployed to). The one definition:
# data files, presets and the shipped model are found from here.
ROOT = Path(__file__).resolve().parents[1]
