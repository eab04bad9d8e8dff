"""The chat generation path: time to first token and decode tokens/s of ChatModel's streaming path
for a --prompt_tokens prompt, next to the bound (memory bandwidth / weight bytes read per token) and
the variants that might be faster.

    python -m trainer.bench --part inference --model out --max_new_tokens 128
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from trainer.bench.machine import memory_bandwidth_gbs
from trainer.bench.report import log, markdown_table
from trainer.bench.training import BenchError
from trainer.hw import on_torch_thread
from trainer.serve.inference import ChatModel

if TYPE_CHECKING:
    from transformers import BatchEncoding

# A patient's message, repeated and cut to --prompt_tokens (with the chat template around it).
PATIENT = (
    "Dokter, saya demam tinggi sejak tiga hari, disertai sakit kepala, nyeri otot dan sendi, mual, "
    "dan muncul bintik merah di lengan. Saya sudah minum parasetamol tetapi demamnya naik lagi. "
)

Run = Callable[[int], int]  # run(n) generates n tokens (EOS ignored) and returns how many it made
# (name, in the app path, make() -> (run, weight bytes per token, peak RSS options or None)); make() loads or sets up
# only when measured; the options, when given, are measured by trainer.bench.footprint in a process of their own.
Variant = tuple[str, bool, Callable[[], tuple[Run, int, dict | None]]]


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decoded token reads: every parameter once (a tied embedding/lm_head is
    one tensor), int8 layers at a byte per weight, except an untied input embedding (int8 gives the head a
    copy of its own), of which a token reads a single row."""
    from trainer.serve.quantize import Int8Linear

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(m.in_features * m.out_features + 4 * m.out_features for m in model.modules() if isinstance(m, Int8Linear))
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is not embed.weight:
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


def time_generation(run: Run, new_tokens: int, repeats: int) -> dict:
    """TTFT = a 1-token generation; decode tok/s from the extra time of a `new_tokens` one.

    A first full-length run warms up (and compiles, where a variant compiles); then the best of
    `repeats` timed runs counts."""
    def timed(n):
        start = time.perf_counter()
        made = run(n)
        return time.perf_counter() - start, made

    warmup, _ = timed(new_tokens)
    ttft = min(timed(1)[0] for _ in range(repeats))
    seconds, made = min(timed(new_tokens) for _ in range(repeats))
    return {"warmup_seconds": warmup, "ttft_seconds": ttft, "new_tokens": made,
            "decode_tokens_per_s": (made - 1) / max(seconds - ttft, 1e-9)}


def stream_run(chat, message: str, options: dict | None = None) -> Run:
    """The app's path: ChatModel.stream (generation on TORCH_THREAD, TextIteratorStreamer, marker checks), EOS ignored."""
    def run(n: int) -> int:
        chat.generate_options = {**(options or {}), "min_new_tokens": n}
        chat.answer(message, max_new_tokens=n)
        return chat.last.new_tokens

    return run


def generate_run(model, inputs) -> Run:
    """Plain HF generate, greedy, nothing else."""
    def generate(n: int):
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def run(n: int) -> int:
        return on_torch_thread(generate, n).shape[1] - inputs["input_ids"].shape[1]

    return run


def one_thread(run: Run) -> Run:
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

    # Compile in this process (its CPU time is then not taken for other processes' load, see cli.run_part),
    # and from scratch, so that the first run shows the compile time a fresh machine pays.
    torch._inductor.config.compile_threads = 1
    torch._inductor.config.force_disable_caches = True
    # "reduce-overhead" means CUDA graphs; a CPU needs the default mode. generate() compiles only on
    # accelerators unless this private flag says otherwise.
    config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


@dataclass
class Setup:
    """What every variant shares: the app's model as the app loads it, and one prompt."""

    chat: ChatModel
    message: str
    inputs: BatchEncoding  # the tokenized chat prompt of `message`, on the model's device
    prompt_tokens: int
    bandwidth: float  # GB/s, as the machine part measures it


def _setup(args) -> Setup:
    chat = ChatModel.load(args.model, args.template, quantize="auto")  # as the page loads it
    device = chat.model.device
    message = bench_message(chat, args.prompt_tokens)
    text, prompt_tokens, _ = chat.prompt(message, max_new_tokens=args.new_tokens)
    inputs = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    bandwidth = memory_bandwidth_gbs(args.bandwidth_mb, str(device))
    log(f"inference: {args.model} ({chat.settings}), {prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
        f"memory bandwidth {bandwidth:.1f} GB/s")
    return Setup(chat, message, inputs, prompt_tokens, bandwidth)


