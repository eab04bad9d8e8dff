"""The condition cards (data/conditions/) and `python -m data_gen conditions`, offline and through the stand-in
OpenAI-compatible server."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from data_gen.cards import CARD_DIR, GROUPS, CardError, load_cards
from data_gen.conditions import LEAK_THRESHOLD, build, eval_questions, main
from data_gen.rouge import rouge_l, tokenize
from fake_openai_server import FakeOpenAI, Reply
from trainer.records import DOCTOR_INSTRUCTION, load_records

CARDS = load_cards()
EMERGENCY_WORDS = re.compile(r"\bIGD\b|\b119\b|\b112\b")


def test_every_card_is_complete_and_conservative():
    assert len(CARDS) >= 80
    assert {c.group for c in CARDS} == set(GROUPS)  # infections to injuries, every group has cards
    for card in CARDS:
        assert card.lay_names and len(card.symptoms) >= 5 and len(card.red_flags) >= 2, card.id
        assert card.source.url.startswith("https://") and card.source.publisher, card.id
        assert card.see_doctor.strip(), card.id
        text = json.dumps(card.as_dict(), ensure_ascii=False)
        assert not re.search(r"\d+\s*mg\b", text), card.id
    emergencies = [c for c in CARDS if c.emergency]
    assert {"serangan_jantung", "stroke"} <= {c.id for c in emergencies}
    for card in emergencies:  # an emergency card's first advice is the emergency room
        assert EMERGENCY_WORDS.search(card.do_now[0]), card.id


def test_names_are_unambiguous_across_cards():
    """The scorer counts a whole-word name as naming the card: no name may belong to two cards."""
    owner = {}
    for card in CARDS:
        for name in card.names:
            assert owner.setdefault(name.lower(), card.id) == card.id, f"{name!r}: {owner[name.lower()]} and {card.id}"


def write_cards(folder, cards):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.yaml").write_text(yaml.safe_dump(cards, allow_unicode=True), encoding="utf-8")
    return folder


def card_dict(card_id="dengue"):
    return next(c for c in CARDS if c.id == card_id).as_dict()


@pytest.mark.parametrize("change, message", [
    ({"lay_names": []}, "lay_names has 0 item(s)"),
    ({"red_flags": ["satu tanda"]}, "red_flags has 1 item(s)"),
    ({"source": {"publisher": "Blog", "title": "t", "url": "https://example.com/dbd"}}, "not public health guidance"),
    ({"do_now": ["Minum parasetamol 500 mg tiga kali sehari.", "Istirahat."]}, "names a dose"),
    ({"do_now": ["Minta amoksisilin di apotek.", "Istirahat."]}, "prescription medicine"),
    ({"symptoms": ["Saya demam.", "b", "c", "d", "e"]}, "without 'saya' or a full stop"),
    ({"lay_names": ["demam"]}, "too generic"),
])
def test_a_bad_card_is_named_with_the_field_and_the_fix(tmp_path, change, message):
    card = {**card_dict(), "alternatives": [], **change}
    with pytest.raises(CardError) as e:
        load_cards(write_cards(tmp_path / "c", [card]))
    assert "test.yaml#1 (dengue)" in str(e.value) and message in str(e.value)


def test_unknown_alternative_and_duplicate_id_are_errors(tmp_path):
    card = {**card_dict(), "alternatives": ["tidak_ada"]}
    with pytest.raises(CardError) as e:
        load_cards(write_cards(tmp_path / "c", [card, card]))
    assert "['tidak_ada'] are not other cards' ids" in str(e.value) and "id already used" in str(e.value)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "conditions.jsonl"
    assert main(["--out", str(out), "--per_card", "6", "--no_progress"]) == 0
    return out, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_records_cover_every_card_in_both_shapes_and_load_for_training(generated):
    out, records = generated
    by_card = {}
    for r in records:
        by_card.setdefault(r["condition"], []).append(r)
    assert set(by_card) == {c.id for c in CARDS} and all(len(v) == 6 for v in by_card.values())
    assert {r["shape"] for r in records} == {"input", "empty"}
    for r in records:
        card = next(c for c in CARDS if c.id == r["condition"])
        if r["shape"] == "input":
            assert r["instruction"] == DOCTOR_INSTRUCTION["id"] and r["input"]
        else:
            assert r["input"] == "" and r["instruction"] != DOCTOR_INSTRUCTION["id"]
        assert card.named_in(r["output"]), r["output"]
        assert EMERGENCY_WORDS.search(r["output"]), r["output"]  # every answer says when it is an emergency
        if r["red_flag"]:  # a red flag is answered with the emergency first
            assert EMERGENCY_WORDS.search(r["output"].split(". ")[0] + r["output"].split(". ")[1]), r["output"]
    assert {r["voice"] for r in records} >= {"self", "parent", "relative"}
    assert len(load_records(str(out)).records) == len(records)
    stats = json.loads(out.with_name(out.name + ".stats.json").read_text())
    assert stats["records"] == len(records) and stats["cards"] == len(CARDS)


def test_same_seed_same_records_other_seed_other_records(generated, tmp_path):
    out, records = generated
    again, other = tmp_path / "again.jsonl", tmp_path / "other.jsonl"
    assert main(["--out", str(again), "--per_card", "6", "--no_progress"]) == 0
    assert main(["--out", str(other), "--per_card", "6", "--seed", "7", "--no_progress"]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


def test_no_record_comes_near_an_evaluation_question(generated):
    _, records = generated
    questions = [tokenize(q) for q in eval_questions()]
    assert len(questions) >= 100
    for r in records:
        words = tokenize(r["input"] or r["instruction"])
        assert max(rouge_l(words, q) for q in questions) < LEAK_THRESHOLD


def test_an_evaluation_question_is_never_emitted(tmp_path):
    """A question put in the evaluation folder that the generator would write is dropped and counted."""
    card = next(c for c in CARDS if c.id == "dengue")
    records, _ = build([card], 4, 42, 0.7, [], progress=False)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    leaked = records[0]["input"] or records[0]["instruction"]
    (eval_dir / "questions.jsonl").write_text(json.dumps({"question": leaked}) + "\n", encoding="utf-8")
    again, stats = build([card], 4, 42, 0.7, eval_questions(eval_dir), progress=False)
    assert leaked not in {r["input"] or r["instruction"] for r in again}
    assert stats["near_eval_question"] >= 1


def test_through_a_chat_model_records_must_name_the_condition(tmp_path):
    card = next(c for c in CARDS if c.id == "tifoid")
    messages = ["Dok, sudah lima hari saya demam naik turun terutama sore hari. Kenapa ya?",
                "Anak saya sembilan tahun perutnya sakit, lidahnya putih kotor, dan susah buang air besar.",
                "Habis makan di warung pinggir jalan minggu lalu, sekarang saya meriang, mual dan lemas sekali.",
                "Suami saya panasnya tinggi tiap malam, mencret, dan tidak nafsu makan sejak seminggu."]
    good = [{"pesan": m, "jawaban": f"Kemungkinan besar ini demam tifoid (tipes). Periksakan diri ke puskesmas. ({i})"}
            for i, m in enumerate(messages)]
    bad = {"pesan": "Dok, saya pusing.", "jawaban": "Banyak istirahat saja ya."}
    out = tmp_path / "model.jsonl"
    with FakeOpenAI() as server:
        server.push(Reply(json.dumps(good + [bad], ensure_ascii=False)))
        code = main(["--out", str(out), "--cards", str(write_cards(tmp_path / "cards", [{**card.as_dict(), "alternatives": []}])),
                     "--per_card", "5", "--base_url", server.url, "--model", "fake", "--no_progress"])
        prompt = server.requests[0]["messages"][0]["content"]
    assert code == 0
    assert '"tifoid"' in prompt and "Jangan menyebut dosis" in prompt  # the card and the rules go to the model
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4 and all("tifoid" in r["output"] for r in records)
    stats = json.loads(out.with_name(out.name + ".stats.json").read_text())
    assert stats["does_not_name_condition"] == 1 and stats["source"] == "model"


def test_bad_flags_and_cards_exit_2_without_traceback(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o.jsonl"), "--per_card", "0"]) == 2
    assert "--per_card" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o.jsonl"), "--base_url", "http://127.0.0.1:9/v1"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o.jsonl"), "--cards", str(tmp_path)]) == 2
    assert "no *.yaml condition cards" in capsys.readouterr().err
    assert CARD_DIR.is_dir()
