"""Benchmarks of this machine, training, the chat generation path and data preparation: `python -m trainer.bench`."""