def _variants(s: Setup, args) -> list[Variant]:
    """The app's path and the alternatives, in table order; the names are BENCHMARKS.md's row labels."""
    from trainer.hw import fast_cpu_dtype

    chat, message, inputs = s.chat, s.message, s.inputs
    device = chat.model.device
    app_mode = "int8" if "int8 weights" in chat.settings else "head" if "int8 head" in chat.settings else "none"
    fast = fast_cpu_dtype()[0] if device.type == "cpu" else torch.bfloat16
    app_engine = {"model": args.model, "template": args.template, "quantize": "auto"}

    def on_app_model(make_run, footprint=None):
        return lambda: (make_run(), weight_bytes_per_token(chat.model), footprint)

    def on_own_model(make_run, footprint=True, **options):  # another ChatModel, loaded with these options
        def make():
            other = ChatModel.load(args.model, args.template, device=str(device), **options)
            dtype = options.get("dtype")
            engine = {**app_engine, **options, "dtype": str(dtype).removeprefix("torch.") if dtype else None}
            return make_run(other), weight_bytes_per_token(other.model), engine if footprint else None
        return make

    def stream_of(other):
        return stream_run(other, message)

    variants = [
        ("HF generate, float32 (plain transformers)", False,
         on_own_model(lambda other: generate_run(other.model, inputs), footprint=False, dtype=torch.float32)),
        (f"ChatModel.stream ({chat.settings})", True, on_app_model(lambda: stream_run(chat, message), app_engine)),
    ]
    names = {"none": f"stream, unquantized {str(fast).removeprefix('torch.')}", "head": "stream, int8 head (--quantize head)",
             "int8": "stream, every layer int8 (--quantize int8)"}
    for mode in args.quantize:
        if mode != app_mode:
            variants.append((names[mode], False, on_own_model(stream_of, quantize=mode)))
    if "none" in args.quantize and fast != torch.float32:
        variants.append(("stream, unquantized float32 (where bf16 is slow)", False,
                         on_own_model(stream_of, quantize="none", dtype=torch.float32)))
    variants.append(("forward loop, the app's model (the floor: no generate, no streaming)", False,
                     on_app_model(lambda: lambda n: forward_loop(chat.model, inputs["input_ids"], n))))
    if "without oneDNN" in chat.settings:
        variants.append(("stream, oneDNN for one-token steps too", False,
                         on_own_model(lambda other: stream_run(other, message), footprint=False, dtype=chat.model.dtype,
                                      onednn_for_one_token=True)))
    variants.append(("stream + static KV cache", False,
                     on_app_model(lambda: stream_run(chat, message, {"cache_implementation": "static"}))))
    if args.compile and app_mode == "none":  # torch.compile cannot trace fbgemm's packed int8 weights (BENCHMARKS.md)
        variants.append(("stream + static KV cache + torch.compile", False,
                         on_app_model(lambda: stream_run(chat, message, compile_options(device)))))
    if device.type == "cpu" and torch.get_num_threads() > 1:
        variants.append(("stream, 1 thread", False, on_app_model(lambda: one_thread(stream_run(chat, message)))))
    if args.gguf:
        variants.append((f"llama.cpp, {os.path.basename(args.gguf)} (llama-cpp-python)", False, lambda: _llama_cpp(s, args)))
    return variants


def _llama_cpp(s: Setup, args) -> tuple[Run, int, dict]:
    """llama.cpp on the same prompt text (its tokens equal ours: the export check), on torch's thread count."""
    from trainer.bench.llama_cpp import greedy_run, load_llama

    try:
        llm = load_llama(args.gguf)
    except ImportError:
        from trainer.bench.llama_cpp import INSTALL_HINT

        raise BenchError(f"--gguf {args.gguf}: {INSTALL_HINT}") from None
    prompt = s.chat.prompt(s.message, max_new_tokens=args.new_tokens)[0]
    # A tied q8_0 GGUF holds each weight once; a decoded token reads nearly all of the file.
    return greedy_run(llm, prompt), os.path.getsize(args.gguf), {"gguf": args.gguf, "threads": torch.get_num_threads()}


