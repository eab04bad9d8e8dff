"""Training records: load, validate, split. Pure Python (no torch): data_gen imports this module.

    python -m trainer.records ../shared/data/GenMedGPT-5k-id.json     # validate a file, print counts

A file holds records of one of three formats, detected from its first record:
- alpaca:   {"instruction": "...", "input": "...", "output": "..."} (`input` optional, default "");
- messages: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]} (OpenAI);
- sharegpt: {"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}.
A conversation is an optional system turn, then user and assistant turns alternating, ending on an
assistant turn (trainer/prompts.py checks it). ShareGPT is read into OpenAI messages (prompts.SHAREGPT_ROLES),
so a loaded record is either an Alpaca dict or {"messages": [...]}. Files are a JSON array or JSON Lines
(GenMedGPT-5k-id.json is JSON Lines despite its name); a path that does not exist and looks like
`owner/name` is read as a Hub dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field

from trainer.prompts import SHAREGPT_ROLES, conversation_messages, conversation_shape, messages_for

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")
# The record formats, as messages name them to the user.
FORMATS = {
    "alpaca": "Alpaca records (instruction, input, output)",
    "messages": "OpenAI chat messages (`messages` of role/content turns)",
    "sharegpt": "ShareGPT conversations (`conversations` of from/value turns)",
}
MAX_LISTED_PROBLEMS = 20
SPLIT_SEED = 42  # the original notebook's train_test_split seed
VAL_SET_SIZE = 0.1  # the validation share training holds out by default

# The constant instruction of GenMedGPT-5k-id and of ChatDoctor's GenMedGPT-5k.
DOCTOR_INSTRUCTION = {
    "id": "Jika Anda seorang dokter, silakan menjawab pertanyaan medis berdasarkan deskripsi pasien.",
    "en": "If you are a doctor, please answer the medical questions based on the patient's description.",
}


class DataError(Exception):
    """A dataset problem the user must fix; the message says where and how."""


@dataclass
class Problem:
    where: str  # "line 7" (JSON Lines) or "record 7" (JSON array index, 0-based)
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class LoadedData:
    source: str
    records: list[dict]  # Alpaca dicts, or {"messages": [...]} conversations
    skipped: list[Problem] = field(default_factory=list)
    format: str = "alpaca"  # a key of FORMATS: what the file held (ShareGPT is loaded as messages)
    locations: list[str] = field(default_factory=list)  # where each record is in the file ("line 3")


def is_conversation(record: dict) -> bool:
    return "messages" in record


def alpaca_messages(record: dict) -> list[dict]:
    """An Alpaca record as the conversation it stands for: its prompt as trained (prompts.messages_for), then the
    output as the assistant's turn."""
    return [*messages_for(record), {"role": "assistant", "content": record["output"]}]


def sharegpt_turns(messages: list[dict]) -> list[dict]:
    """OpenAI messages as ShareGPT `conversations` turns (the inverse of loading)."""
    to_from = {role: name for name, role in SHAREGPT_ROLES.items()}
    return [{"from": to_from[m["role"]], "value": m["content"]} for m in messages]


# ---------------------------------------------------------------------------------------------- load


def load_records(path: str, skip_invalid: bool = False, transform=None, conversations: bool = False) -> LoadedData:
    """Read and validate the records of one format (detected); raise DataError naming every bad record
    unless skipping. Conversations only when the caller handles them (`conversations=True`); otherwise a
    conversation file stops with the command that converts it.

    `transform`, if given, maps each parsed object before validation (data_gen.convert uses it to
    turn ChatDoctor-style keys into Alpaca fields)."""
    raw = read_objects(path)
    if transform is not None:
        raw = [(where, obj if isinstance(obj, Problem) else transform(obj)) for where, obj in raw]
    fmt = file_format(path, raw)
    if fmt != "alpaca" and not conversations:
        raise DataError(
            f"{path} holds {FORMATS[fmt]}, but this command reads Alpaca records only. Convert single-exchange "
            f"conversations with `python -m data_gen convert {path} --out alpaca.jsonl --to alpaca` (trainer.train "
            "reads conversations as they are)."
        )
    validate = _validate if fmt == "alpaca" else lambda obj: _validate_conversation(obj, fmt)
    records, locations, problems = validate_objects(raw, validate)
    if not records and not problems:
        raise DataError(f"{path} holds no records: expected Alpaca records (instruction, input, output) or conversations.")
    if problems and not records and _looks_foreign(raw):
        keys = sorted({k for _, obj in raw if isinstance(obj, dict) for k in obj})
        raise DataError(
            f"{path} is not Alpaca data: its records have the fields {', '.join(keys) or '(none)'}, "
            "but each needs `instruction` and `output` (and optionally `input`), or a conversation in `messages` "
            "(OpenAI) or `conversations` (ShareGPT)."
        )
    report_problems(path, problems, len(raw), skip_invalid)
    return LoadedData(path, records, problems, fmt, locations)


