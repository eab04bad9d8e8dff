"""Merge a LoRA adapter into its base model and save a plain full checkpoint.

    python -m trainer.export.merge --model out-lora --output_dir out-merged [--base_model DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from trainer.models import EMBEDDED, ModelError, adapter_base, is_adapter, load_model, load_tokenizer, resolve


def base_of(adapter: str, base_model: str | None = None) -> str:
    """The base folder (or embedded name) of an adapter: `base_model` if given, else what the adapter names.
    Raises ModelError naming the fix when it is not on this machine."""
    base = base_model or adapter_base(adapter)
    if not base:
        raise ModelError(f"{adapter}/adapter_config.json names no base model (base_model_name_or_path); give it with --base_model DIR.")
    if base in EMBEDDED or os.path.isdir(base):
        return base
    raise ModelError(
        f"The adapter in {adapter} needs its base model {base!r}, which is not a folder on this machine. "
        f"Download it (`hf download {base} --local-dir BASE`) or point to it with --base_model BASE."
    )


def merge(adapter: str, output_dir: str, base_model: str | None = None) -> None:
    adapter = resolve(adapter)
    if not is_adapter(adapter):
        raise ModelError(f"{adapter} holds no LoRA adapter (missing adapter_config.json). Train one with --lora_r 8.")
    from peft import PeftModel

    base = base_of(adapter, base_model)
    model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), adapter).merge_and_unload()
    model.save_pretrained(output_dir)
    load_tokenizer(adapter, base=base).save_pretrained(output_dir)  # it carries the adapter's chat_template


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.export.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--model", "--adapter", dest="adapter", metavar="MODEL", required=True,
                        help="the LoRA adapter folder written by `trainer.train --lora_r N`")
    parser.add_argument("--output_dir", required=True, help="folder for the merged full checkpoint")
    parser.add_argument("--base_model", default=None, help="the base's folder, when the one the adapter names is elsewhere")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merge(args.adapter, args.output_dir, args.base_model)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {args.adapter} into {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
