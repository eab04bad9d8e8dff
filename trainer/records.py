"""Alpaca records: load, validate, split. Pure Python (no torch): data_gen imports this module.

    python -m trainer.records ../shared/data/GenMedGPT-5k-id.json     # validate a file, print counts

A record is a JSON object with string fields `instruction`, `output` and (optionally, default "")
`input`. Files are a JSON array or JSON Lines (GenMedGPT-5k-id.json is JSON Lines despite its
name); a path that does not exist and looks like `owner/name` is read as a Hub dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")
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
    records: list[dict]
    skipped: list[Problem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- load


def load_records(path: str, skip_invalid: bool = False, transform=None) -> LoadedData:
    """Read and validate Alpaca records; raise DataError naming every bad record unless skipping.

    `transform`, if given, maps each parsed object before validation (data_gen.convert uses it to
    turn ChatDoctor-style keys into Alpaca fields)."""
    if not os.path.exists(path) and re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raw = _read_hub(path)
    else:
        raw = _read_file(path)
    if transform is not None:
        raw = [(where, obj if isinstance(obj, Problem) else transform(obj)) for where, obj in raw]
    records, problems = [], []
    for where, obj in raw:
        if isinstance(obj, Problem):
            problems.append(obj)
            continue
        record, reason = _validate(obj)
        if reason:
            problems.append(Problem(where, reason))
        else:
            records.append(record)
    if not records and not problems:
        raise DataError(f"{path} holds no records: expected Alpaca records (instruction, input, output).")
    if problems and not records and _looks_foreign(raw):
        keys = sorted({k for _, obj in raw if isinstance(obj, dict) for k in obj})
        raise DataError(
            f"{path} is not Alpaca data: its records have the fields {', '.join(keys) or '(none)'}, "
            "but each needs `instruction` and `output` (and optionally `input`)."
        )
    if problems and not skip_invalid:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise DataError(
            f"{path}: {len(problems)} invalid record(s) of {len(raw)}:\n{listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nFix them, or pass --skip_invalid to train on the valid records only."
        )
    if problems:
        logger.warning("%s: skipped %d invalid record(s) of %d (--skip_invalid)", path, len(problems), len(raw))
    return LoadedData(path, records, problems)


def _read_file(path: str) -> list[tuple[str, object]]:
    """(location, parsed object or Problem) per record of a JSON array or JSON Lines file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Pass --data_path a JSON or JSON Lines file of Alpaca records.") from None
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
        if not any(k in whole for k in FIELDS):
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


def _looks_foreign(raw: list[tuple[str, object]]) -> bool:
    """True when no parsed record has any Alpaca field: the file is some other kind of data."""
    objs = [obj for _, obj in raw if not isinstance(obj, Problem)]
    return bool(objs) and not any(isinstance(o, dict) and any(k in o for k in FIELDS) for o in objs)


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
    instruction is the same for every record)."""
    return record["instruction"] + "\n" + record["input"]


def with_empty_input_share(records: list[dict], share: float, seed: int = SPLIT_SEED) -> tuple[list[dict], int]:
    """Render `share` of the records that have an input in the demo's shape: the input (the patient's
    words) becomes the instruction and the input is empty, so the model learns to answer the
    empty-input Alpaca prompt the demo sends, not only GenMedGPT's fixed-instruction prompt.
    Returns the records and how many were rewritten; the choice is deterministic (seed)."""
    if not 0 <= share <= 1:
        raise DataError(f"--empty_input_share {share}: give a share between 0 and 1.")
    import random

    with_input = [i for i, r in enumerate(records) if r["input"]]
    chosen = set(random.Random(seed).sample(with_input, round(share * len(with_input))))
    out = [{**r, "instruction": r["input"], "input": ""} if i in chosen else r for i, r in enumerate(records)]
    return out, len(chosen)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Validate an Alpaca dataset and print its counts.")
    parser.add_argument("data_path")
    parser.add_argument("--skip_invalid", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loaded = load_records(args.data_path, args.skip_invalid)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with_input = sum(1 for r in loaded.records if r["input"])
    print(f"{args.data_path}: {len(loaded.records)} valid records ({with_input} with input), {len(loaded.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
