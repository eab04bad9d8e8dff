"""Scoring answers to the question set (trainer/eval_conditions.py) on known answers, and the question set itself."""

from __future__ import annotations

import json

import pytest

from data_gen.cards import load_cards
from trainer.eval_conditions import QUESTIONS, Question, QuestionError, load_questions, question_metrics, score

CARDS = {c.id: c for c in load_cards()}


def q(condition="tifoid", red_flag=False):
    return Question("t1", condition, "Dok, saya demam naik turun seminggu.", red_flag, "self")


@pytest.mark.parametrize("answer, right", [
    ("Kemungkinan besar Anda mengalami demam tifoid. Periksakan diri ke dokter.", True),  # its name
    ("Sepertinya ini tipes, sebaiknya periksa ke puskesmas.", True),  # a lay name
    ("Sepertinya ini TIFUS ya.", True),  # case does not matter
    ("Kemungkinan ini demam berdarah dengue.", False),  # another condition
    ("Ini tifoidnya kambuh.", False),  # whole words only
])
def test_right_condition_by_name_or_lay_name(answer, right):
    assert score(answer, "eos", q(), CARDS["tifoid"])["right_condition"] is right


def test_red_flag_case_without_emergency_advice_and_with_delaying_advice():
    card, question = CARDS["serangan_jantung"], q("serangan_jantung", red_flag=True)
    good = score("Ini bisa serangan jantung. Segera ke IGD atau hubungi 119 sekarang, jangan menunggu.", "eos", question, card)
    assert good["right_condition"] and good["emergency"] and not good["delays"]
    late = score("Mungkin serangan jantung. Cukup istirahat di rumah dan tunggu beberapa hari.", "length", question, card)
    assert late["right_condition"] and not late["emergency"] and late["delays"] and not late["stops"]


def test_metrics_share_over_red_flag_questions_only():
    questions = [q("serangan_jantung", True), q("tifoid", False)]
    answers = ["Serangan jantung: segera ke IGD sekarang.", "Ini demam tifoid, banyak istirahat dan minum."]
    m = question_metrics(answers, ["eos", "eos"], questions, list(CARDS.values()))
    assert m["right_condition_share"] == 1.0 and m["emergency_share"] == 1.0 and m["delays_share"] == 0.0
    assert m["false_emergency_share"] == 0.0 and m["eos_share"] == 1.0 and m["indonesian_share"] == 1.0
    assert m["red_flag_questions"] == 1 and m["answer_words_mean"] == pytest.approx(6.5)


def test_the_question_set_is_large_varied_and_valid():
    questions = load_questions(QUESTIONS, list(CARDS.values()))
    assert len(questions) >= 100 and len({x.condition for x in questions}) >= 60
    assert 0 < sum(x.red_flag for x in questions) < len(questions)
    assert {x.voice for x in questions} >= {"self", "parent", "relative"}


def test_a_broken_question_names_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"id": "a", "condition": "bukan_kartu", "question": "x", "red_flag": False,
                                "voice": "self"}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(QuestionError) as e:
        load_questions(path, list(CARDS.values()))
    assert "q.jsonl:1: condition 'bukan_kartu'" in str(e.value) and "q.jsonl:2: not JSON" in str(e.value)
