"""Benchmarks: this machine's peaks, training throughput, the chat generation path, data preparation.

    python -m trainer.bench --out bench/                                   # every part, ~20 min on 2 CPU cores
    python -m trainer.bench --part machine inference data --out bench/     # ~4 min
    python -m trainer.bench --part inference --model out --new_tokens 128

Parts (PARTS): `machine` (matmul GFLOP/s in fp32 and bf16, memory read bandwidth), `training`
(trainer/bench/training.py: padded vs --group_by_length vs --packing runs of trainer.train; learned
tokens/s, padding, peak memory, MFU), `inference`
(time to first token and decode tokens/s of ChatModel's streaming path for a --prompt_tokens
prompt, next to the bound bandwidth / weight bytes read per token, and the options that may help),
`data` (tokenization and ROUGE-L dedup throughput on --data_path). Each part returns a dict; its
"table" (a list of rows) becomes a markdown table, its "notes" lines go above it and "after" below. --out DIR
gets bench.json (every number) and bench.md (tables ready for BENCHMARKS.md, with the command and
the machine). Progress goes to stderr. Numbers are measurements, never test asserts: other
processes on the machine slow them, so each part also says how much CPU others used meanwhile.
Torch work runs on trainer.serve.inference.TORCH_THREAD, the one thread the app runs its model on (why:
see there); a second thread running parallel ops would slow both.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from trainer.serve.inference import on_torch_thread
from trainer.models import DEFAULT_MODEL, ModelError

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "GenMedGPT-5k-id.json")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- machine


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    }


@functools.cache
def memory_bandwidth_gbs(mb: int = 512, device: str = "cpu", repeats: int = 7) -> float:
    """Read bandwidth: the median of `repeats` sums over an `mb` MB fp32 tensor. Decoding one token
    reads every weight once, and a sum is the same access pattern without the arithmetic. The median,
    as in this VM the best of 5 passes was once 1.6x the usual 33 GB/s. Measured once per process,
    so the machine and inference parts report the same number."""
    def measure():
        x = torch.ones(mb * 2**20 // 4, device=device)
        x.sum()  # warm-up
        seconds = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            x.sum()
            _sync(device)
            seconds.append(time.perf_counter() - start)
        return x.numel() * 4 / statistics.median(seconds) / 1e9

    return on_torch_thread(measure)


def matmul_peak_gflops(dtype: torch.dtype, sizes: list[int]) -> tuple[float, int]:
    """(best GFLOP/s, its size) of square CPU matmuls; trainer.train's bf16 check times the same."""
    from trainer.hw import matmul_gflops

    return on_torch_thread(lambda: max((matmul_gflops(dtype, n, seconds=0.2), n) for n in sizes))


def bench_machine(args) -> dict:
    log("machine: matmul fp32 / bf16, memory bandwidth")
    fp32, fp32_n = matmul_peak_gflops(torch.float32, args.matmul_sizes)
    bf16, bf16_n = matmul_peak_gflops(torch.bfloat16, args.matmul_sizes)
    bandwidth = memory_bandwidth_gbs(args.bandwidth_mb, "cpu")
    return {
        "matmul_fp32_gflops": fp32, "matmul_bf16_gflops": bf16, "memory_bandwidth_gbs": bandwidth,
        "table": [
            {"measure": f"matmul fp32, best of n = {', '.join(map(str, args.matmul_sizes))} (n = {fp32_n})", "value": fp32, "unit": "GFLOP/s"},
            {"measure": f"matmul bf16, best of the same (n = {bf16_n})", "value": bf16, "unit": "GFLOP/s"},
            {"measure": f"memory read bandwidth (median of 7 sums over {args.bandwidth_mb} MB fp32)", "value": bandwidth, "unit": "GB/s"},
        ],
    }


# ------------------------------------------------------------------------------------ inference

# A patient's message, repeated and cut to --prompt_tokens (with the chat template around it).
PATIENT = (
    "Dokter, saya demam tinggi sejak tiga hari, disertai sakit kepala, nyeri otot dan sendi, mual, "
    "dan muncul bintik merah di lengan. Saya sudah minum parasetamol tetapi demamnya naik lagi. "
)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoded token reads: every parameter once (a tied embedding/lm_head is
    one tensor), except an untied input embedding, of which a token reads a single row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or embed.weight is not head.weight:
        total -= embed.weight.numel() * embed.weight.element_size()
    return total


