"""The OpenAI API under hostile and heavy use: a real uvicorn server on 127.0.0.1 with a tiny ChatModel,
driven by httpx and the openai client. Every refused request gets a 4xx with OpenAI's error object."""

import contextlib
import json
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from openai import APIError, OpenAI, RateLimitError

from conftest import start_server
from trainer.serve.inference import MAX_INPUT_CHARS, MAX_NEW_TOKENS, BusyError, ChatModel
from trainer.serve.openai_api import MAX_BODY_BYTES, MAX_HISTORY_MESSAGES, Message, _conversation, router

QUESTION = "Dokter, saya demam tinggi sejak tiga hari. Apa yang harus saya lakukan?"
USER = {"role": "user", "content": QUESTION}


@contextlib.contextmanager
def serve(chat):
    """An app of just the router (as app.py includes it) on a free port, in a thread; yields its /v1 url."""
    app = FastAPI()
    app.include_router(router(chat))
    url, server = start_server(app)
    try:
        yield f"{url}/v1"
    finally:
        server.should_exit = True


@pytest.fixture(scope="module")
def chat(tiny_llama):
    return ChatModel.load(str(tiny_llama), template="alpaca-id")


@pytest.fixture(scope="module")
def url(chat):
    with serve(chat) as url:
        yield url


