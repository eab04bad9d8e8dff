"""data_gen at scale: --workers (ordered writes, one shared pause on 429, kill -9 and resume) and
--batch_api (one upload and one batch per job, collected again after a kill, lost replies found
rather than repeated, unanswered items reported and retried), against the stand-in server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_generate import QUESTION, A, B, C
from test_translate import EN, SOURCE, read, run, scripted, sent_indices

from conftest import ROOT
from data_gen.client import RateGate
from data_gen.generate import DOCTOR_INSTRUCTION
from data_gen.generate import main as generate_main
from data_gen.parallel import run_ordered
from fake_openai_server import FakeOpenAI, Reply, format_records, json_records, translate_record


def english(n: int) -> list[dict]:
    """n distinct English records in GenMedGPT's shape (one in seven with an empty input)."""
    return [{**src, "input": src["input"] and f"{src['input']} It started {k + 1} days ago.",
             "output": f"{src['output']} Case {k}."} for k, src in ((k, SOURCE[k % len(SOURCE)]) for k in range(n))]


def expected(records: list[dict]) -> list[dict]:
    """What the stand-in's 'translation' of each record is, as translate writes it."""
    rows = []
    for i, src in enumerate(records):
        mapped = translate_record(src)
        rows.append({"instruction": DOCTOR_INSTRUCTION["id"] if src["instruction"] == EN else mapped["instruction"],
                     "input": mapped["input"] if src["input"] else "", "output": mapped["output"], "source_index": i})
    return rows


def write_source(tmp_path, records: list[dict]):
    path = tmp_path / "en.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def cli(server: FakeOpenAI, command: str, out, *args) -> subprocess.Popen:
    argv = [sys.executable, "-m", "data_gen", command, "--base_url", server.url, "--model", "fake", "--out", str(out),
            "--no_progress", "--retry_delay", "0.01", *map(str, args)]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------ the pieces


def test_run_ordered_hands_results_over_in_order_whatever_finishes_first():
    rng, lock, busy, most = random.Random(0), threading.Lock(), [0], [0]

    def work(item: int) -> int:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
            pause = rng.uniform(0, 0.02)
        time.sleep(pause)
        with lock:
            busy[0] -= 1
        if item == 37:
            raise ValueError("item 37")
        return item * 10

    items, seen = iter(range(60)), []
    with pytest.raises(ValueError, match="item 37"):
        run_ordered(lambda: next(items, None), work, lambda item, result: seen.append((item, result)), workers=6)
    assert seen == [(i, i * 10) for i in range(37)] and most[0] == 6  # in order up to the failure, 6 at once
    items, seen = iter(range(30)), []
    run_ordered(lambda: next(items, None), work, lambda item, result: seen.append(item) or item == 9, workers=4)
    assert seen == list(range(10))  # on_result said stop


class Steady:
    """Jitter that is always 1: backoff delays become exact."""

    def uniform(self, low: float, high: float) -> float:
        return 1.0


def test_rate_gate_pauses_everyone_once_then_lets_one_probe_go_first():
    gate = RateGate(retry_delay=0.1, jitter=Steady())
    first, second = gate.enter(), gate.enter()  # two requests in flight
    assert gate.pause(first, retry_after=None) == 0.1  # a 429: everyone waits
    assert gate.pause(second, retry_after=None) == 0  # sent before the pause began: no second pause
    start = time.monotonic()
    probe = gate.enter()
    assert probe[1] and time.monotonic() - start >= 0.09
    others = []
    thread = threading.Thread(target=lambda: others.append(gate.enter()))
    thread.start()
    time.sleep(0.1)
    assert not others  # waits for the probe's outcome
    assert gate.pause(probe, retry_after=None) == 0.2  # the probe was refused too: the pause doubles
    thread.join(2)
    assert others and others[0][1]  # after that pause, the waiting request is the next probe
    gate.succeeded(others[0])
    assert gate.pause(gate.enter(), retry_after=1.5) == 1.5  # after a success: back to 0.1, but Retry-After wins