def _measure_one(variant: Variant, s: Setup, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """(table row, result) of one variant."""
    from trainer.bench.footprint import peak_rss_mb

    name, kept, make = variant
    log(f"inference: {name}")
    run, weight_bytes, engine = make()
    try:
        r = time_generation(run, new_tokens, repeats)
    except Exception as e:  # an option this stack cannot run is a result, not the end of the benchmark
        if kept:
            raise
        r = {"error": f"{type(e).__name__}: {e}"[:300]}
    del run  # frees a model of the variant's own before the next loads
    peak = None
    if engine is not None and "error" not in r:
        log(f"inference: {name}: peak RSS, in a process of its own")
        peak = peak_rss_mb(s.message, s.chat.prompt(s.message)[0], **engine)
    bound = s.bandwidth * 1e9 / weight_bytes
    result = {"variant": name, "in_app_path": kept, "weight_bytes_per_token": weight_bytes,
              "bound_tokens_per_s": bound, "peak_rss_mb": peak, **r}
    decode = r.get("decode_tokens_per_s")
    row = {
        "variant": name, "TTFT (s)": r.get("ttft_seconds"), "decode tok/s": decode,
        "weight MB/token": weight_bytes / 1e6, "bound tok/s": bound,
        "% of bound": None if decode is None else 100 * decode / bound, "peak RSS (MB)": peak,
        "first run (s)": r.get("warmup_seconds"), "in the app path": r.get("error", kept),
    }
    return row, result


def _measure(variants: list[Variant], s: Setup, args) -> tuple[list[dict], list[dict]]:
    """(table rows, results), one each per variant; the app's model is left with no extra options."""
    measured = [_measure_one(v, s, args.new_tokens, args.repeats) for v in variants]
    s.chat.generate_options = {}
    return [row for row, _ in measured], [result for _, result in measured]


def _notes(s: Setup, args, app: dict, share: float) -> list[str]:
    return [
        f"Prompt: {s.prompt_tokens} tokens; {args.new_tokens} greedy new tokens (EOS ignored); best of {args.repeats} "
        "timed runs after a first, warm-up run. TTFT = the time of a 1-token generation; "
        "decode tok/s = (tokens - 1) / (time - TTFT).",
        f"Bound = memory read bandwidth {s.bandwidth:.1f} GB/s / weight bytes read per token (a tied embedding counted once).",
        f"App path ({s.chat.settings}): TTFT < 0.5 s {'met' if app['ttft_seconds'] < 0.5 else 'missed'} "
        f"({app['ttft_seconds']:.2f} s); decode >= 70% of the bound {'met' if share >= 0.7 else 'missed'} ({100 * share:.0f}%).",
    ]


def first_token_parts(chat: ChatModel, message: str, repeats: int = 3) -> list[dict]:
    """Where the time to the first text goes on the app's path, each part timed alone (best of `repeats`): the chat
    template and token count (`prompt`), tokenizing, the prefill on a prompt length seen before and on a new one
    (oneDNN builds kernels per shape), generate() of one token, and the first text of ChatModel.stream and of
    BatchedChat.stream (its gathering wait included)."""
    from trainer.serve.batching import BatchedChat

    text = chat.prompt(message)[0]
    ids = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(chat.model.device)
    lengths = iter(range(1, 10_000))

    def best(fn) -> float:
        """fn's time, or the time it returns (the first text's, not the stop that follows it); best of `repeats`."""
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            until = fn()
            end = time.perf_counter()
            times.append((until if isinstance(until, float) else end) - start)
        return min(times)

    def prefill(new_shape: bool):
        x = torch.cat([ids, ids[:, -1:].repeat(1, next(lengths))], 1) if new_shape else ids
        with torch.inference_mode():
            int(chat.model(x, logits_to_keep=1).logits[0, -1].argmax())

    def generate_one():
        with torch.inference_mode():
            chat.model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=chat._pad_token_id)

    def first_text(reader):
        def run() -> float:
            texts = reader.stream(message, max_new_tokens=8, temperature=0.0, repetition_penalty=1.1)
            next(texts)
            shown = time.perf_counter()
            texts.close()  # stops generation (within a step), not timed
            return shown
        return run

    batched = BatchedChat(chat, max_batch=8)
    try:
        parts = [
            ("chat template + token count (ChatModel.prompt)", best(lambda: chat.prompt(message))),
            ("tokenize the prompt", best(lambda: chat.tokenizer(text, add_special_tokens=False))),
            ("prefill, a prompt length seen before", best(lambda: on_torch_thread(prefill, False))),
            ("prefill, a new prompt length", best(lambda: on_torch_thread(prefill, True))),
            ("generate() of 1 token (prefill + its setup)", best(lambda: on_torch_thread(generate_one))),
            ("first text, ChatModel.stream (one user)", best(first_text(chat))),
            (f"first text, BatchedChat.stream (page and /v1; gathers {batched.gather_seconds * 1000:.0f} ms)", best(first_text(batched))),
        ]
    finally:
        batched.close()
    return [{"part": name, "ms": 1000 * seconds} for name, seconds in parts]


def bench_inference(args) -> dict:
    s = _setup(args)
    rows, results = _measure(_variants(s, args), s, args)
    app = next(r for r in results if r["in_app_path"])
    share = app["decode_tokens_per_s"] / app["bound_tokens_per_s"]
    log("inference: where the first token's time goes")
    first = first_token_parts(s.chat, s.message, args.repeats)
    return {"model": args.model, "settings": s.chat.settings, "prompt_tokens": s.prompt_tokens, "new_tokens": args.new_tokens,
            "memory_bandwidth_gbs": s.bandwidth, "variants": results, "app_ttft_seconds": app["ttft_seconds"],
            "app_decode_tokens_per_s": app["decode_tokens_per_s"], "app_share_of_bound": share, "first_token": first,
            "notes": _notes(s, args, app, share), "table": rows,
            "after": ["", f"Where the first token's time goes ({s.prompt_tokens}-token prompt, app path, best of {args.repeats}):", "",
                      markdown_table(first)]}
