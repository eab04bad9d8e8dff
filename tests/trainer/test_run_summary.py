"""trainer/run_summary.py: train_summary.json as a typed record. What training writes reads back equal; a file
this version cannot read fails with a SummaryError that names the file and says what to do."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from trainer.run_summary import FILE_NAME, SCHEMA_VERSION, ExampleCounts, RecordCounts, RunSummary, SummaryError, Throughput

SHIPPED = ROOT / "models" / "alpaca-medis-270m"


def full_summary() -> RunSummary:
    """Every nested record filled, and values of every JSON type (None, float, list, dict)."""
    return RunSummary(
        model="smollm2-135m", template="alpaca-id", method="lora (r=4, alpha=16)", data_path="data/sample.jsonl",
        records=RecordCounts(valid=48, train=43, val=5, val_evaluated=5, train_used=43, train_empty_input=20,
                             val_set_size=0.1),
        examples={"train": ExampleCounts(examples=43, truncated=1, learned_tokens=900, tokens=2000),
                  "val": ExampleCounts(examples=5, dropped=1, learned_tokens=100, tokens=250)},
        world_size=2, strategy="fsdp", fsdp="full_shard", wrapped_class="LlamaDecoderLayer", wrapped_units=2,
        total_params=1234, local_params_per_rank=[617, 617], global_step=2, epochs=0.333, train_loss_first=6.5,
        eval_loss_initial=6.4, eval_loss_final=None, learned_tokens_trained=300, tokens_trained=700, wall_time_s=1.25,
        throughput=Throughput(batching="packed", padding_fraction=0.0, tokens_per_second=12.5, peak_rss_mb=900,
                              steps=[{"seconds": 0.5, "learned": 150, "tokens": 350, "slots": 350}]),
        device="cpu", precision="bf16", transformers_version="5.0.0", torch_version="2.9.0",
    )


def test_round_trip(tmp_path):
    summary = full_summary()
    path = summary.write(tmp_path)
    assert path == tmp_path / FILE_NAME
    read = RunSummary.read(tmp_path)
    assert read == summary
    assert isinstance(read.records, RecordCounts) and isinstance(read.throughput, Throughput)
    assert all(isinstance(c, ExampleCounts) for c in read.examples.values()) and set(read.examples) == {"train", "val"}
    assert read.to_json() == summary.to_json() == path.read_text()


def test_defaults_round_trip_and_a_missing_file_is_none(tmp_path):
    assert RunSummary.read(tmp_path) is None
    RunSummary().write(tmp_path)
    assert RunSummary.read(tmp_path) == RunSummary()


def test_replace_leaves_the_original():
    summary = full_summary()
    cleaned = summary.replace(model="HuggingFaceTB/SmolLM2-135M-Instruct", data_path="sample.jsonl")
    assert (cleaned.model, cleaned.data_path) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "sample.jsonl")
    assert (summary.model, summary.data_path) == ("smollm2-135m", "data/sample.jsonl")
    assert cleaned != summary and cleaned.replace(model=summary.model, data_path=summary.data_path) == summary


def test_a_file_without_schema_version_reads_as_the_current_one(tmp_path):
    data = json.loads(full_summary().to_json())
    del data["schema_version"]  # written before the field existed (version 0): the same fields
    (tmp_path / FILE_NAME).write_text(json.dumps(data))
    assert RunSummary.read(tmp_path) == full_summary()


def test_the_shipped_summary_reads():
    if not (SHIPPED / FILE_NAME).is_file():
        pytest.skip(f"{SHIPPED} has no {FILE_NAME}")
    summary = RunSummary.read(SHIPPED)
    raw = json.loads((SHIPPED / FILE_NAME).read_text())
    assert summary.global_step == raw["global_step"] > 0
    assert summary.records.valid == raw["records"]["valid"] and summary.examples["train"].examples == raw["examples"]["train"]["examples"]
    assert summary.throughput.batching == raw["throughput"]["batching"] and summary.schema_version == SCHEMA_VERSION
    assert summary.method.startswith("lora") and summary.data_path == raw["data_path"]


def write_raw(tmp_path, data) -> str:
    path = tmp_path / FILE_NAME
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_newer_schema_version_says_to_update(tmp_path):
    path = write_raw(tmp_path, {**json.loads(full_summary().to_json()), "schema_version": 99})
    with pytest.raises(SummaryError) as e:
        RunSummary.read(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "schema_version 99" in message and "update alpaca-medis" in message


def test_an_unknown_field_is_named(tmp_path):
    path = write_raw(tmp_path, {**json.loads(full_summary().to_json()), "note": "hello"})
    with pytest.raises(SummaryError) as e:
        RunSummary.read(tmp_path)
    assert str(e.value).startswith(f"{path}: ") and "unknown field(s) note" in str(e.value)


def test_an_unknown_nested_field_is_named(tmp_path):
    data = json.loads(full_summary().to_json())
    data["records"]["bogus"] = 1
    path = write_raw(tmp_path, data)
    with pytest.raises(SummaryError) as e:
        RunSummary.read(tmp_path)
    assert str(e.value).startswith(f"{path}: ") and "bogus" in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2"])
def test_not_json_names_the_file(tmp_path, text):
    path = write_raw(tmp_path, text)
    with pytest.raises(SummaryError) as e:
        RunSummary.read(tmp_path)
    assert str(e.value).startswith(f"{path}: not valid JSON")


def test_json_that_is_not_an_object_names_the_file(tmp_path):
    path = write_raw(tmp_path, "[1, 2]")
    with pytest.raises(SummaryError) as e:
        RunSummary.read(tmp_path)
    assert str(e.value).startswith(f"{path}: expected a JSON object")
