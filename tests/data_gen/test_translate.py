"""`python -m data_gen translate` against a scripted local OpenAI-compatible server (the real openai
client over HTTP): alignment, batching, checks with individual retries, resume, and real input."""

from __future__ import annotations

import json
import math

import pytest

from conftest import ROOT
from data_gen.generate import DOCTOR_INSTRUCTION
from data_gen.translate import build_prompt, main, parse_answer
from fake_openai_server import FakeOpenAI, Reply, json_records, translate_record
from trainer.records import load_records

CHATDOCTOR = ROOT.parent / "shared" / "data" / "chatdoctor5k.json"
EN = DOCTOR_INSTRUCTION["en"]
# Our own English records (GenMedGPT's shape, and one with an empty input).
SOURCE = [
    {"instruction": EN, "input": "Doctor, I have had a dry cough for two weeks and it is worse at night.",
     "output": "It may be asthma or an allergy. You should have a lung function test, and I will prescribe an inhaler."},
    {"instruction": EN, "input": "Doctor, my knee is swollen and it hurts when I walk up the stairs.",
     "output": "This could be a sign of arthritis. We need an X-ray of the knee, and you should rest it for a few days."},
    {"instruction": "What should I do if I have a fever at home?", "input": "",
     "output": "Drink plenty of water, rest, and take paracetamol. See a doctor if the fever lasts more than three days."},
    {"instruction": EN, "input": "Doctor, I feel dizzy when I stand up and my hands are cold.",
     "output": "Your blood pressure may be low. I would like to check it, and you should drink more fluids."},
    {"instruction": EN, "input": "Doctor, there is a red itchy rash on my arms after I started a new soap.",
     "output": "It looks like contact dermatitis. Stop using the soap, and I will give you a mild steroid cream."},
    {"instruction": EN, "input": "Doctor, my child has had diarrhea since yesterday and is very tired.",
     "output": "Your child may be dehydrated. Give oral rehydration solution often, and bring the child in for an exam."},
    {"instruction": EN, "input": "Doctor, I have a burning pain in my chest after I eat spicy food.",
     "output": "That sounds like acid reflux. Avoid spicy food and late meals, and an antacid can help with the pain."},
]


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "en.json"
    path.write_text(json.dumps(SOURCE, indent=1), encoding="utf-8")
    return path


