"""Concurrent chats: N users streaming answers at once from the demo's serving path.

    python -m trainer.bench --part serving [--model alpaca-medis-270m] [--users 1 4 8 16] [--new_tokens 64]

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

from trainer.bench.report import log

QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "sample.jsonl"


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


def bench_serving(args) -> dict:
    from trainer.serve.batching import BatchedChat

    chat = BatchedChat.load(args.model, args.template, max_batch=max(args.users))
    log(f"serving: {args.model} ({chat.settings}), users {args.users}, {args.new_tokens} new tokens each")
    run_round(chat, 1, 8)  # warm-up: first-call allocations and oneDNN kernels
    rounds = []
    for users in args.users:
        log(f"serving: {users} concurrent users")
        rounds.append(run_round(chat, users, args.new_tokens))
    chat.close()
    one = rounds[0]["aggregate_tokens_per_s"] if rounds and rounds[0]["users"] == 1 else None
    table = [{
        "users": r["users"], "aggregate tok/s": r["aggregate_tokens_per_s"],
        "vs 1 user": r["aggregate_tokens_per_s"] / one if one else None,
        "tok/s per user": r["per_user_tokens_per_s"], "TTFT p50 (s)": r["ttft_p50_s"], "TTFT p95 (s)": r["ttft_p95_s"],
        "wall (s)": r["seconds"], "batches": " ".join(map(str, r["batch_sizes"])), "errors": len(r["errors"]),
    } for r in rounds]
    notes = [f"Model {args.model} ({chat.settings}); each user streams one answer of {args.new_tokens} greedy tokens "
             "(EOS ignored) to a different question from data/sample.jsonl, all users starting together."]
    at8 = next((r for r in rounds if r["users"] == 8), None)
    if at8 and one:
        speedup = at8["aggregate_tokens_per_s"] / one
        notes.append(f"Targets at 8 users: aggregate >= 3x one user {'met' if speedup >= 3 else 'missed'} ({speedup:.1f}x); "
                     f"first token p95 < 3 s {'met' if at8['ttft_p95_s'] < 3 else 'missed'} ({at8['ttft_p95_s']:.2f} s).")
    return {"model": args.model, "settings": chat.settings, "new_tokens": args.new_tokens, "rounds": rounds,
            "notes": notes, "table": table}
