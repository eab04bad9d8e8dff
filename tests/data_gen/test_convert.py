"""data_gen/convert.py: format round trips, variant keys, merge with exact and near dedup, atomic output."""

import json

import pytest

from conftest import REAL_DATA, SAMPLE, run_module, sample_records
from data_gen import convert
from trainer.records import load_records

needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason="shared/data not beside the repo")
INSTR = convert.DEFAULT_INSTRUCTION


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_array(path, records):
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


def rec(inp, out="Sebaiknya Anda periksa ke dokter.", instruction=INSTR):
    return {"instruction": instruction, "input": inp, "output": out}


def test_round_trip_jsonl_array_jsonl_preserves_records(tmp_path, capsys):
    as_array, back = tmp_path / "sample.json", tmp_path / "back.jsonl"
    assert convert.main([str(SAMPLE), "--out", str(as_array)]) == 0
    assert "wrote 48 of 48 record(s) (0 skipped, 0 removed)" in capsys.readouterr().out
    array = json.loads(as_array.read_text(encoding="utf-8"))
    assert isinstance(array, list) and array == sample_records()
    assert convert.main([str(as_array), "--out", str(back), "--to", "jsonl"]) == 0
    lines = back.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == sample_records()
    assert "\\u" not in back.read_text(encoding="utf-8")  # ensure_ascii=False: Indonesian text stays readable


@needs_real
def test_real_dataset_round_trip_keeps_all_5000_records_in_order(tmp_path):
    out = tmp_path / "genmedgpt.json"
    assert convert.main([str(REAL_DATA), "--out", str(out), "--to", "json"]) == 0  # JSON Lines in, array out
    assert json.loads(out.read_text(encoding="utf-8")) == load_records(str(REAL_DATA)).records


