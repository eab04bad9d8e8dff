"""RemoteChat (`python app.py --backend URL`) against a real OpenAI-compatible server: `transformers serve` on a
tiny model folder, started once for the session (tests/conftest.py's `backend`). What no real engine does on demand
(a 429, a 401, a model that starts a new turn) comes from a few canned HTTP answers instead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from gradio_client import Client
from openai import APIStatusError, OpenAI

import app
from conftest import OFFLINE, ROOT, free_port, start_server
from trainer.serve.inference import BusyError, ChatModel, GenerationStats, InputError
from trainer.serve.remote import BackendError, RemoteChat, api_key_from_env

QUESTION = "Dokter, kenapa saya sering pusing saat bangun tidur?"
HISTORY = [{"role": "user", "content": "Halo dok"}, {"role": "assistant", "content": "Halo, ada yang bisa dibantu?"}]
GREEDY = dict(temperature=0.0, top_p=1.0)


def serve_app(chat, config: dict = app.DEFAULTS):
    """Our app (page + /v1) in front of `chat`, on a free port in a thread: (url, server)."""
    return start_server(app.build_app(chat, config), "our app")


def same_text(remote: str, local: str) -> bool:
    """Equal, but for a last token that is an incomplete UTF-8 sequence (a random tiny model emits those): a whole
    decode (ChatModel's streamer, at its end) shows it as U+FFFD, a streaming decoder (transformers serve's
    DecodeStream) waits for the rest of the character, which never comes, and drops it."""
    return local == remote or (local.startswith(remote) and set(local[len(remote):]) == {"\ufffd"})


@pytest.fixture(scope="module")
def remote(backend) -> RemoteChat:
    return RemoteChat.connect(backend)


@pytest.fixture(scope="module")
def local(model_folder) -> ChatModel:
    return ChatModel.load(str(model_folder), dtype=torch.float32)  # transformers serve runs the float32 weights as saved


@pytest.fixture(scope="module")
def front(remote):
    """Our app with --backend: the page and /v1 in front of transformers serve."""
    url, server = serve_app(remote, {**app.DEFAULTS, "max_new_tokens": 24})
    yield url
    server.should_exit = True


# ---- against transformers serve ----

@pytest.mark.slow
def test_the_model_is_the_one_the_server_lists(remote, backend, model_folder):
    assert remote.models() == [str(model_folder)] and remote.name == str(model_folder)  # transformers serve: the folder
    assert remote.base is None and remote.settings == f"remote: {backend}"
    assert RemoteChat.connect(backend, "any-name").name == "any-name"  # --backend_model: asks nothing at start


@pytest.mark.slow
@pytest.mark.parametrize("history", [[], HISTORY], ids=["first-turn", "with-history"])
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_greedy_answer_is_the_local_models(remote, local, history, repetition_penalty):
    stats = GenerationStats()
    updates = list(remote.stream(QUESTION, history, max_new_tokens=32, repetition_penalty=repetition_penalty,
                                 stats=stats, **GREEDY))
    expected = local.answer(QUESTION, history, max_new_tokens=32, repetition_penalty=repetition_penalty, **GREEDY)
    answer = updates[-1]
    assert answer and same_text(answer, expected), (answer, expected)
    assert len(updates) > 3 and all(answer.startswith(u) for u in updates)  # streamed, each update extends the last
    # The server's usage: the same prompt (its chat template, our template) and the same tokens.
    assert (stats.prompt_tokens, stats.new_tokens, stats.finish) == (local.last.prompt_tokens, local.last.new_tokens,
                                                                     local.last.finish)
    assert remote.last == stats and stats.seconds_to_first_token is not None
    if repetition_penalty != 1.0:  # transformers serve refuses the field vLLM reads; it went in generation_config
        assert remote.penalty_field == "generation_config"


@pytest.mark.slow
def test_a_prompt_too_long_for_the_server_is_its_message(remote):
    history = [{"role": r, "content": "demam tinggi " * 200} for r in ("user", "assistant")] * 3
    with pytest.raises(BackendError, match=r"HTTP 400.*The prompt has \d+ tokens"):
        remote.answer(QUESTION, history, max_new_tokens=8)


@pytest.mark.slow
def test_closing_the_stream_stops_the_remote_generation(remote):
    chat = RemoteChat(remote.url, remote.name)
    chat.extra_body = {"generation_config": json.dumps({"min_new_tokens": 300})}  # no early end of sequence
    started = time.perf_counter()
    chat.answer(QUESTION, max_new_tokens=300, **GREEDY)
    whole = time.perf_counter() - started
    assert chat.last.new_tokens == 300 and chat.last.finish == "length"

    stream = chat.stream(QUESTION, max_new_tokens=300, **GREEDY)
    next(stream)
    next(stream)
    stream.close()  # what Gradio does when the user presses stop
    assert chat.last.finish == "stopped" and chat.last.new_tokens < 300
    # transformers serve generates one request at a time: had the closed one gone on, this one would wait for it.
    chat.extra_body = {}
    started = time.perf_counter()
    chat.answer(QUESTION, max_new_tokens=4, **GREEDY)
    after = time.perf_counter() - started
    print(f"\n300 tokens: {whole:.2f} s; a 4-token answer right after closing a 300-token stream: {after:.2f} s")
    assert after < whole / 2


@pytest.mark.slow
def test_the_page_chats_through_the_backend(front, remote):
    expected = remote.answer(QUESTION, max_new_tokens=24, **GREEDY)
    assert Client(front, verbose=False).predict(QUESTION, 24, 0.0, 1.0, 1.0, api_name="/chat") == expected
    # The page's defaults (filled in by gradio_client from /ask's documented signature; /chat is undocumented so
    # that it is no MCP tool): repetition_penalty 1.1, which transformers serve takes in generation_config.
    defaults = remote.answer(QUESTION, max_new_tokens=24, temperature=0.0, top_p=0.9, repetition_penalty=1.1)
    assert Client(front, verbose=False).predict(QUESTION, api_name="/ask") == defaults
    import httpx

    assert f"alpaca-medis · {remote.name}" in httpx.get(f"{front}/config").text


@pytest.mark.slow
def test_our_v1_proxies_to_the_backend(front, remote):
    expected = remote.answer(QUESTION, HISTORY, max_new_tokens=20, **GREEDY)
    client = OpenAI(base_url=f"{front}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [remote.name]
    messages = [*HISTORY, {"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=remote.name, messages=messages, max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens == 20 and reply.usage.prompt_tokens == remote.last.prompt_tokens > 0
    assert reply.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=remote.name, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert len(chunks) > 3 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


@pytest.mark.slow
def test_python_app_py_with_backend(backend, remote):
    """The command a user runs: `python app.py --backend URL` serves the page and /v1 in front of it."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "app.py", "--backend", backend, "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **OFFLINE})
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                names = [m.id for m in client.models.list()]
                break
            except Exception:
                assert time.monotonic() < deadline, "app.py --backend did not start"
                time.sleep(0.5)
        assert names == [remote.name]
        reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": QUESTION}], max_tokens=12)
        assert reply.choices[0].message.content == remote.answer(QUESTION, max_new_tokens=12, **GREEDY)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert f"remote: {backend}" in process.stdout.read()  # the startup line names the backend


