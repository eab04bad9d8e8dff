"""app.py as a ZeroGPU Space runs it, off Spaces: a stand-in `spaces` package on its path, which logs every
`@spaces.GPU` call. Used by tests/trainer/serve/test_zerogpu.py (CPU) and tests/gpu/test_serving.py (CUDA)."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import httpx
from gradio_client import Client

from trainer import ROOT
from trainer.bench.gpu_check import app_server

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


@dataclass
class ZeroGpuRun:
    answer: object  # what /chat returned
    calls: list[dict]  # the @spaces.GPU calls: function and duration asked
    v1_status: int  # HTTP status of /v1/models (404: the OpenAI API is not mounted)
    output: str  # app.py's stdout and stderr


def ask_app_under_stand_in(model: Path, tmp_path: Path, max_new_tokens: int = 40) -> ZeroGpuRun:
    """Start app.py with the stand-in `spaces` importable, ask one question through /chat, stop it."""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    log = tmp_path / "gpu_calls.jsonl"
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "SPACES_STAND_IN_LOG": str(log), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    output: list[str] = []
    with app_server(["--model", str(model), "--template", "alpaca-id"], env, timeout=240, output=output) as (url, _):
        answer = Client(url, verbose=False).predict("Saya demam tiga hari.", max_new_tokens, 0.0, 0.9, 1.0, api_name="/chat")
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        v1_status = httpx.get(f"{url}/v1/models", timeout=10).status_code
    return ZeroGpuRun(answer, calls, v1_status, "".join(output))
