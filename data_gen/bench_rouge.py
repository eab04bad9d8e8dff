"""Time the ROUGE-L near-duplicate filter (data_gen/rouge.py) against a brute-force scan.

    python -m data_gen.bench_rouge --n 50000                    # ~1-2 min on 2 CPU cores
    python -m data_gen.bench_rouge --n 5000 --brute_n 1000 --threshold 0.7

Texts: GenMedGPT-5k-id inputs and outputs and chatdoctor5k inputs and outputs (about 21,000 real
texts), then, to reach --n, synthetic recombinations of 1-4 real sentences of one language, drawn
with a fixed seed. Prints a markdown table. The brute-force baseline (every candidate scored
against every kept text, as stanford_alpaca does) runs on --brute_n texts, once with this module's
bit-parallel LCS and once with rouge_score (if installed); its time per scored pair times the pairs
a brute force would score at --n gives the extrapolated naive time.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time

from data_gen.rouge import RougeDedup, rouge_l, tokenize
from trainer.records import DataError, load_records

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
DEFAULT_FILES = [os.path.join(DATA_DIR, "GenMedGPT-5k-id.json"), os.path.join(DATA_DIR, "chatdoctor5k.json")]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def build_texts(paths: list[str], n: int, seed: int = 0) -> list[str]:
    """Real inputs and outputs first (file order), then recombined sentences, shuffled together."""
    rng = random.Random(seed)
    real, pools = [], []
    for path in paths:
        records = load_records(path).records
        texts = [r[k] for r in records for k in ("input", "output") if r[k].strip()]
        real += texts
        pools.append([s for t in texts for s in _SENTENCE_END.split(t) if s.strip()])
    texts = real[:n]
    while len(texts) < n:
        pool = rng.choice(pools)
        texts.append(" ".join(rng.choice(pool) for _ in range(rng.randint(1, 4))))
    rng.shuffle(texts)
    return texts


def run_fast(texts: list[str], threshold: float) -> dict:
    dedup = RougeDedup(threshold)
    start = time.perf_counter()
    kept = sum(dedup.add(t) for t in texts)
    seconds = time.perf_counter() - start
    return {"n": len(texts), "seconds": seconds, "kept": kept, "lcs": dedup.lcs_computations, "pairs": dedup.pairs}


def run_brute(texts: list[str], threshold: float, scorer: str) -> dict:
    """Score every candidate against every kept text (stanford_alpaca's loop, in one process)."""
    if scorer == "rouge_score":
        from rouge_score import rouge_scorer

        rs = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        score = lambda a, b: rs.score(b, a)["rougeL"].fmeasure  # noqa: E731 (raw texts, its own tokenizer)
        items = texts
    else:
        score = rouge_l
        items = [tokenize(t) for t in texts]
    kept, pairs = [], 0
    start = time.perf_counter()
    for item in items:
        pairs += len(kept)
        if all(score(item, k) < threshold for k in kept):
            kept.append(item)
    seconds = time.perf_counter() - start
    return {"n": len(texts), "seconds": seconds, "kept": len(kept), "lcs": pairs, "pairs": pairs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50000, help="texts to add to the fast filter")
    parser.add_argument("--brute_n", type=int, default=2000, help="texts for the brute-force baseline (0: skip)")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--data", nargs="+", default=DEFAULT_FILES, help="Alpaca files the texts come from")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        texts = build_texts(args.data, max(args.n, args.brute_n), args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for n in sorted({min(args.brute_n, args.n), args.n} - {0}):
        rows.append(("RougeDedup (index + bounds)", run_fast(texts[:n], args.threshold)))
    fast_at_n = rows[-1][1]
    extrapolated = []
    if args.brute_n:
        for scorer in ("bit-parallel", "rouge_score"):
            if scorer == "rouge_score":
                try:
                    import rouge_score  # noqa: F401
                except ImportError:
                    continue
            r = run_brute(texts[: args.brute_n], args.threshold, scorer)
            rows.append((f"brute force ({scorer} LCS)", r))
            per_pair = r["seconds"] / max(r["pairs"], 1)
            extrapolated.append((scorer, per_pair, per_pair * fast_at_n["pairs"]))

    print(f"threshold {args.threshold}; texts: {len(texts)} built ({args.n} used)\n")
    print("| method | n | seconds | texts/s | kept | rejected | LCS computed | pairs (brute force) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['n']:,} | {r['seconds']:.2f} | {r['n'] / r['seconds']:,.0f} | {r['kept']:,} | "
            f"{r['n'] - r['kept']:,} | {r['lcs']:,} | {r['pairs']:,} |"
        )
    for scorer, per_pair, total in extrapolated:
        print(
            f"\nbrute force with {scorer} LCS: {per_pair * 1e6:.1f} us/pair -> "
            f"{fast_at_n['pairs']:,} pairs at n={args.n:,} = {total:,.0f} s ({total / 3600:.1f} h, one process) "
            f"vs {fast_at_n['seconds']:.1f} s here ({total / fast_at_n['seconds']:,.0f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
