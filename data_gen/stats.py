"""Statistics of an Alpaca dataset: counts, duplicates, lengths, top words; stats.json and PNG plots.

    python -m data_gen stats ../shared/data/GenMedGPT-5k-id.json --out stats/
    python -m data_gen stats data/sample.jsonl --out stats/ --tokenizer smollm2-135m --top_words 20

Several files are read as one dataset (their records concatenated, as a merge would); each is listed
under "sources". Files are read and validated by trainer.records.load_records (a bad record stops the
run, exit 2; --skip_invalid counts and skips it). The numbers follow data/README.md: lengths in
characters (Python len), median by `statistics.median`, mean rounded to one decimal, p95 by nearest
rank; duplicates are extra copies beyond the first, by exact string equality. Near duplicates are the
records data_gen.rouge.RougeDedup would remove (ROUGE-L F >= threshold on instruction + "\\n" + input,
first occurrence kept). Token lengths need --tokenizer (an embedded or the shipped model's name, a model
folder with a tokenizer.json, or a Hub id) and count the field's text alone, without special tokens; the
tokenizer is read with the `tokenizers` library, so stats never imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

from data_gen.rouge import RougeDedup, tokenize
from trainer.model_names import EMBEDDED, SHIPPED, ModelError, adapter_base, is_adapter, locate
from trainer.records import FIELDS, DataError, load_records, near_dup_key

# Function words that would otherwise fill the top-words chart (Indonesian, then English).
STOPWORDS = frozenset(
    """
    yang dan di ke dari untuk dengan ini itu saya anda aku kamu adalah akan ada tidak juga atau pada
    dalam karena jika bisa dapat sudah telah sangat lebih harus perlu kita kami mereka ia dia apa
    apakah bagaimana seperti saat sejak agar oleh atas bahwa hal para lagi masih hanya setelah
    sebelum beberapa banyak sering ya tapi tetapi namun mungkin selain sebagai secara
    tersebut begitu sekali jadi maka pun nya akhir akhirnya
    the a an and or of to in on for with is are was were be been being i you it that this have has
    had my your me we do does did what some can also may as at by from not but so if there any which
    will would should could about am its into out up very these those they them he she his her our
    """.split()
)


# ---------------------------------------------------------------------------------------------- numbers


def nearest_rank(sorted_values: list[float], q: float):
    """The nearest-rank percentile: the smallest value with at least q of the data at or below it."""
    return sorted_values[max(math.ceil(q * len(sorted_values)), 1) - 1]


def summarize(values: list[int]) -> dict | None:
    if not values:
        return None
    s = sorted(values)
    return {
        "n": len(s), "min": s[0], "median": statistics.median(s), "mean": round(statistics.fmean(s), 1),
        "p95": nearest_rank(s, 0.95), "max": s[-1],
    }


def length_table(lengths: dict[str, list[int]]) -> dict:
    return {name: summarize(values) for name, values in lengths.items()}


def field_lengths(records: list[dict], measure) -> dict[str, list[int]]:
    """Lengths per field; `input_nonempty` counts only the records that have an input."""
    out = {f: measure([r[f] for r in records]) for f in FIELDS}
    out["input_nonempty"] = [n for r, n in zip(records, out["input"]) if r["input"]]
    return out


def collect_lengths(records: list[dict], tokenizer=None) -> dict[str, dict[str, list[int]]]:
    """{"chars": per-field lengths, "tokens": the same in tokens (only with a tokenizer)}."""
    lengths = {"chars": field_lengths(records, lambda texts: [len(t) for t in texts])}
    if tokenizer is not None:
        lengths["tokens"] = field_lengths(
            records, lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        )
    return lengths


def load_tokenizer(name: str):
    """A model's fast tokenizer (its tokenizer.json) as a `tokenizers.Tokenizer`: the same ids as transformers'
    tokenizer, without importing torch. `name`: an embedded base (converted first, in a child process, if it
    is not yet), the shipped model (its base's tokenizer), a model folder, or a Hub id (online)."""
    from tokenizers import Tokenizer

    path = Path(locate(name))
    if name in EMBEDDED and not (path / "tokenizer.json").exists():
        # Converting needs torch; a child process keeps it out of this one.
        done = subprocess.run([sys.executable, "-m", "trainer.models", "prepare", name], stdout=subprocess.DEVNULL)
        if done.returncode:
            raise ModelError(f"converting {name} failed (above); `python -m trainer.models prepare {name}` retries it.")
    if not path.is_dir():
        try:
            return Tokenizer.from_pretrained(name)
        except Exception as e:  # offline, or not on the Hub
            raise ModelError(f"no tokenizer for {name!r} ({e}); give a model folder or one of {', '.join(EMBEDDED)}.") from None
    if (path / "tokenizer.json").exists():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if is_adapter(str(path)):  # an adapter without a tokenizer of its own (the shipped model): its base's
        return load_tokenizer(adapter_base(str(path)))
    raise ModelError(f"{path} has no tokenizer.json (a fast tokenizer); save one there with transformers: "
                     f"`AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')`.")


def top_words(texts: list[str], k: int) -> list[tuple[str, int]]:
    counts = Counter(t for text in texts for t in tokenize(text) if t not in STOPWORDS)
    return counts.most_common(k)


def compute_stats(
    records: list[dict], tokenizer=None, near_dup_threshold: float = 0.7, top_k: int = 30, lengths: dict | None = None
) -> dict:
    lengths = lengths or collect_lengths(records, tokenizer)
    n = len(records)
    instructions = Counter(r["instruction"] for r in records)
    pairs = Counter((r["instruction"], r["input"]) for r in records)
    with_input = sum(1 for r in records if r["input"])
    near = None
    if near_dup_threshold > 0:
        dedup = RougeDedup(near_dup_threshold)
        kept = sum(dedup.add(near_dup_key(r)) for r in records)
        near = {"threshold": near_dup_threshold, "key": "instruction + \\n + input", "removed": n - kept}
    top_instruction, top_count = instructions.most_common(1)[0]
    stats = {
        "records": n,
        "distinct_instructions": len(instructions),
        "most_common_instruction": {"text": top_instruction, "count": top_count},
        "with_input": with_input,
        "with_input_share": with_input / n,
        "exact_duplicate_records": n - len({(r["instruction"], r["input"], r["output"]) for r in records}),
        "exact_duplicate_pairs": sum(c - 1 for c in pairs.values() if c > 1),
        "exact_duplicate_pair_groups": sum(1 for c in pairs.values() if c > 1),
        "near_duplicates": near,
        "chars": length_table(lengths["chars"]),
        "tokens": length_table(lengths["tokens"]) if "tokens" in lengths else None,
        "top_words": {f: top_words([r[f] for r in records], top_k) for f in ("input", "output")},
    }
    return stats


# ------------------------------------------------------------------------------------------------ plots


def write_plots(stats: dict, lengths: dict[str, dict[str, list[int]]], out_dir: str) -> list[str]:
    """Length histograms (characters, and tokens if counted) and the top-words bars; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for unit, per_field in lengths.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, f in zip(axes, FIELDS):
            values = per_field[f]
            ax.hist(values, bins=min(50, max(len(set(values)), 1)), color="#4c72b0")
            ax.set_title(f"{f} ({unit})")
            ax.set_xlabel(unit)
            ax.set_ylabel("records")
        fig.suptitle(f"Length in {unit} (n = {stats['records']:,})")
        fig.tight_layout()
        name = f"lengths_{unit}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        written.append(name)
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.28 * len(stats["top_words"]["output"]) + 1.5)))
    for ax, f in zip(axes, ("input", "output")):
        words = stats["top_words"][f][::-1]
        ax.barh([w for w, _ in words], [c for _, c in words], color="#55a868")
        ax.set_title(f"top words in {f}")
        ax.set_xlabel("occurrences")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "top_words.png"), dpi=100)
    plt.close(fig)
    written.append("top_words.png")
    return written


# -------------------------------------------------------------------------------------------------- CLI


def summary_lines(stats: dict) -> list[str]:
    near = stats["near_duplicates"]
    lines = [
        f"records: {stats['records']:,}",
        f"distinct instructions: {stats['distinct_instructions']:,} "
        f"(most frequent: {stats['most_common_instruction']['count']:,}x)",
        f"with input: {stats['with_input']:,} ({100 * stats['with_input_share']:.1f}%)",
        f"exact duplicate records (extra copies): {stats['exact_duplicate_records']:,}",
        f"exact duplicate (instruction, input) pairs (extra copies): {stats['exact_duplicate_pairs']:,} "
        f"in {stats['exact_duplicate_pair_groups']:,} groups",
        f"near duplicates (ROUGE-L >= {near['threshold']} on instruction + input, would be removed): {near['removed']:,}"
        if near else "near duplicates: not computed (--near_dup_threshold 0)",
    ]
    for unit in ("chars", "tokens"):
        table = stats[unit]
        if not table:
            continue
        lines += ["", f"| {unit} | min | median | mean | p95 | max |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in table.items():
            if s:
                lines.append(f"| {name} | {s['min']} | {s['median']:g} | {s['mean']} | {s['p95']} | {s['max']} |")
    for f, words in stats["top_words"].items():
        lines.append(f"\ntop words in {f}: " + ", ".join(f"{w} ({c})" for w, c in words[:10]))
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_gen stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="Alpaca JSON array or JSON Lines files (read as one dataset)")
    parser.add_argument("--output_dir", "--out", dest="output_dir", required=True, help="folder for stats.json and the PNG plots")
    parser.add_argument("--tokenizer", help=f"{', '.join([*EMBEDDED, *SHIPPED])}, a model folder or a Hub id: adds token lengths "
                        "(default: none)")
    parser.add_argument("--near_dup_threshold", type=float, default=0.7, help="ROUGE-L F for near duplicates (0: skip)")
    parser.add_argument("--top_words", type=int, default=30, help="how many top words to keep per field")
    parser.add_argument("--skip_invalid", action="store_true", help="skip (and count) invalid records instead of stopping")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.near_dup_threshold <= 1:
        parser.error(f"--near_dup_threshold {args.near_dup_threshold}: give a ROUGE-L F in [0, 1] (0 skips).")
    if args.top_words < 1:
        parser.error("--top_words must be at least 1.")
    try:
        records, sources = [], []
        for path in args.files:
            loaded = load_records(path, args.skip_invalid)
            records += loaded.records
            sources.append({"path": path, "records": len(loaded.records), "skipped": len(loaded.skipped)})
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokenizer = None
    if args.tokenizer:
        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except ModelError as e:
            print(f"error: --tokenizer {args.tokenizer}: {e}", file=sys.stderr)
            return 2
    lengths = collect_lengths(records, tokenizer)
    stats = compute_stats(records, tokenizer, args.near_dup_threshold, args.top_words, lengths)
    stats = {"sources": sources, "tokenizer": args.tokenizer, **stats}
    os.makedirs(args.output_dir, exist_ok=True)
    stats["plots"] = write_plots(stats, lengths, args.output_dir)
    with open(os.path.join(args.output_dir, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print("\n".join(summary_lines(stats)))
    print(f"\nwrote {os.path.join(args.output_dir, 'stats.json')} and {', '.join(stats['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