def bench_message(chat, prompt_tokens: int) -> str:
    """A user message whose full chat prompt is about `prompt_tokens` tokens."""
    overhead = chat.prompt("")[1]
    ids = chat.tokenizer(PATIENT * (prompt_tokens // 10 + 1), add_special_tokens=False)["input_ids"]
    return chat.tokenizer.decode(ids[: max(prompt_tokens - overhead, 1)])


def forward_loop(model, input_ids, new_tokens: int) -> int:
    """The floor: greedy decoding as bare forward calls, one token at a time, with a KV cache."""
    from transformers import DynamicCache

    def decode():
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            logits = model(input_ids, cache=cache, logits_to_keep=1).logits
            for _ in range(new_tokens - 1):
                logits = model(logits[:, -1:].argmax(-1), cache=cache).logits
            int(logits[0, -1].argmax())  # the last token, on the host

    on_torch_thread(decode)
    return new_tokens


def time_generation(run, new_tokens: int, repeats: int) -> dict:
    """TTFT = a 1-token generation; decode tok/s from the extra time of a `new_tokens` one.

    `run(n)` generates n tokens (EOS ignored) and returns how many it made. A first full-length run
    warms up (and compiles, where a variant compiles); then the best of `repeats` timed runs counts."""
    def timed(n):
        start = time.perf_counter()
        made = run(n)
        return time.perf_counter() - start, made

    warmup, _ = timed(new_tokens)
    ttft = min(timed(1)[0] for _ in range(repeats))
    seconds, made = min(timed(new_tokens) for _ in range(repeats))
    return {"warmup_seconds": warmup, "ttft_seconds": ttft, "new_tokens": made,
            "decode_tokens_per_s": (made - 1) / max(seconds - ttft, 1e-9)}


def stream_run(chat, message: str, options: dict | None = None):
    """The app's path: ChatModel.stream (generation on TORCH_THREAD, TextIteratorStreamer, marker checks), EOS ignored."""
    def run(n: int) -> int:
        chat.generate_options = {**(options or {}), "min_new_tokens": n}
        chat.answer(message, max_new_tokens=n)
        return chat.last.new_tokens

    return run


def generate_run(model, inputs):
    """Plain HF generate, greedy, nothing else."""
    def generate(n: int):
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def run(n: int) -> int:
        return on_torch_thread(generate, n).shape[1] - inputs["input_ids"].shape[1]

    return run


def one_thread(run):
    def run_on_one_thread(n: int) -> int:
        threads = on_torch_thread(torch.get_num_threads)
        on_torch_thread(torch.set_num_threads, 1)
        try:
            return run(n)
        finally:
            on_torch_thread(torch.set_num_threads, threads)

    return run_on_one_thread


def compile_options(device: torch.device) -> dict:
    import torch._inductor.config
    from transformers import CompileConfig

    # Compile in this process (its CPU time is then not taken for other processes' load, see run_part),
    # and from scratch, so that the first run shows the compile time a fresh machine pays.
    torch._inductor.config.compile_threads = 1
    torch._inductor.config.force_disable_caches = True
    # "reduce-overhead" means CUDA graphs; a CPU needs the default mode. generate() compiles only on
    # accelerators unless this private flag says otherwise.
    config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


def bench_inference(args) -> dict:
    from trainer.serve.inference import ChatModel

    chat = ChatModel.load(args.model, args.template)
    device, dtype = chat.model.device, chat.model.dtype
    message = bench_message(chat, args.prompt_tokens)
    text, prompt_tokens, _ = chat.prompt(message, max_new_tokens=args.new_tokens)
    inputs = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    bandwidth = memory_bandwidth_gbs(args.bandwidth_mb, str(device))
    log(f"inference: {args.model} ({chat.settings}), {prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
        f"memory bandwidth {bandwidth:.1f} GB/s")

    def load(**options):
        return ChatModel.load(args.model, args.template, device=str(device), **options)

    def fp32_generate():
        model = load(dtype=torch.float32).model
        return generate_run(model, inputs), model

    def fp32_stream():
        other = load(dtype=torch.float32)
        return stream_run(other, message), other.model

    def onednn_stream():
        other = load(dtype=dtype, onednn_for_one_token=True)
        return stream_run(other, message), other.model

    short = str(dtype).removeprefix("torch.")
    # (name, in the app path, make() -> (run(n) -> tokens made, the model it runs))
    variants = [
        ("HF generate, float32 (plain transformers)", False, fp32_generate),
        (f"HF generate, {short}", False, lambda: (generate_run(chat.model, inputs), chat.model)),
        (f"forward loop, {short} (the floor: no generate, no streaming)", False,
         lambda: (lambda n: forward_loop(chat.model, inputs["input_ids"], n), chat.model)),
        (f"ChatModel.stream ({chat.settings})", True, lambda: (stream_run(chat, message), chat.model)),
    ]
    if dtype != torch.float32:
        variants.append(("stream, float32 (the app's CPU dtype before issue 6)", False, fp32_stream))
    if "without oneDNN" in chat.settings:
        variants.append(("stream, oneDNN for one-token steps too", False, onednn_stream))
    variants.append(("stream + static KV cache", False,
                     lambda: (stream_run(chat, message, {"cache_implementation": "static"}), chat.model)))
    if args.compile:
        variants.append(("stream + static KV cache + torch.compile", False,
                         lambda: (stream_run(chat, message, compile_options(device)), chat.model)))
    if device.type == "cpu" and torch.get_num_threads() > 1:
        variants.append(("stream, 1 thread", False, lambda: (one_thread(stream_run(chat, message)), chat.model)))

    rows, results = [], []
    for name, kept, make in variants:
        log(f"inference: {name}")
        run, model = make()
        try:
            r = time_generation(run, args.new_tokens, args.repeats)
        except Exception as e:  # an option this stack cannot run is a result, not the end of the benchmark
            if kept:
                raise
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        weight_bytes = weight_bytes_per_token(model)
        bound = bandwidth * 1e9 / weight_bytes
        results.append({"variant": name, "in_app_path": kept, "weight_bytes_per_token": weight_bytes,
                        "bound_tokens_per_s": bound, **r})
        decode = r.get("decode_tokens_per_s")
        rows.append({
            "variant": name, "TTFT (s)": r.get("ttft_seconds"), "decode tok/s": decode,
            "weight MB/token": weight_bytes / 1e6, "bound tok/s": bound,
            "% of bound": None if decode is None else 100 * decode / bound,
            "first run (s)": r.get("warmup_seconds"), "in the app path": r.get("error", kept),
        })
    chat.generate_options = {}
    app = results[[kept for _, kept, _ in variants].index(True)]
    share = app["decode_tokens_per_s"] / app["bound_tokens_per_s"]
    notes = [
        f"Prompt: {prompt_tokens} tokens; {args.new_tokens} greedy new tokens (EOS ignored); best of {args.repeats} "
        "timed runs after a first, warm-up run. TTFT = the time of a 1-token generation; "
        "decode tok/s = (tokens - 1) / (time - TTFT).",
        f"Bound = memory read bandwidth {bandwidth:.1f} GB/s / weight bytes read per token (a tied embedding counted once).",
        f"App path ({chat.settings}): TTFT < 0.5 s {'met' if app['ttft_seconds'] < 0.5 else 'missed'} "
        f"({app['ttft_seconds']:.2f} s); decode >= 70% of the bound {'met' if share >= 0.7 else 'missed'} ({100 * share:.0f}%).",
    ]
    return {"model": args.model, "settings": chat.settings, "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
            "memory_bandwidth_gbs": bandwidth, "variants": results, "app_ttft_seconds": app["ttft_seconds"],
            "app_decode_tokens_per_s": app["decode_tokens_per_s"], "app_share_of_bound": share,
            "notes": notes, "table": rows}


# ----------------------------------------------------------------------------------------- data


def bench_data(args) -> dict:
    from trainer.batches import tokenize_records
    from trainer.records import load_records
    from trainer.models import load_tokenizer
    from trainer.prompts import DEFAULT_TEMPLATE, get_template

    records = load_records(args.data_path).records
    tokenizer = load_tokenizer(args.model)
    log(f"data: tokenizing {len(records):,} records with {args.model}'s tokenizer")
    start = time.perf_counter()
    _, stats = tokenize_records(records, tokenizer, get_template(args.template or DEFAULT_TEMPLATE), args.max_length)
    seconds = time.perf_counter() - start
    table = [{"step": f"tokenize_records (alpaca-id, max length {args.max_length})", "n": len(records), "seconds": seconds,
              "per second": f"{len(records) / seconds:,.0f} records, {stats.tokens / seconds:,.0f} tokens"}]
    result = {"records": len(records), "tokens": stats.tokens, "tokenize_seconds": seconds,
              "tokenize_records_per_s": len(records) / seconds, "tokenize_tokens_per_s": stats.tokens / seconds}
    try:
        from data_gen.bench_rouge import build_texts, run_fast
    except ImportError:
        log("data: data_gen is not here; ROUGE-L dedup skipped")
        return {**result, "table": table}
    log(f"data: ROUGE-L dedup of {args.dedup_n:,} texts")
    dedup = run_fast(build_texts([args.data_path], args.dedup_n), threshold=0.7)
    table.append({"step": "RougeDedup.add (data_gen/rouge.py, threshold 0.7)", "n": dedup["n"], "seconds": dedup["seconds"],
                  "per second": f"{dedup['n'] / dedup['seconds']:,.0f} texts ({dedup['kept']:,} kept)"})
    return {**result, "dedup": dedup, "dedup_texts_per_s": dedup["n"] / dedup["seconds"], "table": table}


# --------------------------------------------------------------------------------------- report


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), to tell whether others shared the run."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the training part's trainer.train runs)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_part(name: str, args) -> dict:
    busy, own, start = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    result = PARTS[name](args)
    wall = time.perf_counter() - start
    result["seconds"] = wall
    if busy is not None:
        others = max(_busy_seconds() - busy - (_own_cpu_seconds() - own), 0.0)
        result["other_processes_cpu_seconds"] = others
        if others > max(1.0, 0.2 * wall):
            result.setdefault("notes", []).append(
                f"Other processes used {others:.0f} CPU-seconds during this part's {wall:.0f} s: its numbers are low."
            )
    return result


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    numeric = [all(isinstance(r.get(h), (int, float)) and not isinstance(r.get(h), bool) for r in rows) for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(h)) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        "# trainer.bench", "", f"    {report['command']}", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
        + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
        + f"; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}.",
    ]
    for name, part in report["parts"].items():
        out += ["", f"## {name}", ""]
        out += [*part.get("notes", []), ""] if part.get("notes") else []
        out.append(markdown_table(part["table"]))
        out += part.get("after", [])
    return "\n".join(out) + "\n"


