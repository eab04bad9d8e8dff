"""Peak resident memory of one engine answering one user, in a process of its own (a process's peak cannot be
reset, and the inference part loads several models in one).

    python -m trainer.bench.footprint --request r.json --model alpaca-medis-270m --quantize int8   # {"peak_rss_mb": ...}
    python -m trainer.bench.footprint --request r.json --gguf out/gguf/alpaca-medis-270m-q8_0.gguf

The engine loads as the page loads it, then answers the request's message (llama.cpp: its chat prompt) with
--max_new_tokens greedy tokens. trainer.bench.inference calls it (`peak_rss_mb`) once per engine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer.import_graph import ROOT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, help='JSON file: {"message": the user message, "prompt": its chat prompt}')
    parser.add_argument("--model", default="alpaca-medis-270m")
    parser.add_argument("--template", default=None)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: the fastest here")
    parser.add_argument("--gguf", default=None, help="measure llama.cpp (llama-cpp-python) on this file instead")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp's threads (default: torch's)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = json.loads(Path(args.request).read_text(encoding="utf-8"))
    if args.gguf:  # llama.cpp alone, as Ollama runs it: no torch in this process
        from trainer.bench.llama_cpp import greedy_run, load_llama

        made = greedy_run(load_llama(args.gguf, args.threads), request["prompt"])(args.max_new_tokens)
        settings = "llama.cpp"
    else:
        import torch

        from trainer.serve.inference import ChatModel

        chat = ChatModel.load(args.model, args.template, quantize=args.quantize, dtype=getattr(torch, args.dtype) if args.dtype else None)
        chat.generate_options = {"min_new_tokens": args.max_new_tokens}
        chat.answer(request["message"], max_new_tokens=args.max_new_tokens)
        settings, made = chat.settings, chat.last.new_tokens
    print(json.dumps({"peak_rss_mb": round(peak_kb() / 1024), "settings": settings, "new_tokens": made}))
    return 0


def peak_kb() -> int:
    """This process's peak resident memory in kB. Linux's ru_maxrss survives execve, so a child forked from a large
    parent would report the parent's size; VmHWM belongs to the new program's own memory map."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_mb(message: str, prompt: str, **options) -> int | None:
    """`python -m trainer.bench.footprint` answering `message` (chat prompt `prompt`) with these options (None values
    left out): its peak RSS in MB, or None if it failed (the reason goes to stderr)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as f:
        json.dump({"message": message, "prompt": prompt}, f, ensure_ascii=False)
    cmd = [sys.executable, "-m", "trainer.bench.footprint", "--request", f.name]
    for key, value in options.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    try:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if result.returncode != 0:
        print(f"footprint {options}: failed: {result.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


if __name__ == "__main__":
    sys.exit(main())
