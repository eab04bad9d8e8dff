"""Benchmarks: this machine's peaks, training throughput, the chat generation path, data preparation.

    python -m trainer.bench --output_dir bench/                                   # every part, ~20 min on 2 CPU cores
    python -m trainer.bench --part machine inference data --output_dir bench/     # ~4 min
    python -m trainer.bench --part inference --model out --max_new_tokens 128
    python -m trainer.bench --part inference serving --model alpaca-medis-270m --gguf out/gguf/alpaca-medis-270m-q8_0.gguf

Parts (PARTS), one module each in trainer/bench/: `machine` (matmul GFLOP/s in fp32 and bf16, memory
read bandwidth), `training` (padded vs --group_by_length vs --packing runs of trainer.train: learned
tokens/s, padding, peak memory, MFU), `inference` (time to first token and decode tokens/s of
ChatModel's streaming path against the memory-bandwidth bound, the --quantize engines, llama.cpp on a --gguf
file, each engine's peak RSS, the options that may help, and where the first token's time goes),
`serving` (1, 4, 8, 16 users streaming at once through the batched serving path, per --quantize engine:
aggregate and per-user tokens/s, time to first token p50/p95), `data` (tokenization and ROUGE-L dedup
throughput on --data_path). Each part returns a dict; its "table" (a list of rows) becomes a markdown table, its "notes" lines go above it and "after" below
(trainer/bench/report.py). --output_dir DIR gets bench.json (every number) and bench.md (tables
ready for BENCHMARKS.md, with the command and the machine). Progress goes to stderr. Numbers are
measurements, never test asserts: other processes on the machine slow them, so each part also says
how much CPU others used meanwhile. Torch work runs on trainer.hw.TORCH_THREAD, the one
thread the app runs its model on (why: see there); a second thread running parallel ops would slow both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from trainer.bench.data import bench_data
from trainer.bench.inference import bench_inference
from trainer.bench.machine import bench_machine, busy_cpu_seconds, machine_description, own_cpu_seconds
from trainer.bench.report import log, markdown
from trainer.bench.serving import bench_serving
from trainer.bench.training import BenchError, bench_training
from trainer.import_graph import ROOT
from trainer.models import DEFAULT_MODEL, ModelError
from trainer.records import DataError
from trainer.serve.inference import InputError

# The dataset beside the repository (see its README "Data"), never copied into it.
DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "GenMedGPT-5k-id.json")

PARTS = {"machine": bench_machine, "training": bench_training, "inference": bench_inference, "serving": bench_serving,
         "data": bench_data}


def run_part(name: str, args) -> dict:
    """PARTS[name](args), with its wall time and the CPU time other processes took meanwhile."""
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    result = PARTS[name](args)
    wall = time.perf_counter() - start
    result["seconds"] = wall
    if busy is not None:
        others = max(busy_cpu_seconds() - busy - (own_cpu_seconds() - own), 0.0)
        result["other_processes_cpu_seconds"] = others
        if others > max(1.0, 0.2 * wall):
            result.setdefault("notes", []).append(
                f"Other processes used {others:.0f} CPU-seconds during this part's {wall:.0f} s: its numbers are low."
            )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", choices=list(PARTS), default=list(PARTS), help="parts to run, in order")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or folder (inference, and the tokenizer for data)")
    parser.add_argument("--template", default=None, help="prompt template for a model without a chat_template")
    parser.add_argument("--data_path", default=DEFAULT_DATA, help="Alpaca records for the data part")
    parser.add_argument("--output_dir", "--out", dest="output_dir", default=None,
                        help="folder for bench.json and bench.md (default: print markdown only)")
    parser.add_argument("--prompt_tokens", type=int, default=200)
    parser.add_argument("--max_new_tokens", "--new_tokens", dest="new_tokens", metavar="MAX_NEW_TOKENS", type=int, default=128,
                        help="greedy tokens per timed generation (EOS ignored, so each makes exactly this many)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the best counts")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 16],
                        help="serving: concurrent users per round (each streams --max_new_tokens tokens)")
    parser.add_argument("--quantize", nargs="+", choices=("none", "head", "int8"), default=["none", "head", "int8"],
                        help="inference and serving: the engines to measure besides the page's own (none = unquantized in the dtype "
                             "the page picks here, plus float32 where that is bf16; head / int8 as app.py --quantize)")
    parser.add_argument("--gguf", default=None, help="inference: also measure llama.cpp (llama-cpp-python, if installed) on this "
                                                     "GGUF, e.g. out/gguf/alpaca-medis-270m-q8_0.gguf from `make gguf`")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the torch.compile variant (minutes of compiling on a CPU)")
    parser.add_argument("--max_length", type=int, default=512, help="max length of training examples (as trainer.train)")
    parser.add_argument("--steps", type=int, default=6, help="training: optimizer steps per configuration (the first is not timed)")
    parser.add_argument("--batch_size", type=int, default=8, help="training: examples per optimizer step")
    parser.add_argument("--dedup_n", type=int, default=5000, help="texts for the ROUGE-L dedup timing")
    parser.add_argument("--matmul_sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--bandwidth_mb", type=int, default=512)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if {"data", "training"} & set(args.part) and not os.path.isfile(args.data_path):
        print(f"error: no data file at {args.data_path}; pass --data_path FILE (Alpaca JSON or JSON Lines) "
              "or leave out the parts that read it (--part machine inference).", file=sys.stderr)
        return 2
    report = {"command": "python -m trainer.bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_description(), "parts": {}}
    try:
        for name in args.part:
            report["parts"][name] = run_part(name, args)
    except (ModelError, DataError, InputError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(report)
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "bench.md").write_text(text, encoding="utf-8")
        log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
