"""Data preparation throughput: tokenization of --data_path and ROUGE-L near-duplicate filtering.

    python -m trainer.bench --part data
"""

from __future__ import annotations

import time

from trainer.bench.report import log


def bench_data(args) -> dict:
    from trainer.batches import tokenize_records
    from trainer.models import load_tokenizer
    from trainer.prompts import DEFAULT_TEMPLATE, get_template
    from trainer.records import load_records

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
