"""Serving beyond loopback (trainer/serve/access.py): API keys for /v1, a login for the page, its Gradio API and its
MCP server, the warning when neither is set, /v1 off on a Space without a key, each key's share of the waiting places,
and --backend's own key. Real servers on 127.0.0.1 with the tiny Llama, driven by the openai client, gradio_client,
the mcp client and huggingface_hub's InferenceClient; the browser's login is in tests/test_browser.py."""

import asyncio
import json
import logging
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client
from gradio_client.exceptions import AuthenticationError as LoginRefused
from openai import AuthenticationError, Omit, OpenAI, RateLimitError
from test_remote import Canned, chunk

import app
from conftest import free_port, start_server, wait_for
from trainer.serve.access import Access, AccessError, APIKeys
from trainer.serve.batching import BatchedChat
from trainer.serve.feedback import FeedbackStore, Ratings
from trainer.serve.inference import ChatModel
from trainer.serve.openai_api import APIError, router
from trainer.serve.remote import RemoteChat

KEYS = ("sk-medis-tim-a-0123456789", "sk-medis-tim-b-9876543210")
WRONG_KEY = "sk-medis-salah-5555555555"
USER, PASSWORD = "dokter", "rahasia:panjang 42"  # a colon and a space after the first colon are the password's
WRONG_PASSWORD = "sandi-keliru-777"
QUESTION = "Dokter, saya demam tinggi sejak tiga hari. Apa yang harus saya lakukan?"
MESSAGES = [{"role": "user", "content": QUESTION}]
GREEDY = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0)
CONFIG = {**app.DEFAULTS, "max_new_tokens": 8}
NO_ENV: dict = {}


def open_to(**flags) -> Access:
    return Access.from_flags(**flags, max_waiting=32, env=NO_ENV)


# ---- keys and logins from flags, the environment and files ----

