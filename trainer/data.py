"""Alpaca records: load, validate, split, tokenize with masked prompt labels, collate.

    python -m trainer.data ../shared/data/GenMedGPT-5k-id.json     # validate a file, print counts

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

import torch

logger = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")
MAX_LISTED_PROBLEMS = 20
IGNORE_INDEX = -100  # CrossEntropyLoss skips these positions: prompt and padding are not learned.
SPLIT_SEED = 42  # the original notebook's train_test_split seed


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


# ------------------------------------------------------------------------------------------ tokenize


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn after truncation
    learned_tokens: int = 0
    tokens: int = 0


def tokenize_records(records, tokenizer, template, max_length: int):
    """Encode each record as prompt ids + response ids + EOS, with prompt labels masked.

    Prompt and response are encoded separately and their ids concatenated: tokenizing the joined
    text can merge tokens across the boundary, so the prompt's tokens are not always a prefix of
    the full text's, and a length-based mask would then hide or expose the wrong tokens.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token, so a trained model could never stop. Set tokenizer.eos_token.")
    if not records:  # e.g. no validation split (--val_set_size 0)
        return [], TokenizeStats()
    prompts = [template.format(r["instruction"], r["input"]) for r in records]
    prompt_ids = tokenizer(prompts)["input_ids"]
    response_ids = tokenizer([r["output"] for r in records], add_special_tokens=False)["input_ids"]
    n_bos = 1 if tokenizer.bos_token_id is not None and prompt_ids and prompt_ids[0][:1] == [tokenizer.bos_token_id] else 0
    min_prompt = max(max_length // 4, n_bos + 1)
    examples, stats = [], TokenizeStats()
    for p, r in zip(prompt_ids, response_ids):
        r = r + [tokenizer.eos_token_id]
        overflow = len(p) + len(r) - max_length
        if overflow > 0:
            stats.truncated += 1
            # Prompt side first: drop its oldest tokens (after BOS) but keep its end, which holds the
            # response marker the model must learn to answer after; then cut the response's tail.
            cut = min(overflow, max(len(p) - min_prompt, 0))
            p = p[:n_bos] + p[n_bos + cut :]
            r = r[: max_length - len(p)]
            if not r:
                stats.dropped += 1
                continue
        examples.append({"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r})
        stats.learned_tokens += len(r)
        stats.tokens += len(p) + len(r)
    stats.examples = len(examples)
    if stats.truncated:
        logger.warning(
            "%d of %d examples were longer than %d tokens and truncated (prompt first); %d dropped with nothing left to learn",
            stats.truncated, len(records), max_length, stats.dropped,
        )
    return examples, stats


def learned_loss_sum(model, batch: dict, learned_only: bool = True) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the learned tokens of a collated batch (padded or packed), and their
    count (labels shifted by one, as the HF causal LMs do). One definition for the Trainer, the FSDP
    loop and evaluation.

    Logits are computed only at positions whose next token is learned (`logits_to_keep`): about two
    thirds of an Alpaca example is prompt, and the vocabulary projection and its fp32 softmax are
    the largest single cost of a small model's step."""
    labels = batch["labels"][:, 1:]
    learned = labels != IGNORE_INDEX
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if learned_only and accepts_logits_to_keep(model):
        keep = learned.any(dim=0).nonzero().squeeze(1)  # positions learned in any row of the batch
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        labels = labels[:, keep]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int(learned.sum())


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own models do; old remote code may not)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_counts(batch: dict) -> dict:
    """What a collated batch (padded or packed) holds: learned tokens, real tokens, slots computed
    (real + padding) and the sum of squared example lengths (attention cost)."""
    if "cu_seq_lens_q" in batch:
        lengths = batch["cu_seq_lens_q"].diff()
    elif "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(dim=1)
    else:
        lengths = torch.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[1])
    return {
        "learned": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "tokens": int(lengths.sum()),
        "slots": batch["input_ids"].numel(),
        "sum_sq_lengths": int((lengths.long() ** 2).sum()),
    }


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class SupervisedDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


@dataclass
class DataCollator:
    """Right-pads a batch. Padding is masked by position, never by token id: many tokenizers have
    pad == eos (SmolLM2 does), and masking `labels == pad_id` would also hide the real EOS, so the
    model never learns to stop."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(ex["input_ids"]) for ex in batch)
        out = {"input_ids": [], "labels": [], "attention_mask": []}
        for ex in batch:
            pad = width - len(ex["input_ids"])
            out["input_ids"].append(ex["input_ids"] + [self.pad_token_id] * pad)
            out["labels"].append(ex["labels"] + [IGNORE_INDEX] * pad)
            out["attention_mask"].append([1] * len(ex["input_ids"]) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


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
