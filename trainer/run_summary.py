"""What a training run reports: `train_summary.json`, written by `trainer.train` and read by `trainer.push`
(the model card), `trainer.bench` (training throughput) and `trainer.evaluate` (which split was held out).
One typed record instead of a dict read by key in several places; pure Python, so the Hub side and
data tools can read it without torch.

`schema_version` grows when a field changes meaning or is removed; files written before it existed
(version 0) have the same fields as version 1.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA_VERSION = 1
FILE_NAME = "train_summary.json"


class SummaryError(Exception):
    """A train_summary.json that cannot be read; the message names the file and what to do."""


@dataclass
class ExampleCounts:
    """Tokenized examples of one split (trainer.batches.tokenize_records)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn after truncation
    learned_tokens: int = 0
    tokens: int = 0


@dataclass
class RecordCounts:
    """Records from the data file to the split that trained."""

    valid: int = 0
    skipped_invalid: int = 0
    train: int = 0
    val: int = 0
    val_evaluated: int = 0
    train_used: int = 0
    train_empty_input: int = 0  # rendered in the demo's empty-input shape (--empty_input_share)
    train_extra: int = 0  # training-only records added after the split (--extra_data_path)
    val_set_size: float | None = None  # as given (share or count): evaluate re-derives the same split


@dataclass
class Throughput:
    """Batch make-up and speed of the optimizer steps; the first step (warm-up) is left out of the rates."""

    batching: str = "padded"  # padded, packed or group_by_length
    learned_logits_only: bool = True
    padding_fraction: float | None = None
    learned_tokens_per_second: float | None = None
    tokens_per_second: float | None = None
    seconds_per_step: float | None = None
    peak_rss_mb: int | None = None
    cuda_peak_allocated_mb: int | None = None
    steps: list[dict] = field(default_factory=list)  # per step: seconds, learned, tokens, slots, sum_sq_lengths


@dataclass
class RunSummary:
    model: str | None = None  # as given to trainer.train --model (push replaces a local path by a name)
    template: str | None = None
    method: str = "full"  # "full" or "lora (r=16, alpha=32)"
    data_path: str | None = None
    extra_data_path: str | None = None  # training-only records added after the split (--extra_data_path)
    init_adapter: str | None = None  # the adapter this run continued (--init_adapter): a second training stage
    records: RecordCounts = field(default_factory=RecordCounts)
    examples: dict[str, ExampleCounts] = field(default_factory=dict)  # "train", "val"
    world_size: int = 1
    strategy: str = "single"  # single, ddp or fsdp
    fsdp: str | None = None
    wrapped_class: str | None = None
    wrapped_units: int = 0
    total_params: int | None = None
    local_params_per_rank: list[int] = field(default_factory=list)
    global_step: int = 0
    epochs: float = 0.0
    train_loss_first: float | None = None
    train_loss_final: float | None = None
    eval_loss_initial: float | None = None
    eval_loss_final: float | None = None
    learned_tokens_trained: int = 0
    tokens_trained: int = 0
    wall_time_s: float = 0.0
    learned_tokens_per_second: float | None = None
    throughput: Throughput = field(default_factory=Throughput)
    device: str | None = None
    precision: str = "fp32"
    preference: dict | None = None  # --method dpo/kto: beta, reference, rewards and loss at the first and last evaluation
    transformers_version: str | None = None
    torch_version: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE_NAME
        path.write_text(self.to_json())
        return path

    def replace(self, **changes) -> RunSummary:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict, where: str = FILE_NAME) -> RunSummary:
        if not isinstance(data, dict):
            raise SummaryError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SummaryError(f"{where}: schema_version {version!r} is newer than this alpaca-medis reads "
                               f"({SCHEMA_VERSION}); update alpaca-medis.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SummaryError(f"{where}: unknown field(s) {', '.join(unknown)} for schema_version {version}; "
                               "was it written by another tool? Remove them or retrain.")
        values = dict(data, schema_version=SCHEMA_VERSION)
        try:
            values["records"] = RecordCounts(**(data.get("records") or {}))
            values["examples"] = {split: ExampleCounts(**c) for split, c in (data.get("examples") or {}).items()}
            values["throughput"] = Throughput(**(data.get("throughput") or {}))
        except TypeError as e:
            raise SummaryError(f"{where}: {e}; the file does not match schema_version {version}.") from None
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> RunSummary | None:
        """The summary in `folder`, or None if it has none."""
        path = Path(folder) / FILE_NAME
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SummaryError(f"{path}: not valid JSON ({e}).") from None
        return cls.from_dict(data, str(path))
