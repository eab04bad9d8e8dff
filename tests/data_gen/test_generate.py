"""`python -m data_gen generate` against a scripted local OpenAI-compatible server (the real openai
client over HTTP), and once against our own app's /v1/chat/completions with a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from data_gen.client import ChatClient, ClientError
from data_gen.generate import build_prompt, dedup_key, main, parse_answer
from data_gen.rouge import rouge_l, tokenize
from fake_openai_server import INSTRUCTION, FakeOpenAI, Reply, format_records
from trainer.records import load_records

SEEDS = [json.loads(line) for line in (ROOT / "data" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def patient(text: str, output: str | None = None) -> dict:
    return {"instruction": INSTRUCTION, "input": text, "output": output or (
        "Keluhan Anda mengarah ke infeksi yang perlu diperiksa. Saya sarankan pemeriksaan darah lengkap dan istirahat "
        "yang cukup, minum banyak air, dan segera ke dokter bila keluhan memberat.")}


A = patient("Dokter, sudah tiga hari saya batuk berdahak kuning dan demam sore hari, dada terasa berat saat menarik napas.")
B = patient("Dok, anak saya umur empat tahun muntah lima kali sejak pagi, tidak mau minum, dan bibirnya terlihat kering.")
C = patient("Selamat malam dokter, pergelangan kaki kiri saya bengkak dan biru setelah terkilir waktu main futsal tadi sore.")
QUESTION = {"instruction": "Bagaimana cara merawat luka bakar ringan karena terkena minyak panas di rumah?", "input": "",
            "output": "Segera aliri luka dengan air mengalir yang sejuk selama sekitar dua puluh menit, jangan memakai es, "
                      "pasta gigi, atau mentega. Tutup dengan kasa bersih dan minum obat pereda nyeri bila perlu."}


def run(server: FakeOpenAI, out, *args: str, capsys=None) -> tuple[int, str, str]:
    argv = ["--base_url", server.url, "--model", "fake", "--out", str(out), "--no_progress", "--retry_delay", "0.01",
            *map(str, args)]
    code = main(argv)
    captured = capsys.readouterr() if capsys else None
    return code, (captured.out if captured else ""), (captured.err if captured else "")


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary_counts(text: str) -> dict:
    """The 'candidates N: kept K, rejected R (reason n, ...)' line as numbers."""
    line = next(ln for ln in text.splitlines() if ln.startswith("candidates"))
    head, _, reasons = line.partition("(")
    counts = {"candidates": int(head.split()[1].rstrip(":")), "kept": int(head.split("kept ")[1].split(",")[0]),
              "rejected": int(head.split("rejected ")[1].split()[0])}
    for item in reasons.rstrip(")").split(", "):
        if item and item != "none":
            name, n = item.rsplit(" ", 1)
            counts[name] = int(n)
    return counts


# ------------------------------------------------------------------------------------------ parsing


def test_parses_stanford_alpaca_lists_indonesian_labels_and_json():
    sa = ("###\n1. Instruction: Give three tips for staying healthy.\n1. Input:\n<noinput>\n1. Output:\n"
          "Eat well, sleep enough and exercise.\n###\n2. Instruction: Explain flu. Input: I have a cough. "
          "Output: Flu is a viral infection.\n###")
    records, fmt = parse_answer(sa)
    assert fmt == "numbered" and [r["instruction"] for r in records] == ["Give three tips for staying healthy.", "Explain flu."]
    assert records[0]["input"] == "<noinput>" and records[0]["output"] == "Eat well, sleep enough and exercise."
    assert records[1] == {"instruction": "Explain flu.", "input": "I have a cough.", "output": "Flu is a viral infection."}

    records, fmt = parse_answer("Berikut contohnya:\n" + format_records([A, QUESTION]) + "\nSemoga membantu.")
    assert fmt == "numbered" and records == [A, {**QUESTION, "input": "<kosong>"}]  # prose after the last ### is not kept

    tanggapan = "1. **Instruksi:** Apa itu DBD?\n**Masukan:** -\n**Tanggapan:** Demam berdarah dengue, ditularkan nyamuk."
    assert parse_answer(tanggapan)[0] == [{"instruction": "Apa itu DBD?", "input": "-", "output": "Demam berdarah dengue, ditularkan nyamuk."}]

    fenced = "Tentu!\n```json\n" + json.dumps([{"instruksi": "X y z", "masukan": "", "keluaran": "a b"}, A]) + "\n```"
    assert parse_answer(fenced) == ([{"instruction": "X y z", "input": "", "output": "a b"}, A], "json")
    assert parse_answer(json.dumps({"records": [A, B]}))[0] == [A, B]  # a wrapper object
    assert parse_answer(json.dumps(A) + "\n" + json.dumps(B))[0] == [A, B]  # JSON Lines
    assert parse_answer(json.dumps([A, B])[:-40]) == ([A], "json")  # cut off: the complete object survives
    assert parse_answer("Maaf, saya tidak bisa membantu.") == ([], "none")
    assert parse_answer("Tolong berikan masukan: apakah ini benar?") == ([], "none")  # not a label mid-sentence


def test_prompt_shows_examples_and_asks_for_the_batch():
    prompt = build_prompt([A, QUESTION], 7, "id")
    assert "Buatlah 7 contoh" in prompt and A["input"] in prompt and "Masukan: <kosong>" in prompt
    assert INSTRUCTION in prompt and "1. Instruksi:" in prompt
    english = build_prompt([], 4, "en")
    assert "Write 4 new examples" in english and "Input: ..." in english and "Contoh" not in english


def test_dedup_key_is_instruction_and_input():
    assert dedup_key(A) == INSTRUCTION + "\n" + A["input"]
    assert dedup_key(QUESTION) == QUESTION["instruction"] + "\n"
    assert dedup_key(A, "input") == A["input"] and dedup_key(QUESTION, "input") == QUESTION["instruction"]


# --------------------------------------------------------------------------------------- filtering


def test_records_are_kept_or_rejected_by_reason(server, tmp_path, capsys):
    english = {"instruction": "Explain what to do when someone has a high fever at home.", "input": "",
               "output": "Give them plenty of fluids, let them rest, and use paracetamol if the fever is uncomfortable."}
    candidates = [
        A, QUESTION,
        {**B, "output": ""},  # empty output
        {**C, "input": 12},  # a number, not a string
        {"instruction": INSTRUCTION, "input": "Dok, saya sakit gigi."},  # no output
        {**C, "instruction": "Jelaskan gambar rontgen berikut ini untuk pasien."},  # blacklist: an image
        english,  # language
        {**C, "output": "Istirahat saja."},  # too short
        {**B, "output": " ".join(["minum air putih yang cukup"] * 100)},  # too long
    ]
    server.push(Reply("Maaf, saya tidak mengerti permintaan Anda."),  # unparsable: logged and skipped
                Reply("```json\n" + json.dumps(candidates, ensure_ascii=False) + "\n```"))
    out = tmp_path / "gen.jsonl"
    code, stdout, stderr = run(server, out, "--num_records", 50, "--max_requests", 2, capsys=capsys)
    assert code == 0, stderr
    assert read(out) == [A, QUESTION]
    counts = summary_counts(stdout)
    assert counts == {"candidates": 9, "kept": 2, "rejected": 7, "empty_output": 1, "non_string": 1,
                      "missing_field": 1, "blacklist": 1, "language": 1, "too_short": 1, "too_long": 1}
    assert "answers 2: " in stdout and "unparsable 1" in stdout and "json 1" in stdout
    assert "no records found" in stderr  # the bad answer is logged
    assert "stopped at --max_requests 2" in stdout
    assert len(load_records(str(out)).records) == 2


def test_near_duplicates_are_rejected_but_the_same_instruction_with_other_inputs_is_kept(server, tmp_path, capsys):
    near_a = {**A, "input": A["input"].replace("tiga hari", "empat hari")}
    near_seed = {**SEEDS[0], "input": SEEDS[0]["input"].replace("Dokter,", "Dok,")}
    assert rouge_l(tokenize(dedup_key(near_a)), tokenize(dedup_key(A))) >= 0.7
    server.push(Reply(format_records([A, B, C])),  # one instruction, three inputs: all kept
                Reply(format_records([near_a, B, near_seed, QUESTION])))
    out = tmp_path / "gen.jsonl"
    code, stdout, _ = run(server, out, "--num_records", 10, "--max_requests", 2, capsys=capsys)
    assert code == 0
    assert read(out) == [A, B, C, QUESTION]
    assert summary_counts(stdout) == {"candidates": 7, "kept": 4, "rejected": 3, "duplicate": 3}


def test_an_answer_cut_at_max_tokens_loses_its_last_record(server, tmp_path, capsys):
    server.push(Reply(format_records([A, B])[:-60], finish_reason="length"))
    out = tmp_path / "gen.jsonl"
    code, stdout, _ = run(server, out, "--num_records", 5, "--max_requests", 1, capsys=capsys)
    assert code == 0 and read(out) == [A]
    assert summary_counts(stdout)["truncated"] == 1


def test_requests_carry_batch_size_examples_and_settings(server, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    code, _, _ = run(server, out, "--num_records", 5, "--batch_size", 4, "--num_prompt_examples", 2, "--max_new_tokens", 900,
                     "--temperature", 0.5, capsys=capsys)
    assert code == 0 and len(read(out)) == 5
    body = server.requests[0]
    prompt = body["messages"][-1]["content"]
    assert "Buatlah 4 contoh" in prompt and body["max_tokens"] == 900 and body["temperature"] == 0.5
    assert sum(s["output"] in prompt for s in SEEDS) == 2  # two sampled seed examples
    assert load_records(str(out)).records == read(out)


# ---------------------------------------------------------------------------------- client, retries


def test_429_then_success_is_retried_and_usage_is_counted(server):
    server.push(Reply(status=429, headers={"retry-after": "0"}), Reply("halo"))
    client = ChatClient(server.url, "fake", retry_delay=0.01, max_retries=3)
    answer = client.complete("satu dua tiga")
    assert answer.text == "halo" and answer.finish_reason == "stop"
    assert len(server.requests) == 2 and client.usage.retries == 1 and client.usage.requests == 1
    assert (client.usage.prompt_tokens, client.usage.completion_tokens) == (3, 1)


def test_retries_are_bounded_with_exponential_backoff(server):
    server.push(*[Reply(status=500)] * 10)
    client = ChatClient(server.url, "fake", retry_delay=0.02, max_retries=3)
    start = time.perf_counter()
    with pytest.raises(ClientError, match=r"HTTP 500 .*gave up after 4 attempts \(1 \+ --max_retries 3\)"):
        client.complete("x")
    elapsed = time.perf_counter() - start
    assert len(server.requests) == 4 and client.usage.retries == 3  # the openai client's own retries are off
    assert 0.02 * (1 + 2 + 4) * 0.5 <= elapsed < 5  # 0.02 + 0.04 + 0.08 s, +-50% jitter


def test_a_slow_answer_times_out_and_is_retried(server):
    server.push(Reply("terlambat", delay=2.0), Reply("tepat waktu"))
    client = ChatClient(server.url, "fake", retry_delay=0.01, timeout=0.5)
    assert client.complete("x").text == "tepat waktu"
    assert len(server.requests) == 2 and client.usage.retries == 1


def test_client_errors_are_not_retried_and_say_what_to_fix(server):
    server.push(Reply(status=404))
    client = ChatClient(server.url, "no-such-model", retry_delay=0.01)
    with pytest.raises(ClientError, match=r"HTTP 404 .*Check --base_url .* and --model 'no-such-model'"):
        client.complete("x")
    assert len(server.requests) == 1
    with pytest.raises(ClientError, match="cannot connect"):
        ChatClient("http://127.0.0.1:9/v1", "m", retry_delay=0.001, max_retries=1).complete("x")


def test_cost_estimate_and_missing_usage(server, tmp_path, capsys):
    server.push(Reply(format_records([A]), usage=False))
    out = tmp_path / "gen.jsonl"
    code, stdout, _ = run(server, out, "--num_records", 2, "--batch_size", 1, "--price_per_1k", "0.5,2", capsys=capsys)
    assert code == 0 and len(read(out)) == 2
    usage = next(ln for ln in stdout.splitlines() if ln.startswith("requests"))
    assert "requests 2 | retries 0" in usage and "1 answer(s) without usage" in usage
    # Only the second answer reported usage; the fake server counts words: the prompt's and the answer's.
    prompt = len(server.requests[1]["messages"][-1]["content"].split())
    assert f"(prompt {prompt:,}, completion " in usage
    completion = int(usage.split("completion ")[1].split(")")[0].replace(",", ""))
    assert completion > 0 and f"estimated cost ${(prompt * 0.5 + completion * 2) / 1000:.4f}" in usage


# --------------------------------------------------------------------------- CLI: errors and resume


def cli(server: FakeOpenAI, out, *args, **kwargs) -> subprocess.Popen:
    argv = [sys.executable, "-m", "data_gen", "generate", "--base_url", server.url, "--model", "fake", "--out", str(out),
            "--no_progress", "--retry_delay", "0.01", *map(str, args)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_exhausted_retries_say_how_many_were_written_and_how_to_resume(server, tmp_path):
    server.push(Reply(format_records([A, B, C])), *[Reply(status=503)] * 3)
    out = tmp_path / "gen.jsonl"
    proc = cli(server, out, "--num_records", 5, "--batch_size", 3, "--max_retries", 2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    assert "HTTP 503" in stderr and "gave up after 3 attempts (1 + --max_retries 2)" in stderr
    assert f"{out} holds 3 record(s), 3 written by this run. Rerun the same command to resume" in stderr
    assert len(server.requests) == 4 and read(out) == [A, B, C]
    # The same command again: the server is well now, and the run completes without repeating records.
    proc = cli(server, out, "--num_records", 5, "--batch_size", 3, "--max_retries", 2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    records = read(out)
    assert len(records) == 5 and records[:3] == [A, B, C] and "(3 before this run, 2 kept now)" in stdout


def test_resume_after_kill_9_keeps_every_finished_record_and_adds_no_duplicates(tmp_path):
    out, target = tmp_path / "gen.jsonl", 12
    with FakeOpenAI(delay=0.4) as server:  # slow answers: the kill lands between records
        proc = cli(server, out, "--num_records", target, "--batch_size", 3, start_new_session=True)
        deadline = time.time() + 60
        while (not out.exists() or out.read_bytes().count(b"\n") < 4) and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        before = out.read_text(encoding="utf-8")
        finished = before[: before.rfind("\n") + 1]  # a line cut by the kill is not a finished record
        assert proc.returncode == -signal.SIGKILL and 4 <= finished.count("\n") < target
        proc = cli(server, out, "--num_records", target, "--batch_size", 3)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    after = out.read_text(encoding="utf-8")
    assert after.startswith(finished)  # finished records survive, in order
    records = read(out)
    keys = [dedup_key(r) for r in records]
    assert len(records) == target and len(set(keys)) == target
    assert all(rouge_l(tokenize(a), tokenize(b)) < 0.7 for i, a in enumerate(keys) for b in keys[i + 1:])
    assert load_records(str(out)).records == records


def test_a_torn_last_line_is_dropped_and_the_index_is_seeded_from_the_file(server, tmp_path, capsys, caplog):
    out = tmp_path / "gen.jsonl"
    out.write_text(json.dumps(A, ensure_ascii=False) + "\n" + json.dumps(B, ensure_ascii=False)[:50], encoding="utf-8")
    server.push(Reply(format_records([A, C])))  # A is already in the file: a duplicate now
    code, stdout, stderr = run(server, out, "--num_records", 2, capsys=capsys)
    assert code == 0
    assert "dropped an incomplete last line (50 bytes)" in caplog.text
    assert read(out) == [A, C]
    assert "(1 before this run, 1 kept now)" in stdout and summary_counts(stdout)["duplicate"] == 1
    code, stdout, _ = run(server, out, "--num_records", 2, capsys=capsys)  # done already: no request
    assert code == 0 and "already done" in stdout and len(server.requests) == 1


def test_a_model_that_never_follows_the_format_stops_with_a_resumable_error(server, tmp_path, capsys):
    server.push(*[Reply("Tidak tahu.")] * 3)
    out = tmp_path / "gen.jsonl"
    code, stdout, stderr = run(server, out, "--num_records", 5, "--patience", 3, capsys=capsys)
    assert code == 1 and len(server.requests) == 3
    assert "3 answers in a row kept no record (--patience 3)" in stderr and "Rerun the same command" in stderr


def test_bad_flags_and_a_foreign_output_file_are_reported(server, tmp_path, capsys):
    code, _, stderr = run(server, tmp_path / "x.jsonl", "--num_records", 0, "--rouge_threshold", 2, capsys=capsys)
    assert code == 2 and "--num_records must be at least 1" in stderr and "--rouge_threshold" in stderr
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"text": "bukan alpaca"}\n', encoding="utf-8")
    code, _, stderr = run(server, foreign, "--num_records", 3, capsys=capsys)
    assert code == 2 and "is not Alpaca data" in stderr and not server.requests


def test_command_line_help():
    for args, expected in ((["--help"], "translate"), (["generate", "--help"], "--num_records"),
                           (["translate", "--help"], "--record_retries")):
        result = subprocess.run([sys.executable, "-m", "data_gen", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and expected in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-m", "data_gen", "nonsense"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "choose one of: generate, translate, convert, stats" in result.stderr


# ------------------------------------------------------------------------------- against our own app


def test_end_to_end_against_our_app_with_a_tiny_model(tiny_llama, tmp_path, capsys):
    from test_app import serve

    from trainer.serve.inference import ChatModel

    chat = ChatModel.load(str(tiny_llama), template="alpaca-id")
    url, app_server = serve(chat)
    try:
        out = tmp_path / "gen.jsonl"
        # No examples in the prompt: the tiny model's context is 1,024 tokens.
        code = main(["--base_url", f"{url}/v1", "--model", chat.name, "--out", str(out), "--num_records", "3",
                     "--batch_size", "2", "--num_prompt_examples", "0", "--max_new_tokens", "96", "--max_requests", "2",
                     "--patience", "0", "--no_progress"])
        stdout = capsys.readouterr().out
    finally:
        app_server.should_exit = True
    assert code == 0, stdout
    assert chat.last.prompt_tokens > 0 and 0 < chat.last.new_tokens <= 96  # the requests reached the model
    answers = next(ln for ln in stdout.splitlines() if ln.startswith("answers"))
    assert answers.startswith("answers 2: ")
    assert sum(int(part.rsplit(" ", 1)[1]) for part in answers.split(": ", 1)[1].split(", ")) == 2
    counts = summary_counts(stdout)
    assert counts["candidates"] == counts["kept"] + counts["rejected"]
    assert counts["rejected"] == sum(v for k, v in counts.items() if k not in ("candidates", "kept", "rejected"))
    assert "requests 2 | retries 0" in stdout
    kept = read(out) if out.exists() else []
    assert len(kept) == counts["kept"]
    if kept:
        assert load_records(str(out)).records == kept
