"""An exported GGUF in real llama.cpp (llama-cpp-python): its tokens, its chat template, its greedy answers and
its speed, against the source model in transformers.

    pip install llama-cpp-python        # builds llama.cpp from source: ~20 min on 2 CPU cores, so not in CI
    python -m trainer.bench.llama_cpp --gguf out/gguf/alpaca-medis-270m-q8_0.gguf [--model alpaca-medis-270m] [--limit 48]

For each held-out record (data/sample.jsonl, the demo's empty-input prompt):
- the prompt rendered by the source's chat template, tokenized by llama.cpp (special tokens parsed) and by
  the source's tokenizer: equal or not;
- llama.cpp's chat completion, whose prompt llama-cpp-python renders from the GGUF's own chat template,
  greedy with no repetition penalty, against the source model's greedy answer in fp32: equal, or the
  word where they part.
Prints one line per record that differs and a summary, and --out FILE gets every number (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trainer import ROOT

DEFAULT_DATA = ROOT / "data" / "sample.jsonl"


INSTALL_HINT = "needs llama-cpp-python: `pip install llama-cpp-python` (it builds llama.cpp, ~20 min on 2 cores)."


def load_llama(gguf: str, threads: int | None = None):
    """llama.cpp (llama-cpp-python) on `gguf`, on `threads` threads (default: as many as torch uses)."""
    from llama_cpp import Llama

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return Llama(model_path=gguf, n_ctx=2048, n_threads=threads, verbose=False)


def greedy_run(llm, prompt: str):
    """run(n) for trainer.bench.inference: n greedy tokens after `prompt` (the chat template already applied), EOS
    ignored, the prompt evaluated afresh every time (llama-cpp-python would otherwise reuse the cached prefix)."""
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    no_eos = {llm.token_eos(): -1e9}

    def run(n: int) -> int:
        llm.reset()
        reply = llm.create_completion(ids, max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0, logit_bias=no_eos)
        return reply["usage"]["completion_tokens"]

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench.llama_cpp", description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, help="the GGUF file to run (written by `python -m trainer.export`)")
    parser.add_argument("--model", default="alpaca-medis-270m", help="the source the GGUF was exported from")
    parser.add_argument("--data_path", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", "--records", dest="records", metavar="LIMIT", type=int, default=48,
                        help="held-out records asked (default %(default)s)")
    parser.add_argument("--max_new_tokens", "--new_tokens", dest="new_tokens", metavar="MAX_NEW_TOKENS", type=int, default=48,
                        help="answer budget of both engines (default %(default)s)")
    parser.add_argument("--out", "--output_json", dest="output_json", metavar="OUT", default=None, help="JSON file for every number")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import torch

    from trainer.export.gguf import load_records
    from trainer.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(args.model), load_model(args.model).eval()
    start = time.perf_counter()
    llm = load_llama(args.gguf)
    result = {"gguf": Path(args.gguf).name, "load_seconds": round(time.perf_counter() - start, 2),
              "chat_format": llm.chat_format, "records": 0, "same_tokens": 0, "same_answers": 0,
              "llama_cpp_tokens": 0, "llama_cpp_seconds": 0.0}
    for record in load_records(Path(args.data_path), args.records):
        messages = [{"role": "user", "content": record["input"] or record["instruction"]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        same_tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        with torch.no_grad():
            answer = model.generate(torch.tensor([ids]), max_new_tokens=args.new_tokens, do_sample=False)[0, len(ids):]
        want = tokenizer.decode(answer, skip_special_tokens=True).strip()
        start = time.perf_counter()
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=args.new_tokens,
                                           repeat_penalty=1.0)
        result["llama_cpp_seconds"] += time.perf_counter() - start
        result["llama_cpp_tokens"] += reply["usage"]["completion_tokens"]
        got = reply["choices"][0]["message"]["content"].strip()
        result["records"] += 1
        result["same_tokens"] += same_tokens
        result["same_answers"] += got == want
        if got != want or not same_tokens:
            common = next((i for i, (a, b) in enumerate(zip(want.split(), got.split())) if a != b), None)
            print(f"record {result['records']}: tokens {'equal' if same_tokens else 'DIFFER'}; answers part at word {common}: "
                  f"{want[:90]!r} | {got[:90]!r}")
    result["llama_cpp_tokens_per_second"] = round(result["llama_cpp_tokens"] / max(result["llama_cpp_seconds"], 1e-9), 1)
    print(f"{result['gguf']} in llama.cpp (chat format {result['chat_format']}, loaded in {result['load_seconds']} s): prompt tokens "
          f"equal in {result['same_tokens']}/{result['records']} records, greedy answers equal in "
          f"{result['same_answers']}/{result['records']}; {result['llama_cpp_tokens_per_second']} answer tokens/s "
          "(prompt processing included)")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
