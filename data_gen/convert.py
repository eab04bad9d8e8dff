"""Convert, map and merge Alpaca data files, with exact and ROUGE-L near-duplicate removal.

    python -m data_gen convert GenMedGPT-5k-id.json --out genmedgpt.json --to json      # JSON Lines -> array
    python -m data_gen convert genmedgpt.json --out genmedgpt.jsonl                     # array -> JSON Lines
    python -m data_gen convert a.jsonl b.json --out merged.jsonl                        # merge + dedup
    python -m data_gen convert qa.json --out qa.jsonl --instruction "..."               # map variant keys

Every input is read and validated by trainer.records.load_records (a bad record stops the run, exit
2, naming it; --skip_invalid drops and counts them). Records in ChatDoctor-style variants
(`question`/`answer`, `patient`/`doctor`, iCliniq's `answer_icliniq`, ...) are mapped to
instruction/input/output first. Merging (more than one input, or --dedup) removes, first
occurrence wins:
  * exact duplicates: same instruction, input and output after whitespace normalization;
  * near duplicates: ROUGE-L F >= --near_dup_threshold (default 0.7, stanford_alpaca's) against a
    kept record, on instruction + "\\n" + input. Never on the instruction alone: in GenMedGPT every
    record shares one instruction, so that key would keep a single record.
The output is written atomically (temporary file + rename): a failed run leaves no partial file.
Every removed or skipped record is counted in the printed report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_gen.output import write_atomic
from data_gen.rouge import RougeDedup
from trainer.records import DOCTOR_INSTRUCTION, DataError, LoadedData, load_records, near_dup_key

# The GenMedGPT instruction, for mapped records that carry none (patient/doctor pairs): the
# Indonesian one, the shape the project trains on. Pass --instruction for English data.
DEFAULT_INSTRUCTION = DOCTOR_INSTRUCTION["id"]

# Variant keys, in order of preference, per Alpaca field.
KEY_VARIANTS = {
    "instruction": ("instruction", "question", "query", "prompt"),
    "input": ("input", "patient", "context"),
    "output": ("output", "answer", "response", "doctor", "answer_icliniq"),
}


@dataclass
class Report:
    """What happened to every input record: kept, or counted under a reason."""

    read: Counter = field(default_factory=Counter)  # path -> records in the file (valid + skipped)
    mapped: Counter = field(default_factory=Counter)  # "question/answer -> instruction/output" -> n
    skipped: Counter = field(default_factory=Counter)  # invalid record reason -> n (--skip_invalid)
    removed: Counter = field(default_factory=Counter)  # dedup reason -> n
    examples: list[str] = field(default_factory=list)  # a few removed near duplicates, for the log
    dedup: str = "off"
    written: int = 0

    def lines(self) -> list[str]:
        out = [f"read {path}: {n} record(s)" for path, n in self.read.items()]
        out += [f"mapped {n} record(s): {how}" for how, n in self.mapped.most_common()]
        out += [f"skipped {n} invalid record(s): {why}" for why, n in self.skipped.most_common()]
        out.append(f"dedup: {self.dedup}")
        out += [f"removed {n} record(s): {why}" for why, n in self.removed.most_common()]
        out += [f"  e.g. {e}" for e in self.examples]
        total = sum(self.read.values())
        out.append(
            f"wrote {self.written} of {total} record(s) ({sum(self.skipped.values())} skipped, "
            f"{sum(self.removed.values())} removed)"
        )
        return out


# ---------------------------------------------------------------------------------------------- read


def map_record(obj: object, instruction: str = DEFAULT_INSTRUCTION) -> tuple[object, str | None]:
    """An Alpaca record from a ChatDoctor-style variant, and how it was mapped (None: left as is).

    Only records lacking `instruction` or `output` are touched; anything unmappable is returned
    unchanged, so validation names what is missing.
    """
    if not isinstance(obj, dict) or ("instruction" in obj and "output" in obj):
        return obj, None
    found = {f: next((k for k in keys if k in obj), None) for f, keys in KEY_VARIANTS.items()}
    if found["output"] is None or (found["instruction"] is None and found["input"] is None):
        return obj, None
    record = {f: obj[k] for f, k in found.items() if k is not None}
    sources = [k for k in found.values() if k is not None]
    targets = [f for f, k in found.items() if k is not None]
    if found["instruction"] is None:  # a patient's text and a doctor's answer: GenMedGPT's shape
        record["instruction"] = instruction
        sources.insert(0, "(--instruction)")
        targets.insert(0, "instruction")
    return record, f"{'/'.join(sources)} -> {'/'.join(targets)}"


def load_file(path: str, skip_invalid: bool, report: Report, instruction: str = DEFAULT_INSTRUCTION) -> LoadedData:
    """trainer.records.load_records, mapping variant keys on the way; counts into `report`."""
    how_mapped = Counter()

    def transform(obj):
        new, how = map_record(obj, instruction)
        if how:
            how_mapped[how] += 1
        return new

    loaded = load_records(path, skip_invalid, transform=transform)
    report.mapped.update(how_mapped)
    report.read[path] += len(loaded.records) + len(loaded.skipped)
    for problem in loaded.skipped:
        report.skipped[problem.reason.split(" (")[0]] += 1  # "invalid JSON (..., column 7)" -> "invalid JSON"
    return loaded


# ---------------------------------------------------------------------------------------------- dedup


def normalize(text: str) -> str:
    return " ".join(text.split())


def dedup(
    records: list[tuple[str, dict]], near_dup_threshold: float, report: Report
) -> list[dict]:
    """Drop exact and (if threshold > 0) near duplicates of earlier records; count them in `report`.

    `records` are (label, record) pairs; the label names a removed record in the examples.
    """
    seen: dict[tuple, str] = {}
    near = RougeDedup(near_dup_threshold) if near_dup_threshold > 0 else None
    kept, kept_labels = [], []
    for label, r in records:
        key = (normalize(r["instruction"]), normalize(r["input"]), normalize(r["output"]))
        if key in seen:
            report.removed["exact duplicate (instruction, input, output; whitespace-normalized)"] += 1
            continue
        seen[key] = label
        if near is not None:
            text = near_dup_key(r)
            if not near.add(text):
                report.removed[f"near duplicate (ROUGE-L >= {near_dup_threshold} on instruction + input)"] += 1
                if len(report.examples) < 5:
                    score, j = near.best(text)
                    report.examples.append(f"{label} ~ {kept_labels[j]} (ROUGE-L {score:.2f})")
                continue
        kept.append(r)
        kept_labels.append(label)
    return kept


# --------------------------------------------------------------------------------------------- write


def write_records(records: list[dict], path: str, fmt: str) -> None:
    """JSON array (fmt "json") or JSON Lines ("jsonl"), UTF-8, atomically: temp file, then rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "json":
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_atomic(Path(path), text)


