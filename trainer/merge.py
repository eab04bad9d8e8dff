"""Merge a LoRA adapter into its base model and save a plain full checkpoint.

    python -m trainer.merge --adapter out-lora --output_dir out-merged
"""

from __future__ import annotations

import argparse
import sys

import torch

from trainer.models import ModelError, is_adapter, load_model, load_tokenizer


def merge(adapter: str, output_dir: str) -> None:
    if not is_adapter(adapter):
        raise ModelError(f"{adapter} holds no LoRA adapter (missing adapter_config.json). Train one with --lora_r 8.")
    model = load_model(adapter, dtype=torch.float32).merge_and_unload()
    model.save_pretrained(output_dir)
    load_tokenizer(adapter).save_pretrained(output_dir)  # the adapter folder's tokenizer carries the chat_template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="folder written by `trainer.train --lora_r N`")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        merge(args.adapter, args.output_dir)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {args.adapter} into {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