# ------------------------------------------------------------------------------------------ --workers


def test_workers_with_429s_and_slow_answers_write_every_record_once_in_source_order(tmp_path, capsys):
    records = english(90)
    source, out = write_source(tmp_path, records), tmp_path / "id.jsonl"
    with FakeOpenAI(delay=0.01, jitter=0.08, rate_limit=0.15, retry_after=0.01) as server:
        code, stdout, _ = run(server, source, out, "--batch_size", 3, "--workers", 8, capsys=capsys)
    refused = sum(status == 429 for _, status in server.arrivals)
    assert code == 0, stdout
    assert read(out) == expected(records)  # every record once, in source order, whatever finished first
    assert 4 <= server.max_in_flight <= 8 and refused > 0  # concurrent, never beyond --workers
    assert len(server.requests) == 30 + refused and f"requests 30 | retries {refused} |" in stdout
    answered = [sent_indices(body) for body, (_, status) in zip(server.requests, server.arrivals) if status == 200]
    assert sorted(i for chunk in answered for i in chunk) == list(range(90))  # each record answered once


def test_a_429_pauses_every_worker_once_and_one_probe_goes_first(tmp_path, capsys):
    records = english(40)
    source, out = write_source(tmp_path, records), tmp_path / "id.jsonl"
    with FakeOpenAI(delay=0.05) as server:
        server.push(Reply(status=429, headers={"retry-after": "0.5"}))  # the first request to arrive
        code, stdout, _ = run(server, source, out, "--batch_size", 1, "--workers", 16, capsys=capsys)
    assert code == 0 and read(out) == expected(records) and "requests 40 | retries 1 |" in stdout
    times = [t for t, _ in server.arrivals]
    refused = times[0]
    assert server.arrivals[0][1] == 429 and len(times) == 41
    # Only requests sent before the 429 came back arrive early; none while the pause lasts ...
    assert sum(t <= refused + 0.15 for t in times) <= 16
    assert [t - refused for t in times if refused + 0.15 < t < refused + 0.45] == []
    # ... and after it, one probe first: the others wait for its answer (0.05 s).
    probe, *rest = [t for t in times if t >= refused + 0.45]
    assert min(rest) - probe >= 0.04


def test_kill_9_during_a_16_worker_run_then_rerun_completes_without_duplicates(tmp_path, capsys):
    records = english(300)
    source, out = write_source(tmp_path, records), tmp_path / "id.jsonl"
    with FakeOpenAI(delay=0.1, jitter=0.2) as server:
        proc = cli(server, "translate", out, "--data_path", source, "--batch_size", 2, "--workers", 16)
        wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= 40)
        kill_9(proc)
        before = out.read_text(encoding="utf-8")
        finished = before[: before.rfind("\n") + 1]  # a line cut by the kill is not a finished record
        prefix = [json.loads(line) for line in finished.splitlines()]
        assert 40 <= len(prefix) < 300
        assert [r["source_index"] for r in prefix] == list(range(len(prefix)))  # an unbroken run, in order
        code, stdout, _ = run(server, source, out, "--batch_size", 2, "--workers", 16, capsys=capsys)
    assert code == 0, stdout
    after = out.read_text(encoding="utf-8")
    assert after.startswith(finished) and read(out) == expected(records)
    assert f"({len(prefix)} before this run, {300 - len(prefix)} translated now)" in stdout


def generate(server: FakeOpenAI, out, *args) -> int:
    return generate_main(list(map(str, ["--base_url", server.url, "--model", "fake", "--out", out, "--no_progress",
                                        "--retry_delay", "0.01", *args])))