def test_merge_removes_exact_and_near_duplicates_and_counts_them(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [
        rec("Dokter, saya demam tinggi tiga hari dan muncul bintik merah di lengan."),
        rec("Perut saya perih setiap kali terlambat makan, apalagi setelah minum kopi."),
    ])
    b = write_array(tmp_path / "b.json", [
        # exact duplicate of a[0], up to whitespace
        rec("Dokter,  saya demam tinggi tiga hari dan muncul bintik merah di lengan. ", out=" Sebaiknya Anda periksa ke dokter."),
        # near duplicate of a[1]: one word changed
        rec("Perut saya perih setiap kali terlambat makan, apalagi setelah minum teh.", out="Kemungkinan maag."),
        # same instruction, different input: kept
        rec("Anak saya batuk berdahak sudah seminggu dan tidurnya terganggu."),
        # same instruction and input as a[0] but another answer: near duplicate (ROUGE-L 1.0)
        rec("Dokter, saya demam tinggi tiga hari dan muncul bintik merah di lengan.", out="Bisa jadi demam berdarah."),
    ])
    out = tmp_path / "merged.jsonl"
    assert convert.main([str(a), str(b), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["input"][:10] for r in kept] == ["Dokter, sa", "Perut saya", "Anak saya "]
    assert "removed 1 record(s): exact duplicate" in log
    assert "removed 2 record(s): near duplicate (ROUGE-L >= 0.7 on instruction + input)" in log
    assert f"{b} #1 ~ {a} #1" in log  # the example names the removed record and the one it matches
    assert "wrote 3 of 6 record(s) (0 skipped, 3 removed)" in log

    # near dedup off (two ways): only the exact duplicate goes
    for flags in (["--no_near_dedup"], ["--near_dup_threshold", "0"]):
        assert convert.main([str(a), str(b), "--out", str(out), *flags]) == 0
        assert "wrote 5 of 6 record(s) (0 skipped, 1 removed)" in capsys.readouterr().out
    # a stricter threshold keeps the one-word variant (ROUGE-L 24/25 = 0.96), still drops the identical key
    assert convert.main([str(a), str(b), "--out", str(out), "--near_dup_threshold", "0.97"]) == 0
    assert "wrote 4 of 6 record(s) (0 skipped, 2 removed)" in capsys.readouterr().out
    # no dedup at all
    assert convert.main([str(a), str(b), "--out", str(out), "--no-dedup"]) == 0
    assert "wrote 6 of 6 record(s) (0 skipped, 0 removed)" in capsys.readouterr().out


def test_dedup_keys_on_instruction_and_input_never_instruction_alone(tmp_path, capsys):
    # GenMedGPT's shape: one instruction for all; distinct patients must all stay
    inputs = [
        "Kepala saya pusing berputar saat bangun tidur.",
        "Mata kanan saya merah, berair dan gatal sejak kemarin.",
        "Saya sering haus dan buang air kecil di malam hari.",
        "Lutut saya bengkak dan nyeri setelah bermain sepak bola.",
    ]
    src = write_jsonl(tmp_path / "one.jsonl", [rec(i) for i in inputs])
    out = tmp_path / "out.jsonl"
    assert convert.main([str(src), "--out", str(out), "--dedup"]) == 0
    assert "wrote 4 of 4 record(s) (0 skipped, 0 removed)" in capsys.readouterr().out
    assert convert.near_dup_key(rec("x")) == INSTR + "\nx"


def test_one_file_is_not_deduplicated_unless_asked(tmp_path, capsys):
    src = write_jsonl(tmp_path / "dups.jsonl", [rec("Saya batuk."), rec("Saya batuk.")])
    out = tmp_path / "out.json"
    assert convert.main([str(src), "--out", str(out)]) == 0
    assert "dedup: off" in capsys.readouterr().out
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2
    assert convert.main([str(src), "--out", str(out), "--dedup"]) == 0
    assert "removed 1 record(s): exact duplicate" in capsys.readouterr().out
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 1


def test_variant_keys_are_mapped_and_counted(tmp_path, capsys):
    src = write_array(tmp_path / "variants.json", [
        {"question": "Apa gejala tifus?", "answer": "Demam naik bertahap, sakit perut, lemas."},
        {"patient": "Dok, saya mimisan tiap pagi.", "doctor": "Bisa karena udara kering."},
        {"patient": "Dok, gusi saya berdarah.", "doctor": "Periksakan ke dokter gigi."},
        {"input": "I have a rash.", "answer_icliniq": "Use a mild soap.", "answer_chatgpt": "ignored"},
        rec("Saya demam.", out="Istirahat dan minum air."),
    ])
    out = tmp_path / "out.jsonl"
    assert convert.main([str(src), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records[0] == {"instruction": "Apa gejala tifus?", "input": "", "output": "Demam naik bertahap, sakit perut, lemas."}
    assert records[1] == {"instruction": INSTR, "input": "Dok, saya mimisan tiap pagi.", "output": "Bisa karena udara kering."}
    assert records[3] == {"instruction": INSTR, "input": "I have a rash.", "output": "Use a mild soap."}
    assert records[4] == rec("Saya demam.", out="Istirahat dan minum air.")
    assert "mapped 2 record(s): (--instruction)/patient/doctor -> instruction/input/output" in log
    assert "mapped 1 record(s): question/answer -> instruction/output" in log
    assert "mapped 1 record(s): (--instruction)/input/answer_icliniq -> instruction/input/output" in log
    # --instruction sets the instruction of records that have none
    assert convert.main([str(src), "--out", str(out), "--instruction", "Answer as a doctor."]) == 0
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[3])["instruction"] == "Answer as a doctor."


def test_unmappable_record_is_named_and_skippable(tmp_path, capsys):
    src = write_array(tmp_path / "mixed.json", [
        {"question": "Apa itu anemia?", "answer": "Kurang darah."},
        {"title": "no answer here"},
        {"question": "Apa itu asma?", "answer": ""},
    ])
    out = tmp_path / "out.jsonl"
    assert convert.main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "record 1: missing field 'instruction', 'output'" in err and "record 2: empty output" in err
    assert not out.exists()
    assert convert.main([str(src), "--out", str(out), "--skip_invalid"]) == 0
    log = capsys.readouterr().out
    assert "skipped 1 invalid record(s): empty output" in log
    assert "wrote 1 of 3 record(s) (2 skipped, 0 removed)" in log


def test_bad_file_exits_2_naming_the_record_and_writes_nothing(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [rec("Kepala saya pusing berdenyut sejak bangun pagi tadi.")])
    bad = tmp_path / "bad.jsonl"
    valid = json.dumps(rec("Mual dan muntah terus setelah makan kerang semalam, apa sebabnya?"))
    bad.write_text(valid + "\n" + json.dumps({"instruction": "x", "input": "y"}) + "\n{oops\n")
    out = tmp_path / "out.jsonl"
    assert convert.main([str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: 2 invalid record(s) of 3" in err
    assert "line 2: missing field 'output'" in err and "line 3: invalid JSON" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl"]  # no output, no temp file
    assert convert.main([str(good), str(bad), "--out", str(out), "--skip_invalid"]) == 0
    log = capsys.readouterr().out
    assert "skipped 1 invalid record(s): invalid JSON\n" in log
    assert "skipped 1 invalid record(s): missing field 'output'" in log
    assert "wrote 2 of 4 record(s) (2 skipped, 0 removed)" in log


def test_output_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text("previous contents\n")
    calls = []

    def failing_dumps(obj, **kwargs):
        calls.append(obj)
        if len(calls) == 3:
            raise OSError("disk full")
        return json.JSONEncoder(ensure_ascii=False).encode(obj)

    monkeypatch.setattr(convert.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        convert.write_records(sample_records(), str(out), "jsonl")
    assert len(calls) == 3  # it failed midway, with two records already written to the temp file
    assert out.read_text() == "previous contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_output_format_comes_from_flag_or_extension(tmp_path, capsys):
    assert convert.main([str(SAMPLE), "--out", str(tmp_path / "x.txt")]) == 2
    assert "pass --to jsonl or --to json" in capsys.readouterr().err
    assert convert.main([str(SAMPLE), "--out", str(tmp_path / "x.txt"), "--to", "json"]) == 0
    assert len(json.loads((tmp_path / "x.txt").read_text(encoding="utf-8"))) == 48
    assert oct((tmp_path / "x.txt").stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_module_entry_points(tmp_path):
    for module, args in (("data_gen.convert", []), ("data_gen", ["convert"])):
        out = tmp_path / f"{module}.json"
        result = run_module(module, *args, SAMPLE, "--out", out, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "wrote 48 of 48" in result.stdout
        assert len(json.loads(out.read_text(encoding="utf-8"))) == 48


# ------------------------------------------------------------------------------------- chat formats, ratings


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_alpaca_round_trips_through_messages_and_sharegpt(tmp_path, capsys):
    records = [rec("Saya demam sejak kemarin."), rec("", instruction="Apa gejala flu?")]
    src = write_jsonl(tmp_path / "a.jsonl", records)
    chat, share, back = tmp_path / "chat.jsonl", tmp_path / "share.json", tmp_path / "back.jsonl"
    assert convert.main([str(src), "--out", str(chat), "--to", "messages"]) == 0
    assert read_jsonl(chat) == [
        {"messages": [{"role": "system", "content": INSTR}, {"role": "user", "content": "Saya demam sejak kemarin."},
                      {"role": "assistant", "content": records[0]["output"]}]},
        {"messages": [{"role": "user", "content": "Apa gejala flu?"}, {"role": "assistant", "content": records[1]["output"]}]},
    ]
    assert "converted 2 record(s): alpaca -> messages" in capsys.readouterr().out
    assert convert.main([str(chat), "--out", str(share), "--to", "sharegpt"]) == 0
    written = json.loads(share.read_text(encoding="utf-8"))
    assert [t["from"] for t in written[0]["conversations"]] == ["system", "human", "gpt"]
    assert [t["value"] for t in written[1]["conversations"]] == ["Apa gejala flu?", records[1]["output"]]
    assert convert.main([str(share), "--out", str(tmp_path / "same.json")]) == 0  # no --to: ShareGPT stays ShareGPT
    assert json.loads((tmp_path / "same.json").read_text(encoding="utf-8")) == written
    assert convert.main([str(share), "--out", str(back), "--to", "alpaca"]) == 0
    assert read_jsonl(back) == records
    assert "converted 2 record(s): messages -> alpaca" in capsys.readouterr().out


def test_multi_turn_conversations_cannot_become_alpaca_unless_skipped(tmp_path, capsys):
    turns = [{"role": "user", "content": "Saya batuk."}, {"role": "assistant", "content": "Minum air hangat."},
             {"role": "user", "content": "Sudah seminggu."}, {"role": "assistant", "content": "Periksa ke dokter."}]
    src = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns[:2]}, {"messages": turns}])
    out = tmp_path / "alpaca.jsonl"
    assert convert.main([str(src), "--out", str(out), "--to", "alpaca"]) == 2
    err = capsys.readouterr().err
    assert "1 conversation(s) hold more than one exchange" in err and f"{src} line 2: 2 exchanges" in err
    assert "--skip_invalid" in err and not out.exists()
    assert convert.main([str(src), "--out", str(out), "--to", "alpaca", "--skip_invalid"]) == 0
    assert read_jsonl(out) == [{"instruction": "Saya batuk.", "input": "", "output": "Minum air hangat."}]
    log = capsys.readouterr().out
    assert "left out 1 record(s): conversation of more than one exchange" in log
    assert "wrote 1 of 2 record(s) (0 skipped, 0 removed, 1 left out)" in log


def test_merging_formats_needs_to_and_dedups_conversations(tmp_path, capsys):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [rec("Saya demam.")])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": INSTR},
                                                           {"role": "user", "content": "Saya  demam."},
                                                           {"role": "assistant", "content": "Sebaiknya Anda periksa ke dokter."}]}])
    out = tmp_path / "m.jsonl"
    assert convert.main([str(alpaca), str(chat), "--out", str(out)]) == 2
    assert "hold different formats" in capsys.readouterr().err
    assert convert.main([str(alpaca), str(chat), "--out", str(out), "--to", "messages"]) == 0
    assert len(read_jsonl(out)) == 1
    assert "removed 1 record(s): exact duplicate (the same turns; whitespace-normalized)" in capsys.readouterr().out