def run(server, source, out, *args, capsys=None):
    code = main(["--base_url", server.url, "--model", "fake", "--data_path", str(source), "--out", str(out),
                 "--no_progress", "--retry_delay", "0.01", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sent_indices(body: dict) -> list[int]:
    return [r["index"] for r in json_records(body["messages"][-1]["content"])]


def scripted(bad: dict[int, str]):
    """An answer function: translates like the default server, but spoils the records named in `bad`
    ("copy": the English text back, "empty": an empty output, "drop": left out)."""
    def answer(body: dict) -> str:
        items = []
        for record in json_records(body["messages"][-1]["content"]):
            how = bad.get(record["index"])
            if how == "drop":
                continue
            item = dict(record) if how == "copy" else translate_record(record)
            if how == "empty":
                item["output"] = " "
            items.append(item)
        return "Here you go:\n```json\n" + json.dumps(items) + "\n```"
    return answer


def test_alignment_batching_and_the_constant_instruction(server, source, tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    code, stdout, _ = run(server, source, out, "--batch_size", 3, capsys=capsys)
    assert code == 0
    assert len(server.requests) == math.ceil(len(SOURCE) / 3)
    assert [sent_indices(b) for b in server.requests] == [[0, 1, 2], [3, 4, 5], [6]]
    records = read(out)
    assert [r["source_index"] for r in records] == list(range(len(SOURCE)))
    for record, src in zip(records, SOURCE):
        expected = translate_record(src)
        assert record["input"] == expected["input"] and record["output"] == expected["output"]
        assert record["instruction"] == (DOCTOR_INSTRUCTION["id"] if src["instruction"] == EN else expected["instruction"])
    assert records[2]["input"] == ""
    assert load_records(str(out)).records == [{k: r[k] for k in ("instruction", "input", "output")} for r in records]
    assert "7 records (0 before this run, 7 translated now)" in stdout and "requests 3 | retries 0" in stdout


def test_the_constant_instruction_and_empty_fields_are_not_sent():
    prompt = build_prompt([(0, SOURCE[0]), (2, SOURCE[2])])
    sent = json_records(prompt)
    assert sent == [{"index": 0, "input": SOURCE[0]["input"], "output": SOURCE[0]["output"]},
                    {"index": 2, "instruction": SOURCE[2]["instruction"], "output": SOURCE[2]["output"]}]
    assert '"index", "instruction", "input", "output"' in prompt


def test_answers_are_matched_by_index_or_by_position_only_when_safe():
    batch = [(4, SOURCE[4]), (5, SOURCE[5])]
    assert set(parse_answer(json.dumps([{"index": "5", "output": "b"}, {"index": 4, "output": "a"}]), batch)) == {4, 5}
    by_position = parse_answer(json.dumps([{"output": "a"}, {"output": "b"}]), batch)
    assert by_position[4]["output"] == "a" and by_position[5]["output"] == "b"
    assert parse_answer(json.dumps([{"output": "a"}]), batch) == {}  # one of two: which one? unknown
    assert parse_answer("Saya tidak bisa menerjemahkan ini.", batch) == {}


def test_untranslated_and_empty_answers_are_retried_one_by_one_then_reported(server, source, tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    server.push(Reply(scripted({1: "copy", 2: "empty", 3: "drop"})),  # the batch 0-3
                Reply(scripted({})),  # record 1 alone: fine now
                Reply(scripted({2: "empty"})), Reply(scripted({2: "copy"})),  # record 2 fails both retries
                Reply(scripted({})))  # record 3 alone: fine
    code, stdout, stderr = run(server, source, out, "--batch_size", 4, "--limit", 4, "--record_retries", 2, capsys=capsys)
    assert code == 3
    assert [sent_indices(b) for b in server.requests] == [[0, 1, 2, 3], [1], [2], [2], [3]]
    assert sorted(r["source_index"] for r in read(out)) == [0, 1, 3]
    assert "failed on the first attempt 3 (untranslated 1, empty 1, missing 1); retried one by one 4 time(s)" in stdout
    assert "NOT translated 1 (source index, reason): 2 (untranslated)" in stdout
    assert "1 record(s) could not be translated" in stderr and "Rerun the same command" in stderr
    # Rerun: only the failed record is requested again.
    code, stdout, _ = run(server, source, out, "--batch_size", 4, "--limit", 4, capsys=capsys)
    assert code == 0 and sent_indices(server.requests[-1]) == [2] and len(server.requests) == 6
    assert sorted(r["source_index"] for r in read(out)) == [0, 1, 2, 3]


def test_an_unparsable_answer_fails_its_batch_into_individual_retries(server, source, tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    server.push(Reply("Maaf, saya tidak mengerti."))
    code, stdout, _ = run(server, source, out, "--batch_size", 2, "--limit", 2, capsys=capsys)
    assert code == 0 and [sent_indices(b) for b in server.requests] == [[0, 1], [0], [1]]
    assert "failed on the first attempt 2 (unparsable 2)" in stdout and len(read(out)) == 2


def test_resume_skips_done_indices_and_drops_a_torn_line(server, source, tmp_path, capsys, caplog):
    out = tmp_path / "id.jsonl"
    assert run(server, source, out, "--batch_size", 2, "--limit", 3, capsys=capsys)[0] == 0
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"instruction": "Jika Anda", "input": "dok')  # a write cut by kill -9
    first = len(server.requests)
    code, stdout, _ = run(server, source, out, "--batch_size", 2, "--start", 1, "--limit", 5, capsys=capsys)
    assert code == 0 and "dropped an incomplete last line" in caplog.text
    assert [sent_indices(b) for b in server.requests[first:]] == [[3, 4], [5]]
    records = read(out)
    assert sorted(r["source_index"] for r in records) == list(range(6)) and len(records) == 6
    assert "(2 before this run, 3 translated now)" in stdout


def test_exhausted_retries_say_how_to_resume(server, source, tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    server.push(Reply(scripted({})), *[Reply(status=500)] * 2)
    code, _, stderr = run(server, source, out, "--batch_size", 2, "--max_retries", 1, capsys=capsys)
    assert code == 1 and "gave up after 2 attempts" in stderr
    assert f"{out} holds 2 record(s), 2 written by this run. Rerun the same command to resume" in stderr


@pytest.mark.skipif(not CHATDOCTOR.exists(), reason=f"{CHATDOCTOR} is absent")
def test_the_first_ten_chatdoctor_records(server, tmp_path, capsys):
    out = tmp_path / "chatdoctor-id.jsonl"
    code, stdout, _ = run(server, CHATDOCTOR, out, "--limit", 10, capsys=capsys)
    assert code == 0, stdout
    assert len(server.requests) == 2  # batches of 5
    english = json.loads(CHATDOCTOR.read_text(encoding="utf-8"))[:10]
    records = read(out)
    assert [r["source_index"] for r in records] == list(range(10))
    for record, src in zip(records, english):
        assert record["instruction"] == DOCTOR_INSTRUCTION["id"]
        assert record["input"] != src["input"] and record["output"] != src["output"]
        assert record["input"] == translate_record(src)["input"]
    assert len(load_records(str(out)).records) == 10
