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


# --------------------------------------------------------------------------------------------- conversations

SYSTEM = {"role": "system", "content": "Jika Anda seorang dokter, jawablah."}
USER, USER2 = {"role": "user", "content": "Saya demam."}, {"role": "user", "content": "Kalau naik?"}
ANSWER, ANSWER2 = {"role": "assistant", "content": "Minum air."}, {"role": "assistant", "content": "Ke dokter."}
CHAT = [SYSTEM, USER, ANSWER, USER2, ANSWER2]
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def sharegpt(messages):
    return {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages]}


def test_both_chat_formats_load_as_openai_messages(tmp_path):
    messages = write_lines(tmp_path / "m.jsonl", [json.dumps({"messages": CHAT}), json.dumps({"messages": [USER, ANSWER]})])
    loaded = load_records(messages, conversations=True)
    assert loaded.format == "messages" and loaded.records == [{"messages": CHAT}, {"messages": [USER, ANSWER]}]
    assert loaded.locations == ["line 1", "line 2"]
    array = tmp_path / "s.json"
    array.write_text(json.dumps([sharegpt(CHAT), {**sharegpt([USER, ANSWER]), "id": "x"}]), encoding="utf-8")
    loaded = load_records(str(array), conversations=True)
    assert loaded.format == "sharegpt" and loaded.records == [{"messages": CHAT}, {"messages": [USER, ANSWER]}]
    # A command that reads Alpaca records only says so, with the conversion that helps.
    with pytest.raises(DataError, match=r"holds ShareGPT conversations .* reads Alpaca records only\. .*--to alpaca"):
        load_records(str(array))


@pytest.mark.parametrize(
    "messages, reason",
    [
        ([{"content": "hai"}, ANSWER], "messages[0]: missing 'role'; give it one of system, user, assistant"),
        ([{"role": "doctor", "content": "hai"}, ANSWER], "messages[0]: unknown role 'doctor'; use one of system, user, assistant"),
        ([USER, {"role": "assistant"}], "messages[1]: missing 'content'"),
        ([USER, {"role": "assistant", "content": "  "}], "messages[1]: empty 'content'"),
        ([USER, {"role": "assistant", "content": 5}], "messages[1]: 'content' is int, not a string"),
        ([USER, "hai"], "messages[1]: expected an object with 'role' and 'content', got str"),
        ([SYSTEM, USER, ANSWER, USER2], "messages[3]: the conversation ends on a user turn"),
        ([SYSTEM, USER], "no assistant turn: nothing to learn"),
        ([USER, SYSTEM, ANSWER], "messages[1]: a system turn must be the first turn"),
        ([SYSTEM, USER, USER2, ANSWER], "messages[2]: two user turns in a row (messages[1] and messages[2])"),
        ([USER, ANSWER, ANSWER2], "messages[2]: two assistant turns in a row (messages[1] and messages[2])"),
        ([SYSTEM, ANSWER], "messages[1]: the conversation starts with an assistant turn"),
        ([], "field 'messages' is empty"),
        ("hai", "field 'messages' is str, not a list of turns"),
    ],
)
def test_each_bad_conversation_names_the_record_and_the_turn(tmp_path, messages, reason):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"messages": CHAT}), json.dumps({"messages": messages}),
                                                json.dumps({"messages": CHAT})])
    with pytest.raises(DataError) as err:
        load_records(path, conversations=True)
    assert f"line 2: {reason}" in str(err.value) and "1 invalid record(s) of 3" in str(err.value)
    loaded = load_records(path, skip_invalid=True, conversations=True)
    assert len(loaded.records) == 2 and [p.where for p in loaded.skipped] == ["line 2"]


def test_sharegpt_errors_name_from_and_value(tmp_path):
    bad = [{"from": "bot", "value": "hai"}], [{"from": "human"}], [{"value": "hai"}]
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(sharegpt(CHAT))] + [json.dumps({"conversations": b}) for b in bad])
    with pytest.raises(DataError) as err:
        load_records(path, conversations=True)
    message = str(err.value)
    assert "3 invalid record(s) of 4" in message
    assert "line 2: conversations[0]: unknown from 'bot'; use one of system, human, gpt" in message
    assert "line 3: conversations[0]: missing 'value'" in message
    assert "line 4: conversations[0]: missing 'from'" in message


def test_a_file_that_mixes_formats_is_refused_naming_the_record(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [json.dumps({"messages": CHAT}), json.dumps(GOOD), json.dumps(sharegpt(CHAT))])
    with pytest.raises(DataError) as err:
        load_records(path, skip_invalid=True, conversations=True)  # not skippable: the file is wrong, not a record
    message = str(err.value)
    assert "mixes formats: line 2 is one of Alpaca records" in message
    assert "the file holds OpenAI chat messages" in message and "(from its first record, line 1)" in message


def test_conversation_records_split_and_keep_their_turns_under_empty_input_share():
    from trainer.records import with_empty_input_share

    records = [{"messages": CHAT}] * 3 + sample_records()[:7]
    out, n = with_empty_input_share(records, 1.0)
    assert out[:3] == records[:3] and n == sum(bool(r["input"]) for r in records[3:])
    train, val = split_records(records, 0.2)
    assert len(train) == 8 and len(val) == 2 and sum("messages" in r for r in train + val) == 3


def test_cli_counts_conversations(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(sharegpt(CHAT)), json.dumps(sharegpt([USER, ANSWER]))])
    ok = run_module("trainer.records", path)
    assert ok.returncode == 0 and f"{path}: 2 valid conversations (sharegpt, 7 turns), 0 skipped" in ok.stdout