def rating(answer, verdict, correction=None, **extra):
    return {"id": "r", "time": "2026-12-05T13:40:00Z", "model": "alpaca-medis-270m", "revision": "abc",
            "messages": [{"role": "user", "content": "Apa obat flu?"}], "answer": answer, "rating": verdict,
            "correction": correction, "settings": {"max_new_tokens": 200}, **extra}


def test_ratings_become_kto_and_dpo_records(tmp_path, capsys):
    prompt = [{"role": "user", "content": "Apa obat flu?"}]
    src = write_jsonl(tmp_path / "feedback.jsonl", [
        rating("Istirahat dan minum air.", "like"),
        rating("Minum antibiotik.", "dislike", "Flu karena virus: istirahat, antibiotik tidak menolong."),
        rating("Tidak tahu.", "dislike"),
    ])
    kto, dpo = tmp_path / "kto.jsonl", tmp_path / "dpo.jsonl"
    assert convert.main([str(src), "--out", str(kto), "--to", "kto"]) == 0
    assert read_jsonl(kto) == [
        {"messages": prompt, "completion": "Istirahat dan minum air.", "label": True},
        {"messages": prompt, "completion": "Minum antibiotik.", "label": False},
        {"messages": prompt, "completion": "Flu karena virus: istirahat, antibiotik tidak menolong.", "label": True},
        {"messages": prompt, "completion": "Tidak tahu.", "label": False},
    ]
    assert "wrote 4 kto record(s) from 3 rating(s)" in capsys.readouterr().out
    assert convert.main([str(src), "--out", str(dpo), "--to", "dpo"]) == 0
    assert read_jsonl(dpo) == [{"messages": prompt, "chosen": "Flu karena virus: istirahat, antibiotik tidak menolong.",
                                "rejected": "Minum antibiotik."}]
    log = capsys.readouterr().out
    assert "left out 1 record(s): a like: no rejected/chosen pair for dpo" in log
    assert "left out 1 record(s): a dislike without a correction: no rejected/chosen pair for dpo" in log
    assert "wrote 1 dpo record(s) from 3 rating(s) (0 skipped, 0 removed, 2 left out)" in log


def test_bad_ratings_are_named(tmp_path, capsys):
    src = write_jsonl(tmp_path / "feedback.jsonl", [
        rating("Baik.", "like"),
        rating("Baik.", "meh"),
        {k: v for k, v in rating("Baik.", "like").items() if k != "answer"},
        rating("Baik.", "like", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        rating("Baik.", "dislike", correction=3),
    ])
    assert convert.main([str(src), "--out", str(tmp_path / "kto.jsonl"), "--to", "kto"]) == 2
    err = capsys.readouterr().err
    assert f"{src}: 4 invalid record(s) of 5" in err
    assert "line 2: rating 'meh' is unknown; use one of like, dislike" in err
    assert "line 3: missing field 'answer'" in err
    assert "line 4: messages[1]: the conversation ends on an assistant turn; it must end on the user's turn" in err
    assert "line 5: field 'correction' is int, not a string" in err
    assert convert.main([str(src), "--out", str(tmp_path / "kto.jsonl"), "--to", "kto", "--skip_invalid"]) == 0
    assert "wrote 1 kto record(s) from 5 rating(s) (4 skipped" in capsys.readouterr().out