# ---- a backend that is down, slow or refusing ----

def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def test_a_dead_backend_is_a_message_not_a_traceback():
    url = dead_url()
    with pytest.raises(BackendError, match=f"The inference server at {url} cannot be reached.*Is it running"):
        RemoteChat.connect(url)
    chat = RemoteChat(url, "alpaca-medis/some-model")  # --backend_model: the page starts, each answer fails
    with pytest.raises(BackendError, match="cannot be reached"):
        chat.answer(QUESTION)
    assert isinstance(BackendError("x"), InputError)  # what app.py and our /v1 show as a message


def test_a_dead_backend_through_our_page_and_v1():
    chat = RemoteChat(dead_url(), "some-model")
    url, server = serve_app(chat)
    try:
        with pytest.raises(Exception, match="cannot be reached"):
            Client(url, verbose=False).predict(QUESTION, 8, 0.0, 1.0, 1.0, api_name="/chat")
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for stream in (False, True):
            with pytest.raises(APIStatusError, match="cannot be reached") as raised:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], stream=stream)
            # An InputError, so 400 with OpenAI's error object (a 502 would need an error type of openai_api's).
            assert raised.value.status_code == 400 and "cannot be reached" in raised.value.body["message"]
    finally:
        server.should_exit = True


def test_python_app_py_with_a_dead_backend_exits_with_the_message():
    url = dead_url()
    result = subprocess.run([sys.executable, "app.py", "--backend", url], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **OFFLINE})
    assert result.returncode == 1
    assert f"error: The inference server at {url} cannot be reached" in result.stderr and "Traceback" not in result.stderr


def test_a_backend_that_does_not_answer_times_out():
    with socket.socket() as listening:  # accepts connections (the kernel does), never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        chat = RemoteChat(f"http://127.0.0.1:{listening.getsockname()[1]}/v1", "m", timeout=1)
        with pytest.raises(BackendError, match="did not answer within 1 s"):
            chat.answer(QUESTION)


class Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's `reply`: (status, headers, body); an SSE body is a list of events."""

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.server.requests.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.answer()

    def answer(self):
        status, headers, body = self.server.reply
        events = isinstance(body, list)
        data = ("".join(f"data: {json.dumps(e)}\n\n" for e in body) + "data: [DONE]\n\n" if events else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("content-type", "text/event-stream" if events else "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def canned():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def chunk(content=None, finish=None, usage=None) -> dict:
    choices = [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices, "usage": usage}


def canned_chat(server, **kwargs) -> RemoteChat:
    return RemoteChat(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", **kwargs)


def test_429_is_busy_with_the_servers_retry_after(canned):
    canned.reply = (429, {"Retry-After": "7"}, {"error": {"message": "queue full", "type": "rate_limit"}})
    with pytest.raises(BusyError, match="is busy \\(queue full\\)") as raised:
        canned_chat(canned).answer(QUESTION)
    assert raised.value.retry_after == 7.0
    url, server = serve_app(canned_chat(canned))
    try:  # our /v1 passes it on as its own 429
        with pytest.raises(APIStatusError) as refused:
            OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": QUESTION}])
        assert refused.value.status_code == 429 and refused.value.response.headers["retry-after"] == "7"
    finally:
        server.should_exit = True


def test_refusals_carry_the_servers_words_and_never_the_key(canned):
    key = "sk-do-not-show-0123456789"
    canned.reply = (401, {}, {"error": {"message": "Invalid API key", "type": "auth"}})
    with pytest.raises(BackendError, match="refused our API key \\(HTTP 401: Invalid API key\\); set BACKEND_API_KEY") as raised:
        canned_chat(canned, api_key=key).answer(QUESTION)
    assert key not in str(raised.value) and key not in repr(canned_chat(canned, api_key=key))
    canned.reply = (404, {}, {"detail": "Not Found"})
    with pytest.raises(BackendError, match="has no model 'm' or no OpenAI API at this URL, which usually ends in /v1"):
        canned_chat(canned).answer(QUESTION)
    canned.reply = (500, {}, {"error": "CUDA out of memory"})
    with pytest.raises(BackendError, match=r"refused the request \(HTTP 500\): CUDA out of memory"):
        canned_chat(canned).answer(QUESTION)
    canned.reply = (200, {}, [chunk("Minum"), {"error": "engine died"}])  # an error event mid-stream
    with pytest.raises(BackendError, match="failed while answering: engine died"):
        canned_chat(canned).answer(QUESTION)


def test_the_answer_ends_where_the_model_starts_a_new_turn(canned):
    canned.reply = (200, {}, [chunk("Minum air"), chunk(" putih.\n\n##"), chunk("# Instruksi:\nApa"), chunk(" lagi?", "stop"),
                              chunk(usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})])
    chat = canned_chat(canned)
    updates = list(chat.stream(QUESTION, HISTORY, max_new_tokens=5000, repetition_penalty=1.2))
    assert updates == ["Minum air", "Minum air putih.\n\n", "Minum air putih."]  # "##" held back, then cut
    assert chat.last.finish == "marker" and chat.last.new_tokens == 3  # chunks read; the usage never came
    request = canned.requests[-1]
    assert request["messages"] == [*HISTORY, {"role": "user", "content": QUESTION}]
    assert request["stream"] and request["stream_options"] == {"include_usage": True}
    assert request["max_tokens"] == 1024 and request["repetition_penalty"] == 1.2  # bounded as ChatModel bounds it


def test_finish_and_usage_of_a_whole_answer(canned):
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    for reason, finish in (("stop", "eos"), ("length", "length")):
        canned.reply = (200, {}, [chunk("Minum"), chunk(" air.", reason), chunk(usage=usage)])
        chat = canned_chat(canned)
        assert chat.answer(QUESTION, repetition_penalty=1.0) == "Minum air."
        assert (chat.last.prompt_tokens, chat.last.new_tokens, chat.last.finish) == (9, 2, finish)
        assert "repetition_penalty" not in canned.requests[-1]  # 1.0, every server's default: not sent
    with pytest.raises(InputError, match="the limit is 4000"):
        chat.answer("x" * 4001)


def test_the_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("BACKEND_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert api_key_from_env() == "unused"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert api_key_from_env() == "sk-openai"
    monkeypatch.setenv("BACKEND_API_KEY", "sk-backend")
    assert api_key_from_env() == "sk-backend" == RemoteChat("http://x/v1", "m").client.api_key
