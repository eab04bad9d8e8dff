"""Instruction-data tools for alpaca-medis.

    python -m data_gen generate --base_url URL --model M --num_records N --out gen.jsonl
    python -m data_gen translate --base_url URL --model M --data_path chatdoctor5k.json --out id.jsonl
    python -m data_gen convert ...
    python -m data_gen stats ...
    python -m data_gen conditions --out out/conditions.jsonl
    python -m data_gen COMMAND --help

Commands:
  generate   self-instruct generation of Indonesian doctor-patient records through an
             OpenAI-compatible chat server (stanford_alpaca's pipeline, resumable)
  translate  translate an English Alpaca dataset (ChatDoctor's GenMedGPT-5k) into Indonesian,
             aligned by source_index (resumable)
  convert    convert between data formats (data_gen/convert.py)
  stats      statistics of an Alpaca dataset (data_gen/stats.py)
  conditions Alpaca records from the condition cards of data/conditions/ (offline, or through a chat model)
"""

from __future__ import annotations

import importlib
import sys

# Imported only when chosen: each command pulls in its own dependencies.
COMMANDS = {
    "generate": "data_gen.generate",
    "translate": "data_gen.translate",
    "convert": "data_gen.convert",
    "stats": "data_gen.stats",
    "conditions": "data_gen.conditions",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)} "
              "(python -m data_gen --help)", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command])
    except ModuleNotFoundError as e:
        if e.name != COMMANDS[command]:
            raise
        print(f"error: {command!r} is not in this checkout ({COMMANDS[command].replace('.', '/')}.py is missing).",
              file=sys.stderr)
        return 2
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