def post(url: str, body, timeout: float = 120, headers: dict | None = None) -> httpx.Response:
    """POST body to /chat/completions: bytes as they are, anything else as JSON (NaN and Infinity included)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/chat/completions", content=content, timeout=timeout,
                      headers=headers or {"Content-Type": "application/json"})


def assert_error(response: httpx.Response, status: int, substring: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    assert substring in error["message"], error["message"]
    assert "Traceback" not in response.text
    return error


def user(content, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], **fields}


HOSTILE = {
    "missing messages": ({"model": "x"}, "Missing required parameter: 'messages'"),
    "empty messages": ({"messages": []}, "'messages' is empty"),
    "empty messages, stream": ({"messages": [], "stream": True}, "'messages' is empty"),
    "broken JSON": (b'{"messages": [{"role": "user", "content": "Halo"', "not valid JSON"),
    "empty body": (b"", "not valid JSON"),
    "bytes that are no UTF-8": (b'{"messages": "\xff\xfe\xff"}', "not valid JSON"),
    "nested a million deep": (b"[" * 1_000_000, "nested too deeply"),
    "body is an array": ([USER], "must be a JSON object, not an array"),
    "body is a string": ("Halo", "must be a JSON object, not a string"),
    "body is null": (None, "must be a JSON object, not null"),
    "messages is a string": ({"messages": "Halo"}, "Invalid 'messages'"),
    "a message is a string": ({"messages": ["Halo"]}, "Invalid 'messages[0]'"),
    "content is a number": (user(42), "Invalid 'messages[0].content': expected a string or a list of text parts, got a number"),
    "content is an object": (user({"text": "Halo"}), "got an object"),
    "content missing": ({"messages": [{"role": "user"}]}, "Missing required parameter: 'messages[0].content'"),
    "role is a number": ({"messages": [{"role": 1, "content": "Halo"}]}, "Invalid 'messages[0].role'"),
    "message of 100,000 characters": (user("x" * 100_000), f"has 100000 characters; the limit is {MAX_INPUT_CHARS}"),
    "history message of 100,000 characters": (
        {"messages": [{"role": "user", "content": "y" * 100_000}, {"role": "assistant", "content": "Ya."}, USER]},
        f"'messages[0].content' has 100000 characters; the limit is {MAX_INPUT_CHARS}"),
    "system message of 100,000 characters": (
        {"messages": [{"role": "system", "content": "s" * 100_000}, USER]}, f"the limit is {MAX_INPUT_CHARS}"),
    "max_tokens 10**9": (user(QUESTION, max_tokens=10**9), f"above this server's limit of {MAX_NEW_TOKENS}"),
    "max_completion_tokens 10**9": (user(QUESTION, max_completion_tokens=10**9), f"limit of {MAX_NEW_TOKENS}"),
    "max_tokens 0": (user(QUESTION, max_tokens=0), "Invalid 'max_tokens': Input should be greater than or equal to 1"),
    "max_tokens negative": (user(QUESTION, max_tokens=-5), "Invalid 'max_tokens'"),
    "max_tokens a word": (user(QUESTION, max_tokens="lots"), "Invalid 'max_tokens'"),
    "max_tokens a fraction": (user(QUESTION, max_tokens=8.5), "Invalid 'max_tokens'"),
    "temperature negative": (user(QUESTION, temperature=-0.5), "Invalid 'temperature': Input should be greater than or equal to 0"),
    "temperature above 2": (user(QUESTION, temperature=2.5), "Invalid 'temperature': Input should be less than or equal to 2"),
    "temperature NaN": (user(QUESTION, temperature=float("nan")), "Invalid 'temperature'"),
    "top_p 0": (user(QUESTION, top_p=0), "Invalid 'top_p'"),
    "top_p above 1": (user(QUESTION, top_p=1.5), "Invalid 'top_p'"),
    "repetition_penalty infinite": (user(QUESTION, repetition_penalty=float("inf")), "Invalid 'repetition_penalty'"),
    "repetition_penalty 0": (user(QUESTION, repetition_penalty=0), "Invalid 'repetition_penalty'"),
    "frequency_penalty out of range": (user(QUESTION, frequency_penalty=5), "Invalid 'frequency_penalty'"),
    "stream not a boolean": (user(QUESTION, stream="perhaps"), "Invalid 'stream'"),
    "n above 1": (user(QUESTION, n=3), "n=3 is not supported"),
    "unknown role": ({"messages": [{"role": "tool", "content": "{}"}, USER]}, "Unsupported role(s): 'tool'"),
    "last message from the assistant": ({"messages": [USER, {"role": "assistant", "content": "Ya."}]},
                                        "The last message must have role 'user'"),
    "only a system message": ({"messages": [{"role": "system", "content": "Jawab."}]}, "The last message must have role 'user'"),
    "system message after the conversation": (
        {"messages": [USER, {"role": "assistant", "content": "Ya."}, {"role": "system", "content": "Jawab."}, USER]},
        "A system message must come before the conversation"),
    "image part": (user([{"type": "text", "text": "Lihat:"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
                   "Invalid 'messages[0].content[1]': content parts of type 'image_url' are not supported"),
    "text part without text": (user([{"type": "text"}]), "Invalid 'messages[0].content[0].text': expected a string, got null"),
    "part is a string": (user(["Halo"]), "Invalid 'messages[0].content[0]'"),
}


@pytest.mark.parametrize("body, substring", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_request_gets_400_with_an_openai_error(url, body, substring):
    started = time.perf_counter()
    error = assert_error(post(url, body), 400, substring)
    assert error["type"] == "invalid_request_error"
    assert time.perf_counter() - started < 2  # refused before any tokenizing or generating


def test_a_body_over_the_limit_gets_413(url):
    body = json.dumps(user("x" * (MAX_BODY_BYTES + 10))).encode()
    error = assert_error(post(url, body), 413, f"larger than this server's limit of {MAX_BODY_BYTES} bytes")
    assert error["code"] == "request_too_large"


def test_the_openai_client_shows_our_message(url):
    client = OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(APIError, match=f"the limit is {MAX_INPUT_CHARS}"):
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "x" * 100_000}])


def answer_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert reply["usage"]["completion_tokens"] <= 8
    return reply["choices"][0]["message"]["content"]


ACCEPTED = {
    # OpenAI clients send many fields we do not serve; none is refused.
    "unknown extra fields": (user(QUESTION, max_tokens=8, seed=1, user="u1", logprobs=False, tools=[], stop=["\n"],
                                  response_format={"type": "text"}, presence_penalty=0.5, metadata={"a": 1}), QUESTION),
    "null for unset values": (user(QUESTION, max_tokens=8, temperature=None, top_p=None, stream=None, n=None), QUESTION),
    "content as text parts": (user([{"type": "text", "text": "Saya demam."}, {"type": "text", "text": "Apa obatnya?"}], max_tokens=8),
                              "Saya demam.\nApa obatnya?"),
    # Control characters are stripped (why: at _CONTROL in openai_api.py), and so is a lone surrogate.
    "control characters": (user("Saya\x00 demam\x1b[31m tinggi\x07\x7f\ud800.\tApa\r\nobatnya?", max_tokens=8),
                           "Saya demam[31m tinggi.\tApa\r\nobatnya?"),
}


@pytest.mark.parametrize("body, message", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_an_odd_but_valid_request_is_answered_as_its_plain_text(url, chat, body, message):
    assert answer_of(post(url, body)) == chat.answer(message, max_new_tokens=8)


def test_a_body_labelled_as_a_form_is_read_as_json(url, chat):
    """`curl -d '{...}'` labels its JSON application/x-www-form-urlencoded."""
    response = post(url, user(QUESTION, max_tokens=8), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer_of(response) == chat.answer(QUESTION, max_new_tokens=8)


def test_developer_and_system_messages_become_one_instruction(chat, url):
    body = {"messages": [{"role": "developer", "content": "Jawab singkat."}, {"role": "system", "content": "Sebagai dokter."},
                         USER], "max_tokens": 8}
    expected = chat.answer(QUESTION, [{"role": "system", "content": "Jawab singkat.\n\nSebagai dokter."}], max_new_tokens=8)
    assert answer_of(post(url, body)) == expected


def test_an_endless_history_is_cut_before_the_prompt_is_built(url):
    turns = [{"role": r, "content": f"Pesan {i}. " + "kata " * 200} for i in range(1000) for r in ("user", "assistant")]
    started = time.perf_counter()
    answer_of(post(url, {"messages": [*turns, USER], "max_tokens": 8}))
    assert time.perf_counter() - started < 10


def test_history_keeps_the_latest_turns_from_a_user_message():
    turns = [Message(role=r, content=f"{r} {i}") for i in range(100) for r in ("user", "assistant")]
    message, history = _conversation([Message(role="system", content="S"), *turns, Message(role="user", content="Q")], 1024)
    assert message == "Q" and history[0] == {"role": "system", "content": "S"}
    assert len(history) - 1 <= MAX_HISTORY_MESSAGES and history[1]["role"] == "user"
    assert history[-1] == {"role": "assistant", "content": "assistant 99"}
    _, history = _conversation([Message(role="user", content="a" * 4000), Message(role="assistant", content="b"),
                                Message(role="user", content="Q")], context_length=100)  # 1,600 characters of history at most
    assert history == []


def test_stream_options_include_usage(url, chat):
    client = OpenAI(base_url=url, api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="any", messages=[USER], max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.answer(QUESTION, max_new_tokens=8)
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 8


class Busy:
    """A stand-in for a server whose slots and queue are full: its stream raises BusyError, at once or on the first next()."""

    name = "busy"

    def __init__(self, lazily: bool):
        self.lazily = lazily

    def stream(self, message, history=None, **kwargs):
        if not self.lazily:
            raise BusyError(retry_after=3)
        return self._refusing()

    def _refusing(self):
        raise BusyError(retry_after=3)
        yield ""


@pytest.mark.parametrize("lazily", [True, False], ids=["on first next", "on the call"])
@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_busy_is_429_with_retry_after(lazily, stream):
    with serve(Busy(lazily)) as url:
        response = post(url, user(QUESTION, stream=stream))
        error = assert_error(response, 429, "busy")
        assert response.headers["retry-after"] == "3"
        assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"
        client = OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(RateLimitError, match="busy"):
            client.chat.completions.create(model="any", messages=[USER], stream=stream)


@pytest.fixture(scope="module")
def broken_url(chat):
    """The tiny model with a generate() option it refuses: generation fails on the torch thread."""
    with serve(ChatModel(chat.model, chat.tokenizer, "broken", generate_options={"num_beams": 2})) as url:
        yield url


def test_a_failing_generation_is_500_without_a_traceback(broken_url, url):
    response = post(broken_url, user(QUESTION, max_tokens=8))
    error = assert_error(response, 500, "the error is in its log")
    assert error["type"] == "server_error"
    assert "beam" not in response.text  # the exception's own words stay in the log
    # Streamed, the status is sent before the failure: the error comes as an event, and the client raises it.
    client = OpenAI(base_url=broken_url, api_key="unused", max_retries=0)
    with pytest.raises(APIError, match="the error is in its log"):
        list(client.chat.completions.create(model="any", messages=[USER], max_tokens=8, stream=True))
    answer_of(post(url, user(QUESTION, max_tokens=8)))  # the healthy model still answers


def sse_answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_32_concurrent_clients_all_get_their_whole_answer(url, chat):
    questions = ["Halo dokter.", "Saya batuk sejak kemarin.", "Apa itu demam berdarah?", QUESTION]
    expected = {q: chat.answer(q, max_new_tokens=8) for q in questions}
    results: dict[int, object] = {}

    def client(i: int) -> None:
        question = questions[i % len(questions)]
        try:
            if i % 4 == 0:
                reply = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300).chat.completions.create(
                    model="any", messages=[{"role": "user", "content": question}], max_tokens=8)
                results[i] = (question, reply.choices[0].message.content)
            elif i % 4 == 1:
                chunks = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300).chat.completions.create(
                    model="any", messages=[{"role": "user", "content": question}], max_tokens=8, stream=True)
                results[i] = (question, "".join(c.choices[0].delta.content or "" for c in chunks))
            elif i % 4 == 2:
                results[i] = (question, answer_of(post(url, user(question, max_tokens=8), timeout=300)))
            else:
                results[i] = (question, sse_answer(post(url, user(question, max_tokens=8, stream=True), timeout=300)))
        except Exception as e:  # reported below, with the client's number
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sorted(results) == list(range(32))
    failures = {i: r for i, r in results.items() if isinstance(r, Exception)}
    assert not failures, failures
    assert all(text == expected[question] for question, text in results.values()), results


def test_a_client_leaving_a_stream_frees_the_model(url, chat):
    with httpx.stream("POST", f"{url}/chat/completions", json=user("x", max_tokens=512, stream=True), timeout=120) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"role"' not in line:
                break  # one piece of the answer, then the client leaves
    deadline = time.time() + 20
    while chat.lock.locked():
        assert time.time() < deadline, "generation went on after the client left"
        time.sleep(0.05)
    assert chat.last.finish == "stopped" and chat.last.new_tokens < 512
    answer_of(post(url, user(QUESTION, max_tokens=8)))