def validate_objects(raw: list[tuple[str, object]], validate) -> tuple[list[dict], list[str], list[Problem]]:
    """(valid records, their locations, problems) of parsed objects; `validate(obj)` -> (record, reason)."""
    records, locations, problems = [], [], []
    for where, obj in raw:
        if isinstance(obj, Problem):
            problems.append(obj)
            continue
        record, reason = validate(obj)
        if reason:
            problems.append(Problem(where, reason))
        else:
            records.append(record)
            locations.append(where)
    return records, locations, problems


def report_problems(path: str, problems: list[Problem], total: int, skip_invalid: bool) -> None:
    """Raise DataError listing the problems (the first MAX_LISTED_PROBLEMS), or warn with their count when skipping."""
    if problems and not skip_invalid:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise DataError(
            f"{path}: {len(problems)} invalid record(s) of {total}:\n{listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix them, or pass --skip_invalid to train on the valid records only."
        )
    if problems:
        logger.warning("%s: skipped %d invalid record(s) of %d (--skip_invalid)", path, len(problems), total)


def read_objects(path: str) -> list[tuple[str, object]]:
    """(location, parsed object or Problem) per record of a file or Hub dataset, unvalidated."""
    if not os.path.exists(path) and re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        return _read_hub(path)
    return _read_file(path)


def record_format(obj: object) -> str | None:
    """The format a parsed record is written in, or None when it shows none."""
    if isinstance(obj, dict):
        if "messages" in obj:
            return "messages"
        if "conversations" in obj:
            return "sharegpt"
        if any(k in obj for k in FIELDS):
            return "alpaca"
    return None


def file_format(path: str, raw: list[tuple[str, object]]) -> str:
    """The format of the file's first record that shows one; a later record in another format stops the run
    (a file holds one format, so a stray record is a mistake worth seeing, not one to skip)."""
    first = None
    for where, obj in raw:
        fmt = record_format(obj)
        if fmt is None:
            continue
        if first is None:
            first = (where, fmt)
        elif fmt != first[1]:
            raise DataError(
                f"{path} mixes formats: {where} is one of {FORMATS[fmt]}, but the file holds {FORMATS[first[1]]} "
                f"(from its first record, {first[0]}). Keep one format per file: move the others to a file of "
                "their own (several files train together with --extra_data_path) or convert them with "
                "`python -m data_gen convert`."
            )
    return first[1] if first else "alpaca"


def _read_file(path: str, is_record=None) -> list[tuple[str, object]]:
    """(location, parsed object or Problem) per record of a JSON array or JSON Lines file. `is_record` tells
    whether a file's one JSON object is a record (default: Alpaca or a conversation), not some wrapper."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Pass --data_path a JSON or JSON Lines file of records.") from None
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror}.") from None
    text = _decode(path, data)
    stripped = text.strip()
    if not stripped:
        raise DataError(f"{path} is empty: expected a JSON array or JSON Lines of Alpaca records.")
    if stripped[0] == "[":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
        return [(f"record {i}", obj) for i, obj in enumerate(items)]
    if stripped[0] != "{":
        raise DataError(
            f"{path} is not Alpaca data: it is neither a JSON array nor JSON Lines of objects "
            f"(it starts with {stripped[:20]!r})."
        )
    try:
        whole = json.loads(text)  # one object: a single (maybe pretty-printed) record, or a wrapper
    except json.JSONDecodeError:
        whole = None  # JSON Lines, checked line by line below
    if isinstance(whole, dict):
        if not (is_record(whole) if is_record else record_format(whole) is not None):
            raise DataError(
                f"{path} is not Alpaca data: it holds one JSON object with the fields "
                f"{', '.join(sorted(whole)) or '(none)'}, not an array or JSON Lines of records."
            )
        return [("record 0", whole)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            rows.append((f"line {lineno}", Problem(f"line {lineno}", f"invalid JSON ({e.msg}, column {e.colno})")))
    return rows


def _decode(path: str, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: unknown encoding: byte 0x{data[e.start]:02x} on line {line} is not UTF-8. "
            "Re-save the file as UTF-8."
        ) from None


def _read_hub(dataset_id: str) -> list[tuple[str, object]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # offline, missing, private: the library's own message says which
        raise DataError(
            f"{dataset_id} is neither a local file nor a loadable Hub dataset ({type(e).__name__}: {e})."
        ) from None
    return [(f"record {i}", obj) for i, obj in enumerate(ds)]


def _validate(obj: object) -> tuple[dict | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        return None, f"missing field {', '.join(repr(k) for k in missing)}"
    for k in FIELDS:
        if k in obj and not isinstance(obj[k], str):
            return None, f"field {k!r} is {type(obj[k]).__name__}, not a string"
    for k in REQUIRED:
        if not obj[k].strip():
            return None, f"empty {k}"
    return {k: obj.get(k, "") for k in FIELDS}, None


def _validate_conversation(obj: object, fmt: str) -> tuple[dict | None, str | None]:
    """A conversation record as {"messages": [...]} (ShareGPT mapped to OpenAI roles), or the first problem."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    key = "messages" if fmt == "messages" else "conversations"
    if key not in obj:
        return None, f"missing field {key!r} ({FORMATS[fmt]}, like the file's first record)"
    messages, reason = conversation_messages(obj[key], key, fmt)
    if reason is None:
        reason = conversation_shape(messages, key)
    return ({"messages": messages}, None) if reason is None else (None, reason)


