"""The page's red-flag notice (trainer/serve/redflags.py): rules, notice text and streaming. Its recall and false
alarms on held-out sets are measured in BENCHMARKS.md; here the labelled development sets are a regression guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_module
from trainer.serve.redflags import NOTICE_MARK, check, notice, strip_notice, with_notice

HERE = Path(__file__).parent
DEV_SETS = ("redflag_messages.jsonl", "redflag_test.jsonl", "redflag_final.jsonl")  # all were used to write the rules


def labelled(name: str) -> list[dict]:
    return [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]


# Flagged on purpose although labelled "none": talk of suicide always gets the mental-health line, past or not.
ON_PURPOSE = ("adik sy dulu pernah kepikiran bunuh diri",)


@pytest.mark.parametrize("name", DEV_SETS)
def test_development_sets_are_classified_as_labelled(name):
    items = labelled(name)
    wrong = [(x["red_flag"], x["message"]) for x in items if bool(check(x["message"])) != x["red_flag"]
             and not x["message"].startswith(ON_PURPOSE)]
    assert len(items) >= 120 and not wrong, wrong


@pytest.mark.parametrize("message, kind", [
    ("Dada saya nyeri seperti ditindih, keringat dingin dan menjalar ke lengan kiri", "heart"),
    ("Bapak saya tiba-tiba bicaranya pelo dan wajahnya mencong ke kiri", "stroke"),
    ("Anak saya 2 tahun mencret terus dari kemarin, matanya cekung dan belum pipis sejak pagi", "dehydration"),
    ("Saya sudah tidak ingin hidup lagi, rasanya ingin bunuh diri", "suicide"),
    ("Adik saya digigit ular di sawah, kakinya bengkak", "poison"),
])
def test_red_flags_are_recognised(message, kind):
    flag = check(message)
    assert flag is not None and flag.kind == kind, flag


@pytest.mark.parametrize("message", [
    "Apa saja gejala demam berdarah dan kapan harus ke rumah sakit?",
    "Dulu waktu SMA saya pernah pingsan saat upacara, sekarang sehat. Apakah perlu diperiksa?",
    "Kaki saya kram dan kejang otot di betis habis lari pagi",
    "Gusi saya berdarah kalau sikat gigi terlalu keras",
    "Bibir saya gatal tapi tidak bengkak dan tidak sesak setelah makan udang",
])
def test_ordinary_questions_raise_no_alarm(message):
    assert check(message) is None


def test_notice_names_the_emergency_numbers_and_a_mental_health_line():
    heart = notice("Dada saya sakit seperti diremas dan keringat dingin")
    assert heart.startswith(NOTICE_MARK) and "IGD" in heart and "119" in heart and "112" in heart
    suicide = notice("aku pengen mati aja, capek hidup")
    assert "119 ekstensi 8" in suicide and "112" in suicide
    assert notice("Saya pilek dan bersin sejak kemarin") is None


def test_the_notice_comes_first_and_stays_above_the_streamed_answer():
    closed = []

    def answer():
        try:
            yield "Ini"
            yield "Ini bisa"
            yield "Ini bisa serangan jantung."
        finally:
            closed.append(True)

    message = "Dada saya sakit seperti ditindih dan keringat dingin"
    shown = list(with_notice(message, answer()))
    assert shown[0] == notice(message)  # before the model's first token
    assert shown[-1] == f"{notice(message)}\n\nIni bisa serangan jantung." and closed
    assert strip_notice(shown[-1]) == "Ini bisa serangan jantung."
    assert list(with_notice("Saya batuk pilek", iter(["a", "ab"]))) == ["a", "ab"]
    stopped = with_notice(message, answer())
    next(stopped), next(stopped)
    stopped.close()  # the stop button: the model's generation is closed too
    assert len(closed) == 2


def test_cli_counts_flagged_messages_of_a_dataset(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "x", "input": "Saya pilek.", "output": "y"},
            {"instruction": "x", "input": "Ayah saya pingsan barusan dan tidak sadar.", "output": "y"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run_module("trainer.serve.redflags", "--data_path", data)
    assert result.returncode == 0 and "1 of 2 messages flagged (50.00%)" in result.stdout