def test_generate_with_workers_keeps_them_busy_and_asks_no_more_than_needed(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    with FakeOpenAI(delay=0.05, jitter=0.05) as server:
        assert generate(server, out, "--num_records", 10, "--batch_size", 5, "--workers", 4) == 0
        assert len(read(out)) == 10
        assert server.max_in_flight <= 2  # 2 answers of 5 could make the 10: no more are sent at first
        assert generate(server, out, "--num_records", 60, "--batch_size", 5, "--workers", 4) == 0
    records = read(out)
    assert len(records) == 60 and 3 <= server.max_in_flight <= 4
    assert len({(r["instruction"], r["input"]) for r in records}) == 60
    assert "(10 before this run, 50 kept now)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- --batch_api


def batch_input(server: FakeOpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in server.files[file_id]["content"].decode().splitlines()]


def state_of(out) -> dict:
    return json.loads((out.parent / (out.name + ".batch.json")).read_text(encoding="utf-8"))


def has_batch_id(out) -> bool:
    return (out.parent / (out.name + ".batch.json")).exists() and bool(state_of(out)["batch_id"])


def test_batch_api_sends_one_file_and_one_batch_and_writes_every_record(tmp_path, capsys):
    source, out = write_source(tmp_path, SOURCE), tmp_path / "id.jsonl"
    with FakeOpenAI() as server:
        code, stdout, _ = run(server, source, out, "--batch_size", 3, "--batch_api", "--poll_interval", 0.02,
                              "--max_new_tokens", 900, "--price_per_1k", "0.5,2", capsys=capsys)
    assert code == 0, stdout
    assert read(out) == expected(SOURCE)
    assert len(server.uploads) == 1 and len(server.batches) == 1 and server.requests == []  # nothing synchronous
    lines = batch_input(server, server.uploads[0])
    assert [(x["custom_id"], x["method"], x["url"]) for x in lines] == [
        ("0", "POST", "/v1/chat/completions"), ("1", "POST", "/v1/chat/completions"), ("2", "POST", "/v1/chat/completions")]
    assert [[r["index"] for r in json_records(x["body"]["messages"][-1]["content"])] for x in lines] == [[0, 1, 2], [3, 4, 5], [6]]
    assert lines[0]["body"]["max_tokens"] == 900 and lines[0]["body"]["model"] == "fake"
    batch_id = next(iter(server.batches))
    assert f"Batch API {batch_id}: completed; 3 requests, 3 answered, 0 not; records translated 7, not 0" in stdout
    usage = next(ln for ln in stdout.splitlines() if ln.startswith("requests"))
    prompt = int(usage.split("(prompt ")[1].split(",")[0].replace(",", ""))
    completion = int(usage.split("completion ")[1].split(")")[0].replace(",", ""))
    assert usage.startswith("requests 3 (3 through the Batch API)") and "(Batch API tokens at 50%)" in usage
    assert f"estimated cost ${(prompt * 0.5 + completion * 2) / 1000 / 2:.4f}" in usage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en.json", "id.jsonl"]  # the state is gone


def test_a_rerun_after_kill_9_collects_the_same_batch_and_pays_nothing_twice(tmp_path, capsys):
    source, out = write_source(tmp_path, SOURCE), tmp_path / "id.jsonl"
    with FakeOpenAI() as server:
        server.batch_gate.clear()  # the batch stays in_progress
        proc = cli(server, "translate", out, "--data_path", source, "--batch_size", 2, "--batch_api",
                   "--poll_interval", 0.05)
        wait_for(lambda: has_batch_id(out))
        kill_9(proc)
        batch_id = state_of(out)["batch_id"]
        assert list(server.batches) == [batch_id] and len(server.uploads) == 1
        server.batch_gate.set()
        # Without --batch_api, or with another model, the open batch is not paid for again.
        code, _, stderr = run(server, source, out, "--batch_size", 2, capsys=capsys)
        assert code == 2 and "a Batch API batch for" in stderr and "Rerun with --batch_api" in stderr
        code, _, stderr = run(server, source, out, "--batch_api", "--model", "other", "--poll_interval", 0.02,
                              capsys=capsys)
        assert code == 2 and "its batch was made with" in stderr
        assert server.requests == [] and len(server.batches) == 1
        code, stdout, _ = run(server, source, out, "--batch_size", 2, "--batch_api", "--poll_interval", 0.02,
                              capsys=capsys)
    assert code == 0, stdout
    assert f"Batch API {batch_id}: completed; 4 requests, 4 answered" in stdout
    assert read(out) == expected(SOURCE) and len(server.uploads) == 1 and len(server.batches) == 1
    assert len(server.batch_requests) == 4 and server.requests == []
    assert not (out.parent / "id.jsonl.batch.json").exists()


def test_lost_replies_to_upload_and_batch_creation_are_looked_up_not_repeated(tmp_path, capsys):
    source = write_source(tmp_path, SOURCE)
    with FakeOpenAI() as server:
        # The server did the work but the reply never came: as if killed between the call and saving its id.
        out = tmp_path / "killed.jsonl"
        server.lose_response["POST /v1/files"] = 1
        code, _, stderr = run(server, source, out, "--batch_api", "--max_retries", 0, capsys=capsys)
        assert code == 1 and "Batch API" in stderr and "Rerun the same command" in stderr
        assert len(server.uploads) == 1 and state_of(out)["input_file_id"] is None
        server.lose_response["POST /v1/batches"] = 1
        code, _, _ = run(server, source, out, "--batch_api", "--max_retries", 0, capsys=capsys)
        assert code == 1 and len(server.uploads) == 1 and len(server.batches) == 1 and state_of(out)["batch_id"] is None
        code, stdout, _ = run(server, source, out, "--batch_api", "--poll_interval", 0.02, capsys=capsys)
        assert code == 0 and read(out) == expected(SOURCE), stdout
        assert len(server.uploads) == 1 and len(server.batches) == 1
        # Within one run, our retry looks before it sends again.
        out = tmp_path / "retried.jsonl"
        server.lose_response.update({"POST /v1/files": 1, "POST /v1/batches": 1})
        code, stdout, _ = run(server, source, out, "--batch_api", "--poll_interval", 0.02, capsys=capsys)
        assert code == 0 and read(out) == expected(SOURCE) and "retries 2" in stdout
        assert len(server.uploads) == 2 and len(server.batches) == 2  # one more of each, for the second --out


def spoiled_batch(server: FakeOpenAI) -> None:
    """Requests (batch_size 2) 0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6]. Record 1 comes back untranslated,
    request 1 fails with HTTP 500, and the batch expires before request 3."""
    server.batch_replies.update({"0": Reply(scripted({1: "copy"})), "1": Reply(status=500)})
    server.expire_after = 3


def test_expired_and_failed_batch_items_are_reported_and_retried_through_the_normal_path(tmp_path, capsys):
    source, out = write_source(tmp_path, SOURCE), tmp_path / "id.jsonl"
    with FakeOpenAI() as server:
        spoiled_batch(server)
        code, stdout, _ = run(server, source, out, "--batch_size", 2, "--batch_api", "--poll_interval", 0.02,
                              "--workers", 2, capsys=capsys)
    assert code == 0, stdout
    batch_id = next(iter(server.batches))
    assert (f"Batch API {batch_id}: expired; 4 requests, 2 answered, 2 not (HTTP 500 1, batch_expired 1); "
            "records translated 3, not 4 (HTTP 500 2, untranslated 1, batch_expired 1)") in stdout
    assert sorted(sent_indices(body) for body in server.requests) == [[1, 2], [3, 6]]  # the normal path
    assert read(out) == expected(SOURCE)  # in source order again, though 1, 2, 3, 6 came last
    assert out.stat().st_mode & 0o777 != 0o600  # the rewrite keeps a shareable mode, not mkstemp's private one


def test_batch_failed_list_reports_the_items_and_a_rerun_batches_only_those(tmp_path, capsys):
    source, out = write_source(tmp_path, SOURCE), tmp_path / "id.jsonl"
    with FakeOpenAI() as server:
        spoiled_batch(server)
        code, stdout, stderr = run(server, source, out, "--batch_size", 2, "--batch_api", "--poll_interval", 0.02,
                                   "--batch_failed", "list", capsys=capsys)
        assert code == 3 and server.requests == [] and "4 record(s) could not be translated" in stderr
        assert "NOT translated 4 (source index, reason): 1 (untranslated), 2 (HTTP 500), 3 (HTTP 500), 6 (batch_expired)" in stdout
        assert sorted(r["source_index"] for r in read(out)) == [0, 4, 5]
        server.batch_replies.clear()
        server.expire_after = None
        code, stdout, _ = run(server, source, out, "--batch_size", 2, "--batch_api", "--poll_interval", 0.02,
                              "--batch_failed", "list", capsys=capsys)
    assert code == 0, stdout
    assert len(server.uploads) == 2 and len(server.batches) == 2 and server.requests == []
    second = batch_input(server, server.uploads[1])
    assert [[r["index"] for r in json_records(x["body"]["messages"][-1]["content"])] for x in second] == [[1, 2], [3, 6]]
    assert read(out) == expected(SOURCE)


def test_generate_by_batch_handles_answers_in_request_order_and_tops_up_the_normal_way(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    with FakeOpenAI() as server:
        server.batch_replies.update({"0": Reply(format_records([A, B])), "1": Reply(status=500),
                                     "2": Reply(format_records([C, QUESTION]))})
        code = generate(server, out, "--num_records", 12, "--batch_size", 5, "--batch_api", "--poll_interval", 0.02)
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    records = read(out)
    assert len(records) == 12 and records[:4] == [A, B, C, QUESTION]
    assert len(server.batch_requests) == 3 and all("Buatlah 5 contoh" in b["messages"][-1]["content"]
                                                   for b in server.batch_requests)
    assert len(server.uploads) == 1 and len(server.batches) == 1 and len(server.requests) >= 2  # 8 more, 5 per answer
    assert "3 requests, 2 answered, 1 not (HTTP 500 1); records kept 4" in stdout


def test_bad_scale_flags_are_reported(tmp_path, capsys):
    source = write_source(tmp_path, SOURCE)
    with FakeOpenAI() as server:
        code, _, stderr = run(server, source, tmp_path / "x.jsonl", "--workers", 0, "--poll_interval", 0, capsys=capsys)
    assert code == 2 and "--workers must be at least 1" in stderr and "--poll_interval must be more than 0" in stderr


def test_a_batch_refused_as_a_whole_says_why_and_the_next_run_starts_afresh(tmp_path, capsys):
    source, out = write_source(tmp_path, SOURCE), tmp_path / "id.jsonl"
    with FakeOpenAI() as server:
        server.refuse_batches = "model fake is not available in the Batch API"
        code, _, stderr = run(server, source, out, "--batch_api", "--poll_interval", 0.02, capsys=capsys)
        assert code == 1 and "Traceback" not in stderr
        assert "failed: model fake is not available in the Batch API. Nothing in it was answered or billed" in stderr
        assert not (tmp_path / "id.jsonl.batch.json").exists() and server.requests == []
        server.refuse_batches = None
        code, _, _ = run(server, source, out, "--batch_api", "--poll_interval", 0.02, capsys=capsys)
    assert code == 0 and read(out) == expected(SOURCE) and len(server.batches) == 2


def test_generate_collects_its_batch_after_a_kill_and_writes_no_record_twice(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    with FakeOpenAI() as server:
        server.batch_replies.update({"0": Reply(format_records([A, B])), "1": Reply(format_records([C, QUESTION]))})
        server.batch_gate.clear()
        proc = cli(server, "generate", out, "--num_records", 4, "--batch_size", 2, "--batch_api", "--poll_interval", 0.05)
        wait_for(lambda: has_batch_id(out))
        kill_9(proc)
        # As if the killed run had collected the batch and written its first answer's records.
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (A, B)), encoding="utf-8")
        server.batch_gate.set()
        code = generate(server, out, "--num_records", 4, "--batch_size", 2, "--batch_api", "--poll_interval", 0.02)
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert read(out) == [A, B, C, QUESTION]  # A and B are in --out already: rejected as duplicates, not written again
    assert "rejected 2 (duplicate 2)" in stdout and "(2 before this run, 2 kept now)" in stdout
    assert len(server.uploads) == 1 and len(server.batches) == 1 and server.requests == []