def _looks_foreign(raw: list[tuple[str, object]]) -> bool:
    """True when no parsed record shows any format's field: the file is some other kind of data."""
    objs = [obj for _, obj in raw if not isinstance(obj, Problem)]
    return bool(objs) and not any(record_format(o) for o in objs)


# --------------------------------------------------------------------------------------------- split


def split_records(records: list[dict], val_set_size: float | int, seed: int = SPLIT_SEED):
    """Deterministic train/validation split, identical to the original notebook's
    `Dataset.train_test_split(test_size=val_set_size, shuffle=True, seed=42)`.

    `val_set_size` < 1 is a fraction, >= 1 a count, 0 means no validation set.
    """
    if val_set_size < 0 or (val_set_size >= 1 and val_set_size != int(val_set_size)):
        raise DataError(f"--val_set_size {val_set_size}: give a fraction in [0, 1) or a whole count.")
    if val_set_size == 0:
        return list(records), []
    size = int(val_set_size) if val_set_size >= 1 else float(val_set_size)
    if isinstance(size, int) and size >= len(records):
        raise DataError(f"--val_set_size {size} leaves no training records (there are {len(records)}).")
    import datasets

    ds = datasets.Dataset.from_dict({"i": list(range(len(records)))})
    parts = ds.train_test_split(test_size=size, shuffle=True, seed=seed)
    return [records[i] for i in parts["train"]["i"]], [records[i] for i in parts["test"]["i"]]


def near_dup_key(record: dict) -> str:
    """What near-duplicate filters compare: instruction and input, never the instruction alone (GenMedGPT's
    instruction is the same for every record); for a conversation, its system and user turns."""
    if is_conversation(record):
        return "\n".join(m["content"] for m in record["messages"] if m["role"] != "assistant")
    return record["instruction"] + "\n" + record["input"]


def with_empty_input_share(records: list[dict], share: float, seed: int = SPLIT_SEED) -> tuple[list[dict], int]:
    """Render `share` of the records that have an input in the demo's shape: the input (the patient's
    words) becomes the instruction and the input is empty, so the model learns to answer the
    empty-input Alpaca prompt the demo sends, not only GenMedGPT's fixed-instruction prompt.
    Returns the records and how many were rewritten; the choice is deterministic (seed). Conversation
    records are left as written."""
    if not 0 <= share <= 1:
        raise DataError(f"--empty_input_share {share}: give a share between 0 and 1.")
    import random

    with_input = [i for i, r in enumerate(records) if r.get("input")]
    chosen = set(random.Random(seed).sample(with_input, round(share * len(with_input))))
    out = [{**r, "instruction": r["input"], "input": ""} if i in chosen else r for i, r in enumerate(records)]
    return out, len(chosen)


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.records",
                                     description="Validate a dataset (Alpaca, messages or ShareGPT) and print its counts.")
    parser.add_argument("data_path")
    parser.add_argument("--skip_invalid", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loaded = load_records(args.data_path, args.skip_invalid, conversations=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if loaded.format == "alpaca":
        with_input = sum(1 for r in loaded.records if r["input"])
        what = f"{len(loaded.records)} valid records ({with_input} with input)"
    else:
        turns = sum(len(r["messages"]) for r in loaded.records)
        what = f"{len(loaded.records)} valid conversations ({loaded.format}, {turns} turns)"
    print(f"{args.data_path}: {what}, {len(loaded.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
