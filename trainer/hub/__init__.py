"""The Hugging Face Hub: model uploads with their card (push.py, card.py) and Space deploys (spaces.py).

Torch-free except when writing a compact adapter folder (push --output_dir)."""
