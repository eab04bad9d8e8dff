"""The chat generation path: time to first token and decode tokens/s of ChatModel's streaming path
for a --prompt_tokens prompt, next to the bound (memory bandwidth / weight bytes read per token) and
the variants that might be faster.

    python -m trainer.bench --part inference --model out --new_tokens 128
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from trainer.bench.machine import memory_bandwidth_gbs
from trainer.bench.report import log
from trainer.serve.inference import ChatModel, on_torch_thread

if TYPE_CHECKING:
    from transformers import BatchEncoding

# A patient's message, repeated and cut to --prompt_tokens (with the chat template around it).
PATIENT = (
    "Dokter, saya demam tinggi sejak tiga hari, disertai sakit kepala, nyeri otot dan sendi, mual, "
    "dan muncul bintik merah di lengan. Saya sudah minum parasetamol tetapi demamnya naik lagi. "
)

Run = Callable[[int], int]  # run(n) generates n tokens (EOS ignored) and returns how many it made
# (name, in the app path, make() -> (run, the model it runs)); make() loads or sets up only when measured
Variant = tuple[str, bool, Callable[[], tuple[Run, torch.nn.Module]]]


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
    chat = ChatModel.load(args.model, args.template)
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
    chat, message, inputs = s.chat, s.message, s.inputs
    device, dtype = chat.model.device, chat.model.dtype
    short = str(dtype).removeprefix("torch.")

    def on_app_model(make_run):
        return lambda: (make_run(), chat.model)

    def on_own_model(make_run, **options):  # another ChatModel, loaded with these options
        def make():
            other = ChatModel.load(args.model, args.template, device=str(device), **options)
            return make_run(other), other.model
        return make

    variants = [
        ("HF generate, float32 (plain transformers)", False,
         on_own_model(lambda other: generate_run(other.model, inputs), dtype=torch.float32)),
        (f"HF generate, {short}", False, on_app_model(lambda: generate_run(chat.model, inputs))),
        (f"forward loop, {short} (the floor: no generate, no streaming)", False,
         on_app_model(lambda: lambda n: forward_loop(chat.model, inputs["input_ids"], n))),
        (f"ChatModel.stream ({chat.settings})", True, on_app_model(lambda: stream_run(chat, message))),
    ]
    if dtype != torch.float32:
        variants.append(("stream, float32 (the dtype where bf16 is slow)", False,
                         on_own_model(lambda other: stream_run(other, message), dtype=torch.float32)))
    if "without oneDNN" in chat.settings:
        variants.append(("stream, oneDNN for one-token steps too", False,
                         on_own_model(lambda other: stream_run(other, message), dtype=dtype, onednn_for_one_token=True)))
    variants.append(("stream + static KV cache", False,
                     on_app_model(lambda: stream_run(chat, message, {"cache_implementation": "static"}))))
    if args.compile:
        variants.append(("stream + static KV cache + torch.compile", False,
                         on_app_model(lambda: stream_run(chat, message, compile_options(device)))))
    if device.type == "cpu" and torch.get_num_threads() > 1:
        variants.append(("stream, 1 thread", False, on_app_model(lambda: one_thread(stream_run(chat, message)))))
    return variants


def _measure_one(variant: Variant, bandwidth: float, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """(table row, result) of one variant."""
    name, kept, make = variant
    log(f"inference: {name}")
    run, model = make()
    try:
        r = time_generation(run, new_tokens, repeats)
    except Exception as e:  # an option this stack cannot run is a result, not the end of the benchmark
        if kept:
            raise
        r = {"error": f"{type(e).__name__}: {e}"[:300]}
    weight_bytes = weight_bytes_per_token(model)
    bound = bandwidth * 1e9 / weight_bytes
    result = {"variant": name, "in_app_path": kept, "weight_bytes_per_token": weight_bytes,
              "bound_tokens_per_s": bound, **r}
    decode = r.get("decode_tokens_per_s")
    row = {
        "variant": name, "TTFT (s)": r.get("ttft_seconds"), "decode tok/s": decode,
        "weight MB/token": weight_bytes / 1e6, "bound tok/s": bound,
        "% of bound": None if decode is None else 100 * decode / bound,
        "first run (s)": r.get("warmup_seconds"), "in the app path": r.get("error", kept),
    }
    return row, result


def _measure(variants: list[Variant], s: Setup, args) -> tuple[list[dict], list[dict]]:
    """(table rows, results), one each per variant; the app's model is left with no extra options."""
    measured = [_measure_one(v, s.bandwidth, args.new_tokens, args.repeats) for v in variants]
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


def bench_inference(args) -> dict:
    s = _setup(args)
    rows, results = _measure(_variants(s, args), s, args)
    app = next(r for r in results if r["in_app_path"])
    share = app["decode_tokens_per_s"] / app["bound_tokens_per_s"]
    return {"model": args.model, "settings": s.chat.settings, "prompt_tokens": s.prompt_tokens, "new_tokens": args.new_tokens,
            "memory_bandwidth_gbs": s.bandwidth, "variants": results, "app_ttft_seconds": app["ttft_seconds"],
            "app_decode_tokens_per_s": app["decode_tokens_per_s"], "app_share_of_bound": share,
            "notes": _notes(s, args, app, share), "table": rows}
