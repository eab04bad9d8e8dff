"""Convert, map and merge data files (Alpaca or chat conversations), with exact and ROUGE-L near-duplicate
removal; turn the page's ratings into preference records.

    python -m data_gen convert GenMedGPT-5k-id.json --out genmedgpt.json --to json      # JSON Lines -> array
    python -m data_gen convert genmedgpt.json --out genmedgpt.jsonl                     # array -> JSON Lines
    python -m data_gen convert a.jsonl b.json --out merged.jsonl                        # merge + dedup
    python -m data_gen convert qa.json --out qa.jsonl --instruction "..."               # map variant keys
    python -m data_gen convert genmedgpt.jsonl --out chat.jsonl --to messages           # Alpaca -> OpenAI messages
    python -m data_gen convert chat.jsonl --out sharegpt.jsonl --to sharegpt            # -> ShareGPT conversations
    python -m data_gen convert chat.jsonl --out alpaca.jsonl --to alpaca                # single exchanges -> Alpaca
    python -m data_gen convert feedback.jsonl --out kto.jsonl --to kto                  # the page's ratings -> KTO
    python -m data_gen convert feedback.jsonl --out dpo.jsonl --to dpo                  # corrected dislikes -> DPO

`--to json|jsonl` changes only the file syntax (records keep the format they were read in); `--to
alpaca|messages|sharegpt|kto|dpo` sets the record format, the syntax then comes from --out's extension.
Alpaca -> conversation follows trainer/prompts.py: an empty input gives one user turn, an input gives a
system turn (the instruction) and a user turn (the input). Conversation -> Alpaca is the inverse and holds
one exchange only: a conversation with more turns stops the run naming it (--skip_invalid leaves it out,
counted). Ratings (trainer/preferences.py): kto keeps every rated answer (label: liked) and adds a
dislike's correction as a good answer; dpo pairs a dislike's correction (chosen) with its answer
(rejected), and counts the ratings without such a pair as left out.

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
from trainer.preferences import dpo_record, kto_records, rating_problem
from trainer.records import (
    DOCTOR_INSTRUCTION,
    FORMATS,
    DataError,
    LoadedData,
    alpaca_messages,
    is_conversation,
    load_records,
    near_dup_key,
    read_objects,
    report_problems,
    sharegpt_turns,
    validate_objects,
)

# The GenMedGPT instruction, for mapped records that carry none (patient/doctor pairs): the
# Indonesian one, the shape the project trains on. Pass --instruction for English data.
DEFAULT_INSTRUCTION = DOCTOR_INSTRUCTION["id"]

# Variant keys, in order of preference, per Alpaca field.
KEY_VARIANTS = {
    "instruction": ("instruction", "question", "query", "prompt"),
    "input": ("input", "patient", "context"),
    "output": ("output", "answer", "response", "doctor", "answer_icliniq"),
}
SYNTAXES = ("jsonl", "json")  # --to values that change only the file syntax
PREFERENCES = ("kto", "dpo")  # --to values that turn ratings into preference records


@dataclass
class Report:
    """What happened to every input record: kept, or counted under a reason."""

    read: Counter = field(default_factory=Counter)  # path -> records in the file (valid + skipped)
    mapped: Counter = field(default_factory=Counter)  # "question/answer -> instruction/output" -> n
    skipped: Counter = field(default_factory=Counter)  # invalid record reason -> n (--skip_invalid)
    converted: Counter = field(default_factory=Counter)  # "alpaca -> messages" -> n
    left_out: Counter = field(default_factory=Counter)  # valid, but not convertible to --to -> n
    removed: Counter = field(default_factory=Counter)  # dedup reason -> n
    examples: list[str] = field(default_factory=list)  # a few removed near duplicates, for the log
    dedup: str = "off"
    written: int = 0
    preference: str | None = None  # "kto" or "dpo": what the ratings were turned into

    def lines(self) -> list[str]:
        out = [f"read {path}: {n} record(s)" for path, n in self.read.items()]
        out += [f"mapped {n} record(s): {how}" for how, n in self.mapped.most_common()]
        out += [f"skipped {n} invalid record(s): {why}" for why, n in self.skipped.most_common()]
        out += [f"converted {n} record(s): {how}" for how, n in self.converted.most_common()]
        out += [f"left out {n} record(s): {why}" for why, n in self.left_out.most_common()]
        out.append(f"dedup: {self.dedup}")
        out += [f"removed {n} record(s): {why}" for why, n in self.removed.most_common()]
        out += [f"  e.g. {e}" for e in self.examples]
        total = sum(self.read.values())
        counts = f"{sum(self.skipped.values())} skipped, {sum(self.removed.values())} removed"
        if self.left_out:
            counts += f", {sum(self.left_out.values())} left out"
        if self.preference:
            out.append(f"wrote {self.written} {self.preference} record(s) from {total} rating(s) ({counts})")
        else:
            out.append(f"wrote {self.written} of {total} record(s) ({counts})")
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

    loaded = load_records(path, skip_invalid, transform=transform, conversations=True)
    report.mapped.update(how_mapped)
    report.read[path] += len(loaded.records) + len(loaded.skipped)
    for problem in loaded.skipped:
        report.skipped[problem.reason.split(" (")[0]] += 1  # "invalid JSON (..., column 7)" -> "invalid JSON"
    return loaded


def load_ratings(path: str, skip_invalid: bool, report: Report) -> LoadedData:
    """The page's ratings in `path`, validated by trainer.preferences.rating_problem; counts into `report`."""
    raw = read_objects(path)
    ratings, locations, problems = validate_objects(raw, lambda obj: (obj, rating_problem(obj)))
    if not ratings and not problems:
        raise DataError(f"{path} holds no ratings: expected the page's feedback records (JSON Lines).")
    report_problems(path, problems, len(raw), skip_invalid)
    report.read[path] += len(raw)
    for problem in problems:
        report.skipped[problem.reason.split(" (")[0]] += 1
    return LoadedData(path, ratings, problems, "ratings", locations)


