"""`python app.py` as a process, as a Space runs it: ratings through gradio_client land in the feedback file (and,
with FEEDBACK_REPO, in the Hub stand-in's dataset repo), the chat is an MCP tool for the real `mcp` client, and a
`kill -9` loses no acknowledged rating. One server (smollm2-135m) for the module; the kill test comes last."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from gradio_client import Client

from conftest import ROOT, free_port

sys.path.insert(0, str(ROOT / "tests" / "trainer" / "hub"))
from test_push import TOKEN, hub_env, serve_hub  # noqa: E402  the Hub stand-in

pytestmark = pytest.mark.slow
QUESTION = "Saya demam sejak kemarin, apa yang harus saya lakukan?"
SETTINGS = {"max_new_tokens": 4, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}
REPO = "me/medis-feedback"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("ratings")
    ratings = home / "feedback" / "ratings.jsonl"
    port = free_port()
    with serve_hub() as hub:
        env = {**hub_env(hub, home), "FEEDBACK_REPO": REPO, "FEEDBACK_EVERY_MINUTES": "0.02",  # a push every 1.2 s
               "GRADIO_ANALYTICS_ENABLED": "False", "ALPACA_MEDIS_HOME": os.environ.get("ALPACA_MEDIS_HOME", "")}
        command = [sys.executable, "app.py", "--model", "smollm2-135m", "--port", str(port), "--max_batch", "1",
                   "--quantize", "none", "--feedback_file", str(ratings)]
        log = home / "server.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "app.py did not start"
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            yield url, process, ratings, hub, log
        finally:
            process.kill()
            process.wait(timeout=30)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_fifty_concurrent_ratings_are_fifty_lines(server):
    url, _, ratings, _, log = server
    before = len(lines(ratings))
    client = Client(url, verbose=False)
    jobs = [client.submit(QUESTION, f"Jawaban {i}.", ("like", "dislike")[i % 2], None, SETTINGS, api_name="/rate")
            for i in range(50)]
    ids = [job.result(timeout=120) for job in jobs]
    records = lines(ratings)[before:]
    assert len(records) == 50 and {r["id"] for r in records} == set(ids)
    assert sorted(r["answer"] for r in records) == sorted(f"Jawaban {i}." for i in range(50))
    assert all(r["model"] == "smollm2-135m" and r["revision"].startswith("sha256:") for r in records)
    assert "stand-in" not in log.read_text() and TOKEN not in log.read_text()


def test_an_answer_disliked_with_a_correction(server):
    url, _, ratings, _, _ = server
    client = Client(url, verbose=False)
    answer = client.predict(QUESTION, *SETTINGS.values(), api_name="/ask")
    history = [{"role": "user", "content": "Halo dokter."}, {"role": "assistant", "content": "Halo, ada keluhan apa?"},
               {"role": "user", "content": QUESTION}]
    rating_id = client.predict(history, answer, "dislike", "Minum banyak air, istirahat, dan periksa bila > 3 hari.",
                               SETTINGS, api_name="/rate")
    record = next(r for r in lines(ratings) if r["id"] == rating_id)
    assert record["messages"] == history and record["answer"] == answer and record["rating"] == "dislike"
    assert record["correction"] == "Minum banyak air, istirahat, dan periksa bila > 3 hari."
    assert record["settings"] == SETTINGS and record["time"].endswith("Z")
    before = ratings.read_bytes()
    with pytest.raises(Exception, match="rating must be one of like, dislike, not 'meh'"):
        client.predict(history, answer, "meh", None, SETTINGS, api_name="/rate")
    with pytest.raises(Exception, match="the answer is missing"):
        client.predict(history, "", "like", None, SETTINGS, api_name="/rate")
    assert ratings.read_bytes() == before


def test_ratings_are_pushed_to_the_dataset_repo(server):
    url, _, ratings, hub, _ = server
    Client(url, verbose=False).predict(QUESTION, "Istirahat.", "like", None, SETTINGS, api_name="/rate")
    local = ratings.read_bytes()
    deadline = time.time() + 60
    while True:  # the scheduler pushes every 1.2 s
        with hub.lock:
            files = dict(hub.repos.get(("dataset", REPO), {}).get("files", {}))
        if any(content == local for content in files.values()):
            break
        assert time.time() < deadline, f"not pushed: {sorted(files)}"
        time.sleep(0.2)
    (name,) = files
    assert name.startswith("runs/") and name.endswith("/ratings.jsonl")
    assert hub.repos[("dataset", REPO)]["private"]


def mcp_session(url: str, questions: list[str]):
    """The tools the page's MCP server lists, and the answers of its first tool to `questions`."""
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    async def run():
        async with sse_client(f"{url}/gradio_api/mcp/sse") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            results = [await session.call_tool(tools[0].name, {"message": q, "max_new_tokens": 4}) for q in questions]
            return tools, results

    return asyncio.run(run())


def test_the_chat_is_an_mcp_tool(server):
    url = server[0]
    stroke = "Ayah saya tiba-tiba bicaranya pelo dan wajahnya mencong, apa yang harus kami lakukan?"
    tools, results = mcp_session(url, [QUESTION, stroke])
    assert [t.name for t in tools] == ["ask_health_question"]  # not /rate, not the ChatInterface's internals
    (tool,) = tools
    assert "NOT medical advice" in tool.description and all(w in tool.description for w in ("IGD", "119", "112"))
    assert tool.inputSchema["required"] == ["message"] and "Indonesian" in tool.inputSchema["properties"]["message"]["description"]
    texts = [r.content[0].text for r in results]
    assert not any(r.isError for r in results)
    assert texts[0] == Client(url, verbose=False).predict(QUESTION, 4, api_name="/ask")  # greedy: the same answer
    assert texts[1].startswith("🚨 **Tanda bahaya: tanda stroke") and len(texts[1]) > 200


def test_kill_9_during_a_burst_loses_no_acknowledged_rating(server):
    url, process, ratings, _, _ = server
    acknowledged, ended = [], []

    def rate_until_the_server_dies(k):
        client = Client(url, verbose=False)
        try:
            for i in range(10_000):
                acknowledged.append(client.predict(QUESTION, f"Jawaban {k}-{i}.", "like", None, SETTINGS, api_name="/rate"))
        except Exception as e:  # the server is gone
            ended.append(type(e).__name__)

    threads = [threading.Thread(target=rate_until_the_server_dies, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while len(acknowledged) < 40:
        assert time.time() < deadline and process.poll() is None, "no burst"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    for t in threads:
        t.join(timeout=60)
    assert len(ended) == 4, ended  # every rater was mid-burst when the server died
    records = lines(ratings)  # every line parses
    assert set(acknowledged) <= {r["id"] for r in records}
    assert ratings.read_bytes().endswith(b"\n")