def bench_training(args) -> dict:
    from trainer.bench.training import bench_training as run

    # Its few torch ops (sampler orders, model shapes) on the torch thread too: a second OpenMP team
    # on the main thread slows every later decode step of the inference part (~40 % measured).
    return on_torch_thread(run, args)


PARTS = {"machine": bench_machine, "training": bench_training, "inference": bench_inference, "data": bench_data}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", choices=list(PARTS), default=list(PARTS), help="parts to run, in order")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or folder (inference, and the tokenizer for data)")
    parser.add_argument("--template", default=None, help="prompt template for a model without a chat_template")
    parser.add_argument("--data_path", default=DEFAULT_DATA, help="Alpaca records for the data part")
    parser.add_argument("--out", default=None, help="folder for bench.json and bench.md (default: print markdown only)")
    parser.add_argument("--prompt_tokens", type=int, default=200)
    parser.add_argument("--new_tokens", type=int, default=128, help="greedy tokens per timed generation (EOS ignored)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the best counts")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the torch.compile variant (minutes of compiling on a CPU)")
    parser.add_argument("--max_length", type=int, default=512, help="max length of training examples (as trainer.train)")
    parser.add_argument("--steps", type=int, default=6, help="training: optimizer steps per configuration (the first is not timed)")
    parser.add_argument("--batch_size", type=int, default=8, help="training: examples per optimizer step")
    parser.add_argument("--dedup_n", type=int, default=5000, help="texts for the ROUGE-L dedup timing")
    parser.add_argument("--matmul_sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--bandwidth_mb", type=int, default=512)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if {"data", "training"} & set(args.part) and not os.path.isfile(args.data_path):
        print(f"error: no data file at {args.data_path}; pass --data_path FILE (Alpaca JSON or JSON Lines) "
              "or leave out the parts that read it (--part machine inference).", file=sys.stderr)
        return 2
    from trainer.bench.training import BenchError
    from trainer.records import DataError
    from trainer.serve.inference import InputError

    report = {"command": "python -m trainer.bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_description(), "parts": {}}
    try:
        for name in args.part:
            report["parts"][name] = run_part(name, args)
    except (ModelError, DataError, InputError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "bench.md").write_text(text, encoding="utf-8")
        log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