def output_format(path: str, to: str | None) -> str:
    if to:
        return to
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return ext[1:]
    raise DataError(f"--out {path}: cannot tell the format from the extension; pass --to jsonl or --to json.")


# ----------------------------------------------------------------------------------------------- CLI


def convert(
    inputs: list[str], out: str, to: str | None = None, dedup_records: bool | None = None,
    near_dup_threshold: float = 0.7, skip_invalid: bool = False, instruction: str = DEFAULT_INSTRUCTION,
) -> Report:
    """Read (and map) every input, merge in order, dedup if asked (default: when merging), write."""
    fmt = output_format(out, to)
    report = Report()
    labelled = []
    for path in inputs:
        loaded = load_file(path, skip_invalid, report, instruction)
        labelled += [(f"{path} #{i}", r) for i, r in enumerate(loaded.records)]
    if dedup_records is None:
        dedup_records = len(inputs) > 1
    if dedup_records:
        near = f"near duplicates at ROUGE-L >= {near_dup_threshold}" if near_dup_threshold > 0 else "near duplicates off"
        report.dedup = f"exact duplicates, {near}"
        records = dedup(labelled, near_dup_threshold, report)
    else:
        records = [r for _, r in labelled]
    if not records:
        raise DataError(f"Nothing to write to {out}: no record is left.")
    write_records(records, out, fmt)
    report.written = len(records)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_gen convert",
        description="Convert JSON <-> JSON Lines, map ChatDoctor-style keys, merge files with dedup.",
    )
    parser.add_argument("inputs", nargs="+", help="Alpaca JSON array or JSON Lines files, merged in this order")
    parser.add_argument("--out", required=True, help="output file (written atomically)")
    parser.add_argument("--to", choices=["jsonl", "json"], help="output format (default: from --out's extension)")
    parser.add_argument(
        "--dedup", action=argparse.BooleanOptionalAction, default=None,
        help="remove exact and near duplicates (default: on when merging several inputs, off for one)",
    )
    parser.add_argument(
        "--near_dup_threshold", type=float, default=0.7,
        help="ROUGE-L F on instruction + input at or above which a record is a near duplicate (0: off)",
    )
    parser.add_argument("--no_near_dedup", action="store_true", help="remove exact duplicates only")
    parser.add_argument("--skip_invalid", action="store_true", help="drop (and count) invalid records instead of stopping")
    parser.add_argument(
        "--instruction", default=DEFAULT_INSTRUCTION,
        help="instruction for mapped records that have none (patient/doctor pairs); default: GenMedGPT's, Indonesian",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.near_dup_threshold <= 1:
        parser.error(f"--near_dup_threshold {args.near_dup_threshold}: give a ROUGE-L F in [0, 1] (0 disables).")
    threshold = 0.0 if args.no_near_dedup else args.near_dup_threshold
    try:
        report = convert(
            args.inputs, args.out, args.to, args.dedup, threshold, args.skip_invalid, args.instruction
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