# ------------------------------------------------------------------------------------------- formats


def alpaca_record(record: dict) -> dict | None:
    """An Alpaca record from a record of either kind; None for a conversation of more than one exchange."""
    if not is_conversation(record):
        return record
    messages = record["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    if len(turns) != 2:
        return None
    user, answer = (m["content"] for m in turns)
    return {"instruction": system or user, "input": user if system else "", "output": answer}


def conversation_record(record: dict) -> dict:
    return record if is_conversation(record) else {"messages": alpaca_messages(record)}


def to_format(labelled: list[tuple[str, dict, str]], target: str, skip_invalid: bool, report: Report) -> list[tuple[str, dict, str]]:
    """(label, record, where) with each record as `target` asks: an Alpaca dict, or {"messages": ...} for
    messages and sharegpt (written as ShareGPT by write_records). Multi-exchange conversations cannot become
    Alpaca records: they stop the run, named, unless skip_invalid (then counted)."""
    out, multi = [], []
    for label, record, where in labelled:
        new = alpaca_record(record) if target == "alpaca" else conversation_record(record)
        if new is None:
            multi.append((where, record))
            continue
        if new is not record:
            report.converted[f"{'messages' if is_conversation(record) else 'alpaca'} -> {target}"] += 1
        out.append((label, new, where))
    if multi and not skip_invalid:
        listed = "\n".join(f"  {where}: {sum(m['role'] == 'assistant' for m in r['messages'])} exchanges"
                           for where, r in multi[:20])
        raise DataError(
            f"{len(multi)} conversation(s) hold more than one exchange, which an Alpaca record cannot:\n{listed}"
            + (f"\n  ... and {len(multi) - 20} more" if len(multi) > 20 else "")
            + "\nKeep them as conversations (--to messages; trainer.train reads those), or pass --skip_invalid to "
            "leave them out (counted)."
        )
    if multi:
        report.left_out["conversation of more than one exchange (an Alpaca record holds one)"] += len(multi)
    return out


def preference_records(ratings: list[dict], method: str, report: Report) -> list[dict]:
    """KTO or DPO records from ratings (trainer/preferences.py); ratings without a DPO pair are counted."""
    if method == "kto":
        return [r for rating in ratings for r in kto_records(rating)]
    out = []
    for rating in ratings:
        pair = dpo_record(rating)
        if pair is None:
            why = "a like" if rating["rating"] == "like" else "a dislike without a correction"
            report.left_out[f"{why}: no rejected/chosen pair for dpo"] += 1
        else:
            out.append(pair)
    return out


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
        chat = is_conversation(r)
        if chat:
            key = tuple((m["role"], normalize(m["content"])) for m in r["messages"])
        else:
            key = (normalize(r["instruction"]), normalize(r["input"]), normalize(r["output"]))
        if key in seen:
            what = "the same turns" if chat else "instruction, input, output"
            report.removed[f"exact duplicate ({what}; whitespace-normalized)"] += 1
            continue
        seen[key] = label
        if near is not None:
            text = near_dup_key(r)
            if not near.add(text):
                on = "system + user turns" if chat else "instruction + input"
                report.removed[f"near duplicate (ROUGE-L >= {near_dup_threshold} on {on})"] += 1
                if len(report.examples) < 5:
                    score, j = near.best(text)
                    report.examples.append(f"{label} ~ {kept_labels[j]} (ROUGE-L {score:.2f})")
                continue
        kept.append(r)
        kept_labels.append(label)
    return kept


# --------------------------------------------------------------------------------------------- write


def write_records(records: list[dict], path: str, fmt: str, record_format: str | None = None) -> None:
    """JSON array (fmt "json") or JSON Lines ("jsonl"), UTF-8, atomically: temp file, then rename.
    Conversations are written as ShareGPT `conversations` when record_format is "sharegpt"."""
    if record_format == "sharegpt":
        records = [{"conversations": sharegpt_turns(r["messages"])} if is_conversation(r) else r for r in records]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "json":
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_atomic(Path(path), text)


def output_format(path: str, to: str | None) -> str:
    """The file syntax: --to json|jsonl, else --out's extension."""
    if to in SYNTAXES:
        return to
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return ext[1:]
    if to:
        raise DataError(f"--out {path}: cannot tell JSON from JSON Lines; name the file .jsonl or .json.")
    raise DataError(f"--out {path}: cannot tell the format from the extension; pass --to jsonl or --to json.")


# ----------------------------------------------------------------------------------------------- CLI


def convert(
    inputs: list[str], out: str, to: str | None = None, dedup_records: bool | None = None,
    near_dup_threshold: float = 0.7, skip_invalid: bool = False, instruction: str = DEFAULT_INSTRUCTION,
) -> Report:
    """Read (and map) every input, convert to --to's record format, merge in order, dedup if asked (default:
    when merging), write. Ratings (--to kto|dpo) are turned into preference records, never deduplicated."""
    fmt = output_format(out, to)
    report = Report()
    if to in PREFERENCES:
        report.preference = to
        ratings = [r for path in inputs for r in load_ratings(path, skip_invalid, report).records]
        records = preference_records(ratings, to, report)
        if not records:
            raise DataError(f"Nothing to write to {out}: no rating gives a {to} record.")
        write_records(records, out, fmt)
        report.written = len(records)
        return report
    labelled, formats = [], {}
    for path in inputs:
        loaded = load_file(path, skip_invalid, report, instruction)
        formats[path] = loaded.format
        labelled += [(f"{path} #{i}", r, f"{path} {where}") for i, (r, where) in enumerate(zip(loaded.records, loaded.locations))]
    target = to if to not in (None, *SYNTAXES) else _common_format(formats)
    labelled = to_format(labelled, target, skip_invalid, report)
    if dedup_records is None:
        dedup_records = len(inputs) > 1
    if dedup_records:
        near = f"near duplicates at ROUGE-L >= {near_dup_threshold}" if near_dup_threshold > 0 else "near duplicates off"
        report.dedup = f"exact duplicates, {near}"
        records = dedup([(label, r) for label, r, _ in labelled], near_dup_threshold, report)
    else:
        records = [r for _, r, _ in labelled]
    if not records:
        raise DataError(f"Nothing to write to {out}: no record is left.")
    write_records(records, out, fmt, target)
    report.written = len(records)
    return report


def _common_format(formats: dict[str, str]) -> str:
    """The record format all inputs share: without --to, records keep their format."""
    if len(set(formats.values())) > 1:
        held = ", ".join(f"{path}: {fmt}" for path, fmt in formats.items())
        raise DataError(f"The inputs hold different formats ({held}); pass --to alpaca, --to messages or --to sharegpt "
                        "to write one.")
    return next(iter(formats.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_gen convert",
        description="Convert JSON <-> JSON Lines and Alpaca <-> chat conversations, map ChatDoctor-style keys, merge "
        "files with dedup, turn the page's ratings into KTO/DPO records.",
    )
    parser.add_argument("inputs", nargs="+", help="JSON array or JSON Lines files (Alpaca, messages or ShareGPT; "
                        "ratings for --to kto|dpo), merged in this order")
    parser.add_argument("--out", required=True, help="output file (written atomically)")
    parser.add_argument(
        "--to", choices=[*SYNTAXES, *FORMATS, *PREFERENCES],
        help="jsonl or json: the file syntax only (records keep their format); alpaca, messages or sharegpt: the "
             "record format; kto or dpo: preference records from ratings (default: the inputs' format, the syntax "
             "from --out's extension)",
    )
    parser.add_argument(
        "--dedup", action=argparse.BooleanOptionalAction, default=None,
        help="remove exact and near duplicates (default: on when merging several inputs, off for one)",
    )
    parser.add_argument(
        "--near_dup_threshold", type=float, default=0.7,
        help="ROUGE-L F on instruction + input at or above which a record is a near duplicate (0: off)",
    )
    parser.add_argument("--no_near_dedup", action="store_true", help="remove exact duplicates only")
    parser.add_argument("--skip_invalid", action="store_true", help="drop (and count) invalid records, and with --to "
                        "alpaca the conversations of more than one exchange, instead of stopping")
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