def test_keys_and_logins_come_from_flags_the_environment_and_files(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# the team's keys\n\n  {KEYS[1]}  \n{WRONG_KEY}\n")
    access = Access.from_flags(f"{KEYS[0]}, {KEYS[1]}", str(keys_file), max_waiting=32, env={"API_KEY": "ignored"})
    assert len(access.keys) == 4 and access.max_waiting_per_key == 8  # a quarter of --max_waiting
    assert [access.keys.match(k) for k in (*KEYS, WRONG_KEY, "ignored", KEYS[0][:-1])] == [0, 1, 3, None, None]
    env = {"API_KEY": KEYS[0], "GRADIO_AUTH": f"{USER}:{PASSWORD}"}
    from_env = Access.from_flags(max_waiting_per_key=3, max_waiting=32, env=env)
    assert from_env.keys.match(KEYS[0]) == 0 and from_env.max_waiting_per_key is None  # one key: no share to keep
    assert from_env.logins.check(USER, PASSWORD) and not from_env.logins.check(USER, WRONG_PASSWORD)
    logins_file = tmp_path / "logins.txt"
    logins_file.write_text("perawat:jaga malam\n# apoteker:later\n")
    logins = Access.from_flags(auth=[f" {USER} :{PASSWORD}"], auth_file=str(logins_file), max_waiting=32, env=env).logins
    assert logins.check(USER, PASSWORD) and logins.check("perawat", "jaga malam") and not logins.check("apoteker", "later")
    assert len(logins) == 2 and not logins.check("perawat", "jaga malam ") and not logins.check("nobody", PASSWORD)
    shown = repr(access) + repr(from_env) + repr(logins) + from_env.describe()
    assert "APIKeys(4 keys)" in repr(access) and "Logins(2 users)" in repr(logins)
    assert not any(secret in shown for secret in (*KEYS, WRONG_KEY, PASSWORD, "jaga malam"))


BAD = {
    "an empty --api_key": (dict(api_key=""), "--api_key is empty"),
    "two commas in a row": (dict(api_key=f"{KEYS[0]},,{KEYS[1]}"), "--api_key (key 2 of 3): the key is empty"),
    "a key with a space": (dict(api_key="sk-medis tim-a"), "--api_key (key 1 of 1): a key may hold printable ASCII"),
    "a key file line with a space": (dict(api_key_file="{keys}"), "--api_key_file {keys} line 2: a key may hold"),
    "an empty key file": (dict(api_key_file="{empty}"), "--api_key_file {empty} holds no key: write one per line"),
    "a missing key file": (dict(api_key_file="{missing}"), "--api_key_file {missing} cannot be read (No such file or directory)"),
    "a key file of bytes": (dict(api_key_file="{binary}"), "--api_key_file {binary} is not UTF-8 text"),
    "--auth without a colon": (dict(auth=["dokter-rahasia"]), "--auth: expected USER:PASSWORD, found no colon"),
    "--auth without a user": (dict(auth=[":rahasia"]), "--auth: the user name before the colon is empty"),
    "--auth without a password": (dict(auth=["dokter:"]), "--auth: the password after the colon is empty"),
    "a login file line without a colon": (dict(auth_file="{logins}"), "--auth_file {logins} line 3: expected USER:PASSWORD"),
    "a user twice": (dict(auth=["dokter:a", "dokter:b"]), "--auth: the user 'dokter' is given twice"),
    "a share of 0": (dict(api_key=",".join(KEYS), max_waiting_per_key=0), "--max_waiting_per_key must be at least 1, not 0"),
}


@pytest.mark.parametrize("flags, message", BAD.values(), ids=BAD.keys())
def test_a_bad_key_or_login_is_an_error_naming_the_flag_file_and_line(tmp_path, flags, message):
    files = {"keys": tmp_path / "keys.txt", "empty": tmp_path / "empty.txt", "missing": tmp_path / "absent.txt",
             "binary": tmp_path / "keys.bin", "logins": tmp_path / "logins.txt"}
    files["keys"].write_text(f"{KEYS[0]}\nsk-medis {WRONG_KEY}\n")
    files["empty"].write_text("# no keys yet\n\n")
    files["binary"].write_bytes(b"\xff\xfe" + KEYS[0].encode())
    files["logins"].write_text(f"{USER}:{PASSWORD}\n\n{WRONG_PASSWORD}\n")
    flags = {k: v.format(**files) if isinstance(v, str) else v for k, v in flags.items()}
    with pytest.raises(AccessError) as raised:
        open_to(**flags)
    assert message.format(**files) in str(raised.value)
    assert not any(secret in str(raised.value) for secret in (WRONG_KEY, PASSWORD, WRONG_PASSWORD, "rahasia"))


# ---- the warning, and app.py's own command line ----

def run_app(monkeypatch, capsys, *flags: str, host: str = "0.0.0.0") -> tuple[str, str]:
    """`python app.py --host HOST --backend DEAD_URL FLAGS` in this process: (its stderr, the error it exits with).
    Nothing listens at the backend's URL, so app.py stops where it would load the model: after the warning."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setattr(sys, "argv", ["app.py", "--host", host, "--port", "7861", "--backend", dead, *flags])
    with pytest.raises(SystemExit) as exited:
        app.main()
    return capsys.readouterr().err, str(exited.value)


def test_app_py_warns_when_anyone_may_use_it_except_on_a_space(monkeypatch, capsys):
    for variable in ("API_KEY", "GRADIO_AUTH", "SPACE_ID"):
        monkeypatch.delenv(variable, raising=False)
    err, exit_message = run_app(monkeypatch, capsys)
    (warning,) = err.splitlines()
    assert warning.startswith("warning: --host 0.0.0.0 serves the page, its API and /v1 to anyone who reaches port 7861")
    assert "--api_key KEY (or $API_KEY)" in warning and "--auth USER:PASSWORD (or $GRADIO_AUTH)" in warning
    assert "cannot be reached" in exit_message  # the warning came first, before any model
    assert run_app(monkeypatch, capsys, "--api_key", KEYS[0])[0] == ""
    assert run_app(monkeypatch, capsys, "--auth", f"{USER}:{PASSWORD}")[0] == ""
    assert run_app(monkeypatch, capsys, host="127.0.0.1")[0] == ""
    assert run_app(monkeypatch, capsys, host="localhost")[0] == ""
    monkeypatch.setenv("SPACE_ID", "someone/alpaca-medis")  # a Space's page is public by design
    assert run_app(monkeypatch, capsys)[0] == ""


def test_app_py_exits_with_the_message_for_a_bad_flag(monkeypatch, capsys):
    monkeypatch.delenv("GRADIO_AUTH", raising=False)
    _, exit_message = run_app(monkeypatch, capsys, "--auth", "dokter-rahasia")
    assert exit_message == "error: --auth: expected USER:PASSWORD, found no colon."
    monkeypatch.setenv("API_KEY", f"{KEYS[0]},")
    assert run_app(monkeypatch, capsys)[1] == "error: $API_KEY (key 2 of 2): the key is empty (two commas in a row, or one at the end?)."


def test_on_a_space_v1_is_off_without_a_key(chat):
    space = Access.from_flags(max_waiting=32, env={"SPACE_ID": "someone/alpaca-medis"})
    assert not space.api_served and space.describe().startswith("/v1: off on a Space without --api_key")
    client = TestClient(app.build_app(chat, CONFIG, access=space))
    assert client.get("/v1/models").status_code == 404
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES}).status_code == 404
    assert "Bukan pengganti dokter" in client.get("/config").text  # the page is public
    keyed = Access.from_flags(KEYS[0], max_waiting=32, env={"SPACE_ID": "someone/alpaca-medis"})
    assert keyed.api_served


def test_fastapis_own_docs_describe_v1_only_on_an_open_server(chat):
    assert "/v1/chat/completions" in TestClient(app.build_app(chat, CONFIG)).get("/openapi.json").text
    for access in (open_to(api_key=KEYS[0]), open_to(auth=[f"{USER}:{PASSWORD}"])):
        client = TestClient(app.build_app(chat, CONFIG, access=access))
        for route in ("/openapi.json", "/docs", "/redoc"):
            assert "/v1/chat/completions" not in client.get(route).text and "swagger" not in client.get(route).text.lower()


# ---- a server with two keys and a login ----

@pytest.fixture(scope="module")
def chat(tiny_llama):
    return ChatModel.load(str(tiny_llama), template="alpaca-id")


@pytest.fixture(scope="module")
def guarded(chat, tmp_path_factory):
    """The app with two API keys and one login, its ratings going to a file: (url, the ratings file)."""
    store = FeedbackStore(tmp_path_factory.mktemp("access") / "ratings.jsonl")
    access = open_to(api_key=",".join(KEYS), auth=[f"{USER}:{PASSWORD}"])
    url, server = start_server(app.build_app(chat, CONFIG, Ratings(store, chat), access))
    yield url, store.path
    server.should_exit = True


INVALID_KEY = {"type": "invalid_request_error", "param": None, "code": "invalid_api_key"}


def test_the_openai_client_needs_a_right_key(guarded, chat):
    url = f"{guarded[0]}/v1"
    expected = chat.answer(QUESTION, max_new_tokens=8)
    for key in KEYS:
        client = OpenAI(base_url=url, api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == [chat.name]
        assert client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8).choices[0].message.content == expected
    chunks = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    for key, missing in ((WRONG_KEY, {}), ("unused", {"Authorization": Omit()})):  # a wrong key, and none at all
        client = OpenAI(base_url=url, api_key=key, max_retries=0)
        for route in ("models", "completion", "stream"):
            with pytest.raises(AuthenticationError) as refused:
                if route == "models":
                    client.models.list(extra_headers=missing)
                else:
                    client.chat.completions.create(model="m", messages=MESSAGES, stream=route == "stream", extra_headers=missing)
            assert refused.value.status_code == 401 and refused.value.response.headers["www-authenticate"] == "Bearer"
            body = refused.value.response.json()["error"]
            assert {k: body[k] for k in INVALID_KEY} == INVALID_KEY
            assert body["message"].startswith("Missing API key." if missing else "Incorrect API key provided.")
            assert "Authorization: Bearer KEY" in body["message"] and key not in refused.value.response.text


def test_huggingface_hubs_inference_client_passes_the_key(guarded, chat, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest.py's default, for the real Hub
    reply = InferenceClient(base_url=f"{guarded[0]}/v1", api_key=KEYS[1]).chat_completion(MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content == chat.answer(QUESTION, max_new_tokens=8)
    with pytest.raises(Exception, match="401"):
        InferenceClient(base_url=f"{guarded[0]}/v1", api_key=WRONG_KEY).chat_completion(MESSAGES, max_tokens=8)


def test_gradio_client_and_the_ratings_need_the_login(guarded, chat):
    url, ratings = guarded
    with pytest.raises(LoginRefused, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=(USER, WRONG_PASSWORD), verbose=False)
    client = Client(url, auth=(USER, PASSWORD), verbose=False)
    answer = client.predict(QUESTION, 8, *GREEDY.values(), api_name="/ask")
    assert answer == chat.answer(QUESTION, max_new_tokens=8, **GREEDY)
    assert client.predict(QUESTION, 8, *GREEDY.values(), api_name="/chat") == answer
    rating_id = client.predict(QUESTION, answer, "like", None, None, api_name="/rate")
    assert json.loads(ratings.read_text(encoding="utf-8").splitlines()[-1])["id"] == rating_id
    stored = ratings.read_bytes()
    assert httpx.get(f"{url}/config").status_code == 401  # without the login: not even the page's settings
    join = {"data": [QUESTION, answer, "like", None, None], "fn_index": 0, "session_hash": "s"}
    assert httpx.post(f"{url}/gradio_api/queue/join", json=join).status_code == 401
    assert ratings.read_bytes() == stored


def mcp_tools_and_answer(url: str, auth: httpx.Auth, question: str):
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    async def run():
        async with sse_client(f"{url}/gradio_api/mcp/sse", auth=auth) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            return tools, await session.call_tool(tools[0].name, {"message": question, "max_new_tokens": 4})

    return asyncio.run(run())


def test_the_mcp_server_is_behind_the_same_login(guarded):
    url = guarded[0]
    for auth in (None, (USER, WRONG_PASSWORD), ("perawat", PASSWORD)):
        for method, path in (("GET", "/gradio_api/mcp/sse"), ("GET", "/gradio_api/mcp/schema"), ("POST", "/gradio_api/mcp"),
                             ("POST", "/gradio_api/mcp/messages/?session_id=0"), ("POST", "/gradio_api/mcp/http/")):
            response = httpx.request(method, f"{url}{path}", auth=auth, json={}, timeout=10)
            assert response.status_code == 401, (method, path, auth)
            assert response.headers["www-authenticate"].startswith("Basic") and "behind the page's login" in response.text
    tools, result = mcp_tools_and_answer(url, httpx.BasicAuth(USER, PASSWORD), QUESTION)
    assert [t.name for t in tools] == ["ask_health_question"] and not result.isError
    assert result.content[0].text == Client(url, auth=(USER, PASSWORD), verbose=False).predict(QUESTION, 4, api_name="/ask")


def test_keys_and_passwords_never_reach_the_log(guarded, caplog, capfd, monkeypatch):
    # Every logger at DEBUG and enabled, whatever earlier tests' libraries set (in the whole suite httpx's request
    # lines were off), so that a secret anywhere in a log would be caught.
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            monkeypatch.setattr(logger, "disabled", False)
    url = guarded[0]
    OpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0).chat.completions.create(model="m", messages=MESSAGES,
                                                                                          max_tokens=4)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key=WRONG_KEY, max_retries=0).chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(ValueError):
        Client(url, auth=(USER, WRONG_PASSWORD), verbose=False)
    Client(url, auth=(USER, PASSWORD), verbose=False).predict(QUESTION, 4, api_name="/ask")
    assert httpx.get(f"{url}/gradio_api/mcp/schema", auth=(USER, WRONG_PASSWORD)).status_code == 401
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "/v1/chat/completions" in caplog.text  # the run was logged (httpx's request lines), without a secret
    assert not [secret for secret in (*KEYS, WRONG_KEY, PASSWORD, WRONG_PASSWORD) if secret in logged]


# ---- each key's share of the waiting places ----

def test_a_flood_from_one_key_gets_429_while_another_key_is_answered(chat):
    batched = BatchedChat(chat, max_batch=8, max_waiting=32, start=False)  # requests wait until the worker starts
    api = FastAPI()
    api.include_router(router(batched, Access(keys=APIKeys(KEYS), max_waiting_per_key=2)))
    url, server = start_server(api)
    results: dict[str, object] = {}

    def ask(name: str, key: str, stream: bool = False) -> None:
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        try:
            reply = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, stream=stream)
            results[name] = "".join(c.choices[0].delta.content or "" for c in reply) if stream else reply.choices[0].message.content
        except RateLimitError as e:
            results[name] = e

    try:
        flood = [threading.Thread(target=ask, args=(f"a{i}", KEYS[0], i % 2 == 1)) for i in range(6)]
        for t in flood:
            t.start()
        wait_for(lambda: len(batched.waiting) == 2 and len(results) == 4)  # 2 wait, 4 refused at once
        other = threading.Thread(target=ask, args=("b", KEYS[1]))
        other.start()
        wait_for(lambda: len(batched.waiting) == 3)  # the other key waits too: the server's queue has room
        batched.start()
        for t in [*flood, other]:
            t.join(timeout=120)
        expected = chat.answer(QUESTION, max_new_tokens=4)
        refused = [r for r in results.values() if isinstance(r, RateLimitError)]
        assert len(refused) == 4 and sorted(r for r in results.values() if isinstance(r, str)) == [expected] * 3
        assert results["b"] == expected
        for error in refused:
            assert error.status_code == 429 and error.response.headers["retry-after"] == "5"
            assert error.body["code"] == "rate_limit_exceeded" and "This API key has 2 requests waiting" in error.body["message"]
        # Every answer gave its place back, streamed or not, and so does a client that leaves a stream.
        for _ in range(3):
            for stream in (False, True):
                ask("again", KEYS[0], stream)
                assert results["again"] == expected
        for _ in range(2):
            with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEYS[0]}"},
                              json={"messages": MESSAGES, "max_tokens": 512, "stream": True}, timeout=60) as response:
                next(response.iter_lines())
        deadline = time.time() + 30
        while True:
            ask("after leaving", KEYS[0])
            if isinstance(results["after leaving"], str):
                break
            assert time.time() < deadline, "the streams that were left kept the key's places"
            time.sleep(0.2)
    finally:
        server.should_exit = True
        batched.close()


# ---- --backend: the engine gets the backend's key, never the caller's ----

class Recording(Canned):
    def do_POST(self):
        self.server.authorizations.append(self.headers.get("authorization"))
        super().do_POST()


def test_the_backend_gets_its_own_key_never_the_callers():
    engine = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    engine.requests, engine.authorizations = [], []
    engine.reply = (200, {}, [chunk("Minum air."), chunk(None, "stop")])
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    api = FastAPI()
    remote = RemoteChat(f"http://127.0.0.1:{engine.server_address[1]}/v1", "m", api_key="sk-engine-4242")
    api.include_router(router(remote, open_to(api_key=KEYS[0])))
    url, server = start_server(api)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=KEYS[0], max_retries=0)
        assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "Minum air."
        assert engine.authorizations == ["Bearer sk-engine-4242"]
    finally:
        server.should_exit = True
        engine.shutdown()
        engine.server_close()


def test_a_stream_cut_before_its_first_byte_gives_its_share_back():
    from starlette.requests import ClientDisconnect

    from trainer.serve.openai_api import _SharedStream, _Shares

    shares = _Shares(limit=1)
    release = shares.take(0)
    with pytest.raises(APIError) as refused:
        shares.take(0)  # the key's one place is taken
    assert refused.value.status == 429

    started = []

    async def body():  # its own `finally` never runs: the client is gone before the first byte
        started.append(True)
        yield "data: {}\n\n"

    async def gone(message):
        raise OSError("connection reset by peer")

    async def nothing():
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    with pytest.raises(ClientDisconnect):
        asyncio.run(_SharedStream(body(), release, media_type="text/event-stream")(scope, nothing, gone))
    assert not started and shares.taken[0] == 0
    shares.take(0)()  # the place is free again
