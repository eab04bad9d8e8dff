"""Concurrent chats: N users streaming answers at once from the demo's serving path.

    python -m trainer.bench --part serving [--model alpaca-medis-270m] [--users 1 4 8 16] [--max_new_tokens 64]

Each user is a thread that asks one patient question (a different one per user, from data/sample.jsonl)
through `BatchedChat.stream`, as the page and `/v1` do, and the rows report, per number of users: the
aggregate new tokens/s (all answers' tokens over the wall time of the round), tokens/s per user, and time
to first token p50/p95. EOS is ignored (`min_new_tokens`), so every answer has the same length and rounds
compare. A round with 1 user is the one-at-a-time baseline.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

from trainer import ROOT
from trainer.bench.report import log

QUESTIONS = ROOT / "data" / "sample.jsonl"


def questions(n: int) -> list[str]:
    records = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["input"] or r["instruction"] for r in records]
    return [texts[i % len(texts)] for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_round(chat, users: int, new_tokens: int) -> dict:
    """`users` concurrent streams; their tokens, times to first token and the wall time."""
    from trainer.serve.inference import GenerationStats

    stats = [GenerationStats() for _ in range(users)]
    firsts: list[float | None] = [None] * users
    errors: list[str] = []
    batches_before = len(getattr(chat, "batch_sizes", []))
    start = time.perf_counter()

    def user(i: int, question: str) -> None:
        try:
            for _ in chat.stream(question, max_new_tokens=new_tokens, stats=stats[i], min_new_tokens=new_tokens):
                if firsts[i] is None:
                    firsts[i] = time.perf_counter() - start
        except Exception as e:  # a refused or failed request is a result of the round
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(i, q)) for i, q in enumerate(questions(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(s.new_tokens for s in stats)
    ttft = [f for f in firsts if f is not None]
    per_user = [s.new_tokens / s.seconds for s in stats if s.seconds]
    return {"users": users, "new_tokens": tokens, "seconds": wall, "aggregate_tokens_per_s": tokens / wall,
            "per_user_tokens_per_s": statistics.mean(per_user) if per_user else None,
            "ttft_p50_s": percentile(ttft, 0.5) if ttft else None, "ttft_p95_s": percentile(ttft, 0.95) if ttft else None,
            "errors": errors, "batch_sizes": list(getattr(chat, "batch_sizes", []))[batches_before:]}


def engines(args) -> list[tuple[str, dict]]:
    """(label, ChatModel.load options) per engine --quantize asks for: the unquantized model in the dtype the page picks
    here, the same in float32 where that is bf16 (a CPU without fast bf16 runs that), the int8 head, every layer int8."""
    import torch

    from trainer.hw import fast_cpu_dtype

    fast = str(fast_cpu_dtype()[0]).removeprefix("torch.")
    chosen = []
    for quantize in args.quantize:
        if quantize == "none":
            chosen.append((fast, {"quantize": "none"}))
            if fast != "float32":
                chosen.append(("float32 (no fast bf16)", {"quantize": "none", "dtype": torch.float32}))
        else:
            chosen.append(({"head": f"int8 head, {fast}", "int8": "int8"}[quantize], {"quantize": quantize}))
    return chosen


def bench_engine(args, label: str, options: dict) -> tuple[list[dict], str]:
    """The rounds of one engine, and its settings."""
    from trainer.serve.batching import BatchedChat

    chat = BatchedChat.load(args.model, args.template, max_batch=max(args.users), **options)
    log(f"serving: {label}: {args.model} ({chat.settings}), users {args.users}, {args.new_tokens} new tokens each")
    run_round(chat, 1, 8)  # warm-up: first-call allocations and oneDNN kernels
    rounds = []
    for users in args.users:
        log(f"serving: {label}: {users} concurrent users")
        rounds.append({"engine": label, **run_round(chat, users, args.new_tokens)})
    chat.close()
    return rounds, chat.settings


def bench_serving(args) -> dict:
    rounds, notes, settings = [], [], {}
    for label, options in engines(args):
        engine_rounds, settings[label] = bench_engine(args, label, options)
        rounds += engine_rounds
    table = []
    for r in rounds:
        one = next((o["aggregate_tokens_per_s"] for o in rounds if o["engine"] == r["engine"] and o["users"] == 1), None)
        table.append({
            "engine": r["engine"], "users": r["users"], "aggregate tok/s": r["aggregate_tokens_per_s"],
            "vs 1 user": r["aggregate_tokens_per_s"] / one if one else None,
            "tok/s per user": r["per_user_tokens_per_s"], "TTFT p50 (s)": r["ttft_p50_s"], "TTFT p95 (s)": r["ttft_p95_s"],
            "wall (s)": r["seconds"], "batches": " ".join(map(str, r["batch_sizes"])), "errors": len(r["errors"]),
        })
    notes.append(f"Model {args.model}; each user streams one answer of {args.new_tokens} greedy tokens (EOS ignored) to a "
                 "different question from data/sample.jsonl, all users starting together. Engines: "
                 + "; ".join(f"{label} = {s}" for label, s in settings.items()) + ".")
    for label in settings:
        one = next((r for r in rounds if r["engine"] == label and r["users"] == 1), None)
        at8 = next((r for r in rounds if r["engine"] == label and r["users"] == 8), None)
        if at8 and one:
            speedup = at8["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"]
            notes.append(f"{label} at 8 users: aggregate {speedup:.1f}x one user, first token p95 {at8['ttft_p95_s']:.2f} s.")
    return {"model": args.model, "settings": settings, "new_tokens": args.new_tokens, "rounds": rounds,
            "notes": notes, "table": table}
