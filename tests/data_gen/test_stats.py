"""data_gen/stats.py: the data card's numbers, stats.json and plots, token lengths with a tiny tokenizer."""

import json

import pytest

from conftest import REAL_DATA, SAMPLE, build_tokenizer, run_module, sample_records
from data_gen import stats as data_stats

needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason="shared/data not beside the repo")
PNG = b"\x89PNG\r\n\x1a\n"


def run_stats(tmp_path, *args) -> dict:
    out = tmp_path / "stats"
    assert data_stats.main([*map(str, args), "--output_dir", str(out)]) == 0
    return json.loads((out / "stats.json").read_text(encoding="utf-8"))


def lengths(s):
    return {k: s[k] for k in ("min", "median", "mean", "p95", "max")}


@needs_real
def test_real_dataset_matches_the_data_card(tmp_path):
    s = run_stats(tmp_path, REAL_DATA)
    assert s["records"] == 5000
    assert s["distinct_instructions"] == 1
    assert s["most_common_instruction"] == {
        "text": "Jika Anda seorang dokter, silakan menjawab pertanyaan medis berdasarkan deskripsi pasien.", "count": 5000
    }
    assert (s["with_input"], s["with_input_share"]) == (5000, 1.0)
    assert s["exact_duplicate_records"] == 0
    assert (s["exact_duplicate_pairs"], s["exact_duplicate_pair_groups"]) == (22, 21)
    chars = s["chars"]
    assert lengths(chars["instruction"]) == {"min": 89, "median": 89, "mean": 89.0, "p95": 89, "max": 89}
    assert lengths(chars["input"]) == {"min": 25, "median": 119, "mean": 127.2, "p95": 222, "max": 389}
    assert lengths(chars["output"]) == {"min": 7, "median": 204, "mean": 241.6, "p95": 576, "max": 990}
    # the constant 13-word instruction dominates short inputs: at 0.7, most records look alike
    near = s["near_duplicates"]
    assert near["threshold"] == 0.7 and near["key"] == "instruction + \\n + input"
    assert near["removed"] == 2776
    assert s["tokens"] is None
    assert s["top_words"]["input"][0] == ["dokter", 4869]


def test_sample_matches_the_data_card_and_writes_plots(tmp_path, capsys):
    s = run_stats(tmp_path, SAMPLE)
    assert (s["records"], s["with_input"], s["distinct_instructions"]) == (48, 40, 9)
    assert s["most_common_instruction"]["count"] == 40
    assert s["with_input_share"] == pytest.approx(40 / 48)
    assert (s["exact_duplicate_records"], s["exact_duplicate_pairs"], s["near_duplicates"]["removed"]) == (0, 0, 0)
    chars = s["chars"]
    assert lengths(chars["instruction"]) == {"min": 36, "median": 89, "mean": 83.0, "p95": 89, "max": 89}
    assert lengths(chars["input"]) == {"min": 0, "median": 163.5, "mean": 139.4, "p95": 203, "max": 219}
    assert lengths(chars["input_nonempty"]) == {"min": 124, "median": 166.5, "mean": 167.2, "p95": 203, "max": 219}
    assert lengths(chars["output"]) == {"min": 500, "median": 568, "mean": 568.8, "p95": 607, "max": 623}
    assert chars["input_nonempty"]["n"] == 40
    assert s["sources"] == [{"path": str(SAMPLE), "records": 48, "skipped": 0}]
    assert set(s) >= {"records", "distinct_instructions", "with_input", "exact_duplicate_records",
                      "exact_duplicate_pairs", "near_duplicates", "chars", "tokens", "top_words", "plots"}
    assert s["plots"] == ["lengths_chars.png", "top_words.png"]
    for name in s["plots"]:
        data = (tmp_path / "stats" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    words = dict(map(tuple, s["top_words"]["output"]))
    assert len(s["top_words"]["output"]) == 30
    assert not words.keys() & data_stats.STOPWORDS
    assert "demam" in words
    out = capsys.readouterr().out
    assert "| input_nonempty | 124 | 166.5 | 167.2 | 203 | 219 |" in out
    assert "with input: 40 (83.3%)" in out


def test_token_lengths_with_a_tokenizer_folder(tmp_path):
    folder = tmp_path / "tok"
    tokenizer = build_tokenizer(add_bos=True)
    tokenizer.save_pretrained(folder)
    s = run_stats(tmp_path, SAMPLE, "--tokenizer", folder, "--top_words", "5")
    expected = sorted(len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in sample_records())
    assert s["tokens"]["output"]["max"] == expected[-1] and s["tokens"]["output"]["min"] == expected[0]
    assert s["tokens"]["input"]["min"] == 0  # no BOS counted for an empty input
    assert s["tokens"]["instruction"]["max"] < s["chars"]["instruction"]["max"]
    assert s["tokenizer"] == str(folder)
    assert s["plots"] == ["lengths_chars.png", "lengths_tokens.png", "top_words.png"]
    assert (tmp_path / "stats" / "lengths_tokens.png").read_bytes().startswith(PNG)
    assert len(s["top_words"]["input"]) == 5


def test_duplicates_over_several_files_and_crafted_counts(tmp_path):
    instr = "Jawab sebagai dokter."
    crafted = tmp_path / "crafted.jsonl"
    rows = [
        {"instruction": instr, "input": "Saya demam demam tinggi dan batuk kering sejak kemarin malam", "output": "Istirahat."},
        {"instruction": instr, "input": "Saya demam demam tinggi dan batuk kering sejak kemarin malam", "output": "Ke dokter."},
        {"instruction": instr, "input": "Saya demam demam tinggi dan batuk kering sejak kemarin malam", "output": "Ke dokter."},
        {"instruction": instr, "input": "Saya demam tinggi dan batuk kering sejak kemarin sore", "output": "Minum air."},
        {"instruction": instr, "input": "Kulit tangan saya gatal dan bersisik setelah memakai sabun baru", "output": "Ganti sabun."},
    ]
    crafted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = run_stats(tmp_path, crafted, crafted)  # the same file twice: read as one dataset
    assert s["records"] == 10
    assert s["exact_duplicate_records"] == 1 + 5  # the repeated row, then every row again
    assert (s["exact_duplicate_pairs"], s["exact_duplicate_pair_groups"]) == (7, 3)
    assert s["near_duplicates"]["removed"] == 3 + 5  # rows 2-4 near row 1, the second copy entirely
    assert s["top_words"]["input"][0] == ["demam", 14]  # stopwords (saya, dan) left out; repeats count
    assert ["saya", 10] not in s["top_words"]["input"]
    assert len(s["sources"]) == 2
    s = run_stats(tmp_path, crafted, "--near_dup_threshold", "0")
    assert s["near_duplicates"] is None


def test_nearest_rank_percentile():
    assert data_stats.nearest_rank(list(range(1, 21)), 0.95) == 19
    assert data_stats.nearest_rank(list(range(1, 101)), 0.95) == 95
    assert data_stats.nearest_rank([7], 0.95) == 7
    assert data_stats.summarize([]) is None


def test_bad_file_exits_2_and_cli_entry_points(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": ""}\n')
    for module, args in (("data_gen.stats", []), ("data_gen", ["stats"])):
        result = run_module(module, *args, bad, "--out", tmp_path / "s", timeout=120)
        assert result.returncode == 2
        assert "line 2: empty output" in result.stderr
    assert not (tmp_path / "s").exists()
    result = run_module("data_gen", "stats", SAMPLE, "--out", tmp_path / "s", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "records: 48" in result.stdout and (tmp_path / "s" / "stats.json").exists()
