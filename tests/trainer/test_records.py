import json

import datasets
import pytest

from conftest import REAL_DATA, SAMPLE, run_module, sample_records
from trainer.records import DataError, load_records, split_records

needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason="shared/data not beside the repo")
GOOD = {"instruction": "Jawab.", "input": "Saya demam.", "output": "Minum air."}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_loads_json_lines_and_json_array(tmp_path):
    records = sample_records()
    assert len(load_records(str(SAMPLE)).records) == len(records) >= 40
    array = tmp_path / "a.json"
    array.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    assert load_records(str(array)).records == records


@needs_real
def test_real_dataset_is_json_lines_with_5000_records():
    loaded = load_records(str(REAL_DATA))
    assert len(loaded.records) == 5000 and not loaded.skipped
    assert loaded.records[0]["instruction"].startswith("Jika Anda seorang dokter")


def test_missing_input_means_empty_and_bom_is_fine(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": "Apa itu flu?", "output": "Infeksi virus."}).encode())
    assert load_records(str(path)).records == [{"instruction": "Apa itu flu?", "input": "", "output": "Infeksi virus."}]


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"instruction": "a", "output": ', "line 2: invalid JSON"),
        ('{"instruction": "a", "input": ""}', "line 2: missing field 'output'"),
        ('{"input": "x", "output": "y"}', "line 2: missing field 'instruction'"),
        ('{"instruction": "a", "input": "", "output": 3}', "line 2: field 'output' is int, not a string"),
        ('{"instruction": "a", "input": null, "output": "b"}', "line 2: field 'input' is NoneType, not a string"),
        ('{"instruction": "  ", "input": "", "output": "b"}', "line 2: empty instruction"),
        ('{"instruction": "a", "input": "", "output": ""}', "line 2: empty output"),
        ('["a", "b"]', "line 2: expected a JSON object, got list"),
    ],
)
def test_each_invalid_record_is_named(tmp_path, line, reason):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DataError) as err:
        load_records(path)
    message = str(err.value)
    assert reason in message and path in message
    assert "1 invalid record(s) of 3" in message and "--skip_invalid" in message
    loaded = load_records(path, skip_invalid=True)
    assert len(loaded.records) == 2 and len(loaded.skipped) == 1


def test_array_records_are_named_by_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, {"instruction": "a", "output": ""}]), encoding="utf-8")
    with pytest.raises(DataError, match="record 1: empty output"):
        load_records(str(path))


def test_lists_twenty_problems_and_the_total(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD)] + ['{"instruction": ""}'] * 25)
    with pytest.raises(DataError) as err:
        load_records(path)
    message = str(err.value)
    assert "25 invalid record(s) of 26" in message
    assert message.count("missing field 'output'") == 20
    assert "line 21:" in message and "line 22:" not in message and "... and 5 more" in message


def test_unknown_encoding_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"instruction": "nyeri dada", "input": "", "output": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"unknown encoding: byte 0xe9 on line 2 is not UTF-8\. Re-save the file as UTF-8"):
        load_records(str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("  \n\n", "is empty"),
        ("[]", "holds no records"),
        ("question,answer\nwhy,because\n", "is not Alpaca data: it is neither a JSON array nor JSON Lines"),
        ('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "a2"}\n',
         "is not Alpaca data: its records have the fields answer, question"),
        ('{\n  "data": [\n    {"instruction": "a", "output": "b"}\n  ]\n}\n', "is not Alpaca data: it holds one JSON object with the fields data"),
    ],
)
def test_not_alpaca_data_gets_one_sentence(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load_records(str(path))
    assert str(err.value).count("\n") == 0


def test_missing_file_and_offline_hub_id(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="neither a local file nor a loadable Hub dataset"):
        load_records("nobody-here/no-such-dataset")


def test_split_is_deterministic_and_matches_the_original_notebook():
    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(200)]
    train, val = split_records(records, 0.1)
    assert (train, val) == split_records(records, 0.1)
    assert len(val) == 20 and len(train) == 180
    assert sorted(r["instruction"] for r in train + val) == sorted(r["instruction"] for r in records)
    # The original: data["train"].train_test_split(test_size=val_set_size, shuffle=True, seed=42)
    reference = datasets.Dataset.from_list(records).train_test_split(test_size=0.1, shuffle=True, seed=42)
    assert val == list(reference["test"]) and train == list(reference["train"])
    assert len(split_records(records, 30)[1]) == 30
    assert split_records(records, 0) == (records, [])
    with pytest.raises(DataError, match="--val_set_size 200 leaves no training records"):
        split_records(records, 200)
    with pytest.raises(DataError, match="--val_set_size 2.5"):
        split_records(records, 2.5)


def test_cli_reports_counts_or_exits_2(tmp_path):
    ok = run_module("trainer.records", SAMPLE)
    assert ok.returncode == 0 and f"{SAMPLE}: 48 valid records (40 with input), 0 skipped" in ok.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n{oops\n", encoding="utf-8")
    failed = run_module("trainer.records", bad)
    assert failed.returncode == 2 and "line 2: invalid JSON" in failed.stderr and "Traceback" not in failed.stderr
    skipped = run_module("trainer.records", bad, "--skip_invalid")
    assert skipped.returncode == 0 and "1 valid records (1 with input), 1 skipped" in skipped.stdout


def test_a_share_of_records_takes_the_demos_empty_input_shape():
    from trainer.records import DataError, with_empty_input_share

    records = sample_records()
    with_input = [r for r in records if r["input"]]
    out, n = with_empty_input_share(records, 0.5)
    assert n == round(0.5 * len(with_input)) and len(out) == len(records)
    assert out == with_empty_input_share(records, 0.5)[0]  # deterministic (seed 42)
    changed = [(a, b) for a, b in zip(records, out) if a != b]
    assert len(changed) == n
    for before, after in changed:  # the patient's words become the instruction; the answer stays
        assert after == {**before, "instruction": before["input"], "input": ""}
    assert with_empty_input_share(records, 0.0) == (records, 0)
    assert sum(not r["input"] for r in with_empty_input_share(records, 1.0)[0]) == len(records)
    with pytest.raises(DataError, match="--empty_input_share 1.5"):
        with_empty_input_share(records, 1.5)
