"""ZeroGPU on a CPU: with a stand-in `spaces` package importable, app.py answers under `@spaces.GPU` with a duration
from the request's max_new_tokens and launches the Gradio way; without it nothing changes."""

import json
import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from gradio_client import Client

from conftest import free_port
from trainer.import_graph import ROOT
from trainer.serve import zerogpu

# The decorator's contract as the real package has it (spaces/zero/decorator.py): GPU(duration=int or
# callable taking fn's arguments) wraps plain and generator functions. This one logs each call.
STAND_IN = '''
import functools, inspect, json, os

def GPU(task=None, duration=None, size="large"):
    def decorate(fn):
        def log(args, kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            with open(os.environ["SPACES_STAND_IN_LOG"], "a") as f:
                f.write(json.dumps({"function": fn.__name__, "duration": seconds}) + "\\n")
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def generator(*args, **kwargs):
                log(args, kwargs)
                yield from fn(*args, **kwargs)
            return generator
        @functools.wraps(fn)
        def plain(*args, **kwargs):
            log(args, kwargs)
            return fn(*args, **kwargs)
        return plain
    return decorate(task) if callable(task) else decorate
'''


def test_without_spaces_the_function_is_unchanged():
    assert not zerogpu.available()  # `spaces` is not a dependency here

    def respond(message, history, max_new_tokens):
        yield message

    assert zerogpu.gpu(respond, max_new_tokens_arg=2) is respond


def test_duration_grows_with_max_new_tokens_and_is_capped():
    assert zerogpu.seconds_for(1) == zerogpu.BASE_SECONDS
    assert zerogpu.seconds_for(200) == zerogpu.BASE_SECONDS + 10 < zerogpu.seconds_for(1024)
    assert zerogpu.seconds_for(10**9) == zerogpu.MAX_SECONDS
    assert zerogpu.seconds_for("not a number") == zerogpu.seconds_for(256)


@pytest.mark.slow
def test_with_spaces_answers_run_under_spaces_gpu(tiny_llama, tmp_path):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    log = tmp_path / "gpu_calls.jsonl"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "SPACES_STAND_IN_LOG": str(log),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py", "--model", str(tiny_llama), "--template", "alpaca-id",
                               "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.time() < deadline, "app.py did not start"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        answer = Client(url, verbose=False).predict("Saya demam tiga hari.", 40, 0.0, 0.9, 1.0, api_name="/chat")
        assert isinstance(answer, str)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert calls == [{"function": "respond", "duration": zerogpu.seconds_for(40)}]
        # Launched by Gradio, not mounted beside the /v1 API: ZeroGPU lends its GPU to Gradio requests only.
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 404
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert "on ZeroGPU" in out
