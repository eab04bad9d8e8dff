"""trainer.push (trainer/hub/push.py) against a local stand-in of the Hub, with real trained folders.
The stand-in and the CLI helpers here are also used by test_spaces.py (trainer.push_space).

The stand-in (`FakeHub`) implements the HTTP endpoints that huggingface_hub 2.x's
`HfApi.create_repo` and `HfApi.upload_folder` call (read from hf_api.py, _commit_api.py and
_upload_pipeline.py), and keeps what it receives in memory:

    POST /api/validate-yaml                                  README.md front matter check
    POST /api/repos/create                                   {"url"}; 409 {"error", "url"} when it exists
    POST /api/{type}s/{ns}/{name}/preupload/{revision}       "regular" for every file: contents come inline
    POST /api/{type}s/{ns}/{name}/commit/{revision}          NDJSON: header, then base64 "file" lines
    GET  /api/{type}s/{ns}/{name}[/revision/{revision}]      repo info (create_repo on 401-403, empty commits)
    GET  /api/whoami-v2
    GET  /api/agent-harnesses                                the registry behind the User-Agent's agent field

Everything else (the CLIs, the trainer, transformers, the files) is real. The CLIs run as
subprocesses with HF_ENDPOINT pointing at the stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from huggingface_hub import ModelCard

from conftest import ROOT, SAMPLE, run_module
from trainer.prompts import get_template
from trainer.run_summary import RunSummary

# Built at runtime so that no token-shaped literal sits in the repository.
TOKEN = "hf_" + secrets.token_hex(17)
QUESTION = "Apa gejala tifus?"


# ------------------------------------------------------------------------------------ the Hub stand-in


class FakeHub:
    """In-memory repos, and a log of every request (method, path, headers, JSON body)."""

    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}
        self.requests: list[dict] = []
        self.unhandled: list[str] = []
        self.lock = threading.Lock()
        self.url = ""

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return self.repos[(repo_type, repo_id)]["files"]

    def handle(self, method: str, path: str, headers: dict, body: bytes):
        authorized = headers.get("authorization", "").startswith("Bearer ")
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            match = re.match(r"---\n(.*?)\n---", content, re.S)
            try:
                meta = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": str(e)}]}, {}
            return 200, {"errors": [], "warnings": [] if meta else [{"message": "empty metadata"}]}, {}
        if method == "GET" and path == "/api/agent-harnesses":  # read for the User-Agent (telemetry)
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if method == "GET" and path == "/api/whoami-v2":
            return (200, {"type": "user", "name": "tester"}, {}) if authorized else (401, {"error": "Unauthorized"}, {})
        if method == "POST" and path == "/api/repos/create":
            if not authorized:
                return 401, {"error": "Invalid credentials in Authorization header"}, {}
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}"
            url = f"{self.url}/{'spaces/' if repo_type == 'space' else ''}{repo_id}"
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": f"You already created this {repo_type} repo", "url": url}, {}
            self.repos[(repo_type, repo_id)] = {
                "url": url, "private": payload.get("visibility") == "private", "sdk": payload.get("sdk"),
                "files": {}, "commits": [], "sha": "0" * 40,
            }
            return 200, {"url": url, "name": repo_id}, {}
        m = re.fullmatch(r"/api/(model|space|dataset)s/([^/]+/[^/]+)(?:/(preupload|commit|revision)/([^/]+))?", path)
        if not m:
            self.unhandled.append(f"{method} {path}")
            return 404, {"error": f"{method} {path} is not implemented by the stand-in"}, {}
        repo_type, repo_id, action, _revision = m.groups()
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if method == "GET" and action in (None, "revision"):
            siblings = [{"rfilename": name} for name in sorted(repo["files"])]
            return 200, {"id": repo_id, "sha": repo["sha"], "private": repo["private"], "siblings": siblings}, {}
        if not authorized:
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files], "commitOid": repo["sha"]}, {}
        if method == "POST" and action == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header, files = lines[0], dict(repo["files"])
            assert header["key"] == "header", header
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile":
                    files.pop(value["path"], None)
                else:  # LFS was never offered by preupload
                    return 400, {"error": f"unexpected commit operation {line['key']}"}, {}
            repo["files"] = files
            repo["commits"].append(header["value"])
            repo["sha"] = hashlib.sha1(json.dumps(sorted(files)).encode() + bytes(len(repo["commits"]))).hexdigest()
            return 200, {"commitUrl": f"{repo['url']}/commit/{repo['sha']}", "commitOid": repo["sha"], "success": True,
                         "pullRequestUrl": None}, {}
        self.unhandled.append(f"{method} {path}")
        return 405, {"error": "method not allowed"}, {}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self):
            split = urlsplit(self.path)
            path, body = unquote(split.path), self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            with hub.lock:
                try:
                    status, payload, extra = hub.handle(self.command, path, headers, body)
                except Exception as e:  # a stand-in bug shows up as a 500 the test will see
                    status, payload, extra = 500, {"error": repr(e)}, {}
                hub.requests.append({"method": self.command, "path": path, "query": parse_qs(split.query),
                                     "headers": headers, "status": status})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def serve_hub():
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub():
    with serve_hub() as h:
        yield h


def hub_env(hub: FakeHub | None, home: Path, token: str | None = TOKEN) -> dict:
    """A clean environment: no HF settings of the machine, the stand-in as endpoint, an empty login cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1,localhost",
               HF_ENDPOINT=hub.url if hub else "http://127.0.0.1:9")
    if token:
        env["HF_TOKEN"] = token
    return env


def cli(module: str, *args, env: dict) -> subprocess.CompletedProcess:
    """`python -m module args` from the repo root, with exactly `env` (run_module adds to os.environ)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def assert_clean(result: subprocess.CompletedProcess, *files: dict[str, bytes]) -> None:
    """The token never shows: not in the output, not in any uploaded file."""
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert TOKEN[3:] not in result.stdout + result.stderr
    for received in files:
        for name, content in received.items():
            assert TOKEN.encode() not in content, name


# ------------------------------------------------------------------------------------ trained folders


def train(tiny_llama, out: Path, *extra) -> Path:
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir", out,
                        "--max_steps", "2", "--save_strategy", "no", "--model_max_length", "1024", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def full_dir(tiny_llama, tmp_path_factory) -> Path:
    return train(tiny_llama, tmp_path_factory.mktemp("push") / "full")


@pytest.fixture(scope="module")
def lora_dir(tiny_llama, tmp_path_factory) -> Path:
    return train(tiny_llama, tmp_path_factory.mktemp("push") / "lora", "--lora_r", "4")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


FULL_UPLOAD = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "loss.png", "model.safetensors",
               "tokenizer.json", "tokenizer_config.json", "train_summary.json"}
ADAPTER_UPLOAD = {"README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "loss.png",
                  "tokenizer.json", "tokenizer_config.json", "train_summary.json"}


@pytest.fixture(scope="module")
def pushed_full(full_dir, tmp_path_factory):
    """The full model, with an evaluation and the clutter a run leaves, pushed once to a stand-in Hub."""
    folder = Path(shutil.copytree(full_dir, tmp_path_factory.mktemp("pushed") / "out"))
    (folder / "eval.json").write_text(json.dumps({"exact_match": 0.25, "per_topic": {"dbd": 0.5, "tifus": 0.0}, "n": 8}))
    (folder / "eval.md").write_text("# Evaluation\n\n8 questions.\n")
    (folder / "checkpoint-2").mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (folder / "checkpoint-2" / name).write_bytes(b"state")
    (folder / "optimizer.pt").write_bytes(b"state")
    (folder / "notes.txt").write_text("local notes\n")
    home = tmp_path_factory.mktemp("hf-home")
    with serve_hub() as hub:
        result = cli("trainer.push", "--model", folder, "--repo_id", "alpaca-medis/tiny-medis-id",
                     env=hub_env(hub, home))
        yield hub, result, folder


# ------------------------------------------------------------------------------------ trainer.push


def test_push_uploads_the_allow_list_and_nothing_else(pushed_full):
    hub, result, folder = pushed_full
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"{hub.url}/alpaca-medis/tiny-medis-id"
    files = hub.files("alpaca-medis/tiny-medis-id")
    assert set(files) == FULL_UPLOAD | {"eval.json", "eval.md"}  # no checkpoint-2/, training_args.bin, optimizer.pt
    for name in FULL_UPLOAD - {"README.md", "train_summary.json"}:
        assert files[name] == (folder / name).read_bytes(), name
    assert files["loss.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["tokenizer_config.json"]) == json.loads((folder / "tokenizer_config.json").read_text())
    assert "### Tanggapan:" in files["chat_template.jinja"].decode()
    assert "training_args.bin" in result.stderr and "not uploaded" in result.stderr  # said, not silently dropped
    repo = hub.repos[("model", "alpaca-medis/tiny-medis-id")]
    assert repo["private"] is False and len(repo["commits"]) == 1
    assert hub.unhandled == []


def test_push_sends_the_env_token_and_never_shows_it(pushed_full):
    hub, result, _ = pushed_full
    writes = [r for r in hub.requests if r["method"] == "POST"]
    paths = [r["path"] for r in writes]
    assert "/api/repos/create" in paths
    assert "/api/models/alpaca-medis/tiny-medis-id/preupload/main" in paths
    assert "/api/models/alpaca-medis/tiny-medis-id/commit/main" in paths
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert_clean(result, hub.files("alpaca-medis/tiny-medis-id"))


def test_push_uploads_no_local_path(pushed_full, full_dir, tiny_llama):
    hub, _, folder = pushed_full
    for name, content in hub.files("alpaca-medis/tiny-medis-id").items():
        for local in (str(tiny_llama), str(full_dir), str(folder), str(ROOT)):
            assert local.encode() not in content, (name, local)
    summary = json.loads(hub.files("alpaca-medis/tiny-medis-id")["train_summary.json"])
    assert summary["model"] == tiny_llama.name and summary["data_path"] == "sample.jsonl"
    assert summary["eval_loss_final"] == json.loads((folder / "train_summary.json").read_text())["eval_loss_final"]
    # Typed both ways: the upload reads back as the trained summary with only those two names replaced.
    trained = RunSummary.read(folder)
    assert RunSummary.from_dict(summary) == trained.replace(model=tiny_llama.name, data_path="sample.jsonl")


def test_model_card_metadata_and_body(pushed_full):
    hub, result, folder = pushed_full
    text = hub.files("alpaca-medis/tiny-medis-id")["README.md"].decode()
    meta = ModelCard(text).data.to_dict()
    assert "base_model" not in meta  # the tiny base is a local folder: not named, and the log says so
    assert "is not a Hub id" in result.stderr and "--base_model" in result.stderr
    assert meta["language"] == ["id"] and meta["datasets"] == ["sample"] and meta["license"] == "other"
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert meta["tags"] == ["alpaca", "alpaca-medis", "medical", "indonesian", "full-fine-tune"]
    summary = json.loads((folder / "train_summary.json").read_text())
    assert "not a substitute for a doctor" in text
    assert "| method | full |" in text and "| steps | 2 (0.333 epochs) |" in text
    assert f"{summary['eval_loss_initial']:.4f} → {summary['eval_loss_final']:.4f}" in text
    assert f"{summary['learned_tokens_trained']:,} trained on" in text
    assert "| hardware | 1 × cpu (single), fp32 |" in text
    assert "![loss](loss.png)" in text
    assert "## Evaluation" in text and "| exact_match | 0.25 |" in text and "| per_topic.dbd | 0.5 |" in text
    assert "[eval.md](eval.md)" in text
    assert 'AutoModelForCausalLM.from_pretrained(repo)' in text and 'repo = "alpaca-medis/tiny-medis-id"' in text
    assert 'pipeline("text-generation", model="alpaca-medis/tiny-medis-id")' in text
    assert "add_special_tokens=False" in text and "trainer" not in text.split("## Usage")[1].split("## Training")[0]


RUN_WITHOUT_PROJECT = r"""
import json, sys
sys.modules["trainer"] = None  # the pushed files must not need this project's code
from transformers import AutoTokenizer, pipeline
folder, question, card_code, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(folder)
messages = [{"role": "user", "content": question}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
chat = pipeline("text-generation", model=folder)
result = chat(messages, max_new_tokens=8, min_new_tokens=8, do_sample=False)
card = {}
exec(compile(open(card_code).read(), "card", "exec"), card)  # the model card's usage snippets, as written
json.dump({"prompt": prompt, "turns": result[0]["generated_text"], "card_prompt": card["prompt"],
           "card_reply": card["reply"][0]["generated_text"][-1]}, open(out, "w"))
"""


def test_pushed_model_chats_with_plain_transformers(pushed_full, tmp_path):
    hub, _, _ = pushed_full
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name, content in hub.files("alpaca-medis/tiny-medis-id").items():
        (folder / name).write_bytes(content)
    card = (folder / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(snippets) == 2
    code = "\n".join(snippets).replace('"alpaca-medis/tiny-medis-id"', json.dumps(str(folder)))
    (tmp_path / "card.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT_PROJECT, str(folder), QUESTION, str(tmp_path / "card.py"),
                             str(tmp_path / "out.json")], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    # The tiny Llama tokenizer adds BOS, so the template writes it as text (encoded with add_special_tokens=False).
    assert out["prompt"] == "<s>" + get_template("alpaca-id").format(QUESTION)
    assert [t["role"] for t in out["turns"]] == ["user", "assistant"]
    assert out["turns"][0]["content"] == QUESTION and out["turns"][1]["content"].strip()
    # The card's own snippets build the same prompt for their question, and its pipeline answers.
    card_question = re.search(r'"content": "([^"]+)"', snippets[0]).group(1)
    assert out["card_prompt"] == "<s>" + get_template("alpaca-id").format(card_question)
    assert out["card_reply"]["role"] == "assistant" and isinstance(out["card_reply"]["content"], str)


def test_adapter_names_its_base_by_hub_id(lora_dir, hub, tmp_path):
    # What trainer.train writes for the embedded model: its alias, not a Hub id.
    folder = copy_of(lora_dir, tmp_path)
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("train_summary.json", "model")):
        data = json.loads((folder / name).read_text())
        data[key] = "smollm2-135m"
        (folder / name).write_text(json.dumps(data))
    result = cli("trainer.push", "--model", folder, "--repo_id", "me/tiny-lora", "--private",
                 "--datasets", "GenMedGPT-5k-id", env=hub_env(hub, tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"{hub.url}/me/tiny-lora"
    files = hub.files("me/tiny-lora")
    assert set(files) == ADAPTER_UPLOAD  # peft's own README.md is replaced by ours, training_args.bin stays
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["r"] == 4 and config["target_modules"] == json.loads((lora_dir / "adapter_config.json").read_text())["target_modules"]
    assert files["adapter_model.safetensors"] == (lora_dir / "adapter_model.safetensors").read_bytes()
    for name, content in files.items():
        assert str(tmp_path).encode() not in content and str(lora_dir).encode() not in content, name
    text = files["README.md"].decode()
    meta = ModelCard(text).data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["GenMedGPT-5k-id"] and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "AutoPeftModelForCausalLM.from_pretrained(repo)" in text and "| method | lora (r=4, alpha=16) |" in text
    assert "## Evaluation" not in text
    assert hub.repos[("model", "me/tiny-lora")]["private"] is True
    assert_clean(result, files)


def test_adapter_with_a_local_base_needs_base_model(lora_dir, hub, tmp_path):
    result = cli("trainer.push", "--model", lora_dir, "--repo_id", "me/tiny-lora", env=hub_env(hub, tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a Hub id" in result.stderr and "--base_model ORG/NAME" in result.stderr
    assert hub.requests == []
    result = cli("trainer.push", "--model", lora_dir, "--repo_id", "me/tiny-lora", "--base_model", "org/tiny-base",
                 env=hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(hub.files("me/tiny-lora")["adapter_config.json"])["base_model_name_or_path"] == "org/tiny-base"


def test_dry_run_lists_the_files_without_network_or_token(full_dir, hub, tmp_path):
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "me/tiny", "--dry_run",
                 env=hub_env(hub, tmp_path, token=None))
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.requests == []
    listed = {line.split()[0]: line for line in result.stdout.splitlines()[1:-1]}
    assert set(listed) == FULL_UPLOAD
    size = (full_dir / "model.safetensors").stat().st_size
    assert f"{size / 1000:.1f} kB" in listed["model.safetensors"]
    assert f"model card (generated), the front page of {hub.url}/me/tiny" in listed["README.md"]
    assert f"{hub.url}/me/tiny" in result.stdout.splitlines()[0] and "nothing uploaded" in result.stdout
    assert result.stdout.splitlines()[-1].strip().startswith(f"{len(FULL_UPLOAD)} files")


def test_no_token_exits_2_with_what_to_do(full_dir, hub, tmp_path):
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "me/tiny", env=hub_env(hub, tmp_path, token=None))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no Hugging Face token" in result.stderr and "HF_TOKEN" in result.stderr and "hf auth login" in result.stderr
    assert hub.requests == []


def test_login_cache_token_is_used(full_dir, hub, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN)  # where `hf auth login` keeps it
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "me/cached", env=hub_env(hub, home, token=None))
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in hub.requests if r["method"] == "POST")
    assert_clean(result, hub.files("me/cached"))


@pytest.mark.parametrize("where", ["train_summary.json", "README.md"])
def test_token_guard_refuses_a_planted_token(full_dir, hub, tmp_path, where):
    planted = "hf_" + "".join("Ab3"[i % 3] for i in range(34))
    folder = copy_of(full_dir, tmp_path)
    extra = []
    if where == "train_summary.json":  # in a field of the summary that the card does not show
        summary = json.loads((folder / "train_summary.json").read_text())
        (folder / "train_summary.json").write_text(json.dumps({**summary, "wrapped_class": f"token {planted}"}))
    else:  # lands in the generated card only
        extra = ["--datasets", planted]
    for flags in ([], ["--dry_run"]):
        result = cli("trainer.push", "--model", folder, "--repo_id", "me/tiny", *flags, *extra,
                     env=hub_env(hub, tmp_path / "home"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"refusing to upload: {where}" in result.stderr and "Nothing was uploaded" in result.stderr
        assert planted not in result.stdout + result.stderr
        assert hub.requests == [] and hub.repos == {}


@pytest.mark.parametrize("case", ["unknown_field", "newer_schema", "not_json"])
def test_unreadable_summary_exits_2_naming_the_file_and_the_fix(full_dir, hub, tmp_path, case):
    folder = copy_of(full_dir, tmp_path)
    path = folder / "train_summary.json"
    summary = json.loads(path.read_text())
    text, expected = {
        "unknown_field": (json.dumps({**summary, "note": "x"}), "unknown field(s) note"),
        "newer_schema": (json.dumps({**summary, "schema_version": 99}), "update alpaca-medis"),
        "not_json": ("{not json", "not valid JSON"),
    }[case]
    path.write_text(text)
    for flags in ([], ["--dry_run"]):
        result = cli("trainer.push", "--model", folder, "--repo_id", "me/tiny", *flags, env=hub_env(hub, tmp_path / "home"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"error: {path}: " in result.stderr and expected in result.stderr, result.stderr
        assert hub.requests == []


def test_env_token_in_a_file_is_refused_even_when_not_hf_shaped(full_dir, hub, tmp_path):
    token = "custom-endpoint-token-" + secrets.token_hex(8)
    folder = copy_of(full_dir, tmp_path)
    (folder / "eval.md").write_text(f"ran with {token}\n")
    result = cli("trainer.push", "--model", folder, "--repo_id", "me/tiny", env=hub_env(hub, tmp_path, token=token))
    assert result.returncode == 2 and "refusing to upload: eval.md" in result.stderr
    assert token not in result.stderr and hub.requests == []


def test_missing_pieces_name_the_folder_the_file_and_the_fix(full_dir, lora_dir, hub, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    cases = {}
    no_weights = copy_of(full_dir, tmp_path / "a")
    (no_weights / "model.safetensors").unlink()
    cases[no_weights] = "model.safetensors"
    no_template = copy_of(full_dir, tmp_path / "b")
    (no_template / "chat_template.jinja").unlink()
    cases[no_template] = "chat_template"
    no_adapter = copy_of(lora_dir, tmp_path / "c")
    (no_adapter / "adapter_model.safetensors").unlink()
    cases[no_adapter] = "adapter_model.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases[empty] = "config.json + model.safetensors"
    cases[tmp_path / "nowhere"] = "no such folder"
    for folder, missing in cases.items():
        result = cli("trainer.push", "--model", folder, "--repo_id", "me/tiny", "--dry_run", env=env)
        assert result.returncode == 2, (folder, result.stderr)
        assert "Traceback" not in result.stderr
        assert str(folder) in result.stderr and missing in result.stderr, result.stderr
        assert "python -m trainer.train" in result.stderr
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "no-namespace", "--dry_run", env=env)
    assert result.returncode == 2 and "USER/NAME" in result.stderr
    assert hub.requests == []


def test_remote_code_named_by_auto_map_is_uploaded(full_dir, hub, tmp_path):
    # A model with its own modelling code (InternLM): config.json's auto_map names the module files.
    folder = copy_of(full_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
                          "AutoConfig": "other-org/repo--configuration_custom.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_custom.py").write_text("class CustomForCausalLM: ...\n")
    (folder / "helper.py").write_text("# not named by auto_map\n")
    result = cli("trainer.push", "--model", folder, "--repo_id", "me/custom", env=hub_env(hub, tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("me/custom")
    assert set(files) == FULL_UPLOAD | {"modeling_custom.py"}
    card = files["README.md"].decode()
    assert "AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)" in card
    assert 'pipeline("text-generation", model="me/custom", trust_remote_code=True)' in card


def test_existing_repo_is_updated(full_dir, hub, tmp_path):
    env = hub_env(hub, tmp_path)
    for message in ("first", "second"):
        result = cli("trainer.push", "--model", full_dir, "--repo_id", "me/again", "--commit_message", message, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    assert [c["summary"] for c in hub.repos[("model", "me/again")]["commits"]] == ["first", "second"]
    assert [r["status"] for r in hub.requests if r["path"] == "/api/repos/create"] == [200, 409]


def test_hub_errors_exit_1_with_a_hint(full_dir, tmp_path):
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "me/tiny", env=hub_env(None, tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not reach http://127.0.0.1:9" in result.stderr and "HF_ENDPOINT" in result.stderr
    assert_clean(result)


def test_evaluation_from_trainer_evaluate_goes_into_the_card_without_local_paths(full_dir, hub, tmp_path):
    folder = copy_of(full_dir, tmp_path)
    base, tuned, data = "smollm2-135m", str(folder), str(SAMPLE)
    metrics = {"loss": 2.5, "perplexity": 12.18, "rouge_l": 0.21, "chrf": 30.5, "eos_share": 0.9, "answers": ["a"],
               "learned_tokens": 10, "answer_words_mean": 20.0, "rouge_l_per_record": [0.21], "finishes": ["eos"],
               "indonesian_share": 0.95, "repetition_share": 0.05}
    report = {"data_path": data, "split": "val", "records": 1, "max_new_tokens": 8, "shapes": ["input", "empty"],
              "models": {base: {"input": dict(metrics, loss=4.0), "empty": dict(metrics, loss=4.5)},
                         tuned: {"input": metrics, "empty": dict(metrics, loss=2.75, eos_share=0.8)}}, "samples": []}
    (folder / "eval.json").write_text(json.dumps(report))
    (folder / "eval.md").write_text(f"| `{base}` | 4.0 |\n| `{tuned}` | 2.5 |\n")
    result = cli("trainer.push", "--model", folder, "--repo_id", "me/evaluated", env=hub_env(hub, tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("me/evaluated")
    for name in ("eval.json", "eval.md", "README.md"):
        assert str(folder).encode() not in files[name] and str(SAMPLE).encode() not in files[name], name
    uploaded = json.loads(files["eval.json"])
    assert list(uploaded["models"]) == [base, folder.name] and uploaded["data_path"] == "sample.jsonl"
    card = files["README.md"].decode()
    assert ("| model | prompt | loss (learned tokens) | perplexity | ROUGE-L F | chrF | answer words | stops on EOS | "
            "Indonesian | repetition |") in card
    assert f"| {folder.name} | input | 2.500 | 12.2 | 0.210 | 30.5 | 20 | 90% | 95% | 5% |" in card
    assert f"| {folder.name} | empty | 2.750 | 12.2 | 0.210 | 30.5 | 20 | 80% | 95% | 5% |" in card
    assert "| smollm2-135m | empty | 4.500 |" in card


def test_a_backend_evaluations_local_copy_is_published_by_name(tmp_path):
    """trainer.evaluate --backend URL --model LOCAL names the local copy that measured the loss: no local path either."""
    from trainer.hub.push import evaluated_names

    local = tmp_path / "alpaca-medis-270m"
    local.mkdir()
    report = {"models": {"alpaca-medis/alpaca-medis-270m": {}}, "backend": {"url": "http://gpu-box:8000/v1", "loss_from": str(local)}}
    assert evaluated_names(report) == {str(local): "alpaca-medis-270m"}
    assert evaluated_names({**report, "backend": {"url": "http://gpu-box:8000/v1", "loss_from": None}}) == {}


def test_output_dir_writes_a_compact_adapter_that_publishes_with_its_base_tokenizer(lora_dir, tiny_llama, hub, tmp_path):
    """How models/alpaca-medis-270m is written: bf16 adapter, the embedded base's tokenizer left to the base,
    a card naming the release and its license; publishing that folder stages the base's tokenizer again."""
    import torch
    from safetensors.torch import load_file

    folder = copy_of(lora_dir, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path="smollm2-135m")))
    home = tmp_path / "medis-home"
    base = Path(shutil.copytree(tiny_llama, home / "models" / "smollm2-135m"))  # only its tokenizer files are read
    env = dict(hub_env(hub, tmp_path / "home"), ALPACA_MEDIS_HOME=str(home))
    out = tmp_path / "shipped"
    result = cli("trainer.push", "--model", folder, "--repo_id", "alpaca-medis/tiny", "--output_dir", out, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.requests == [] and f"wrote {out}" in result.stderr
    assert {p.name for p in out.iterdir()} == {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                               "chat_template.jinja", "loss.png", "train_summary.json"}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    original, compact = load_file(folder / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert original.keys() == compact.keys() and all(t.dtype == torch.bfloat16 for t in compact.values())
    for key, tensor in original.items():
        torch.testing.assert_close(compact[key].float(), tensor, rtol=1e-2, atol=1e-3)
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "de-quantized from the SmolLM2" in card
    assert (out / "chat_template.jinja").read_bytes() == (folder / "chat_template.jinja").read_bytes()

    result = cli("trainer.push", "--model", out, "--repo_id", "me/tiny", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("me/tiny")
    assert files["tokenizer.json"] == (base / "tokenizer.json").read_bytes()
    assert files["chat_template.jinja"] == (out / "chat_template.jinja").read_bytes()
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------------- trainer.push --gguf


def fake_export(folder: Path, check: dict) -> Path:
    """A GGUF file and what trainer.export writes beside it, with a given check result (no converter needed)."""
    gguf = folder / "m-q8_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    gguf.with_suffix(".Modelfile").write_text("FROM ./m-q8_0.gguf\n")
    from trainer.export.check import check_passed

    report = {"gguf": gguf.name, "outtype": "q8_0", "bytes": gguf.stat().st_size, "modelfile": "m-q8_0.Modelfile", "check": check,
              "problems": check_passed(check), "ollama": {"template": "{{ .Content }}", "params": {"stop": ["### Instruksi"]}}}
    gguf.with_suffix(".export.json").write_text(json.dumps(report))
    return gguf


PASSED = {"gguf_chat_template_renders_training_prompt": True, "modelfile_template_renders_training_prompt": True,
          "token_id_mismatches": 0, "records": 4, "greedy_agreement": 0.995, "max_abs_logit_diff": 0.5}


@pytest.mark.parametrize("case, message", [
    ("no report", "m-q8_0.export.json or m-q8_0.Modelfile is missing beside it"),
    ("failed check", "did not pass the export's check (next-token agreement along greedy answers 90.00% is below 99.00%)"),
    ("changed file", "the file changed since m-q8_0.export.json was written"),
    ("not gguf", "no such .gguf file"),
])
def test_gguf_without_a_passed_export_is_refused(full_dir, hub, tmp_path, case, message):
    gguf = fake_export(tmp_path, dict(PASSED, greedy_agreement=0.9) if case == "failed check" else PASSED)
    if case == "no report":
        gguf.with_suffix(".export.json").unlink()
    elif case == "changed file":
        gguf.write_bytes(b"GGUF" + bytes(61))
    elif case == "not gguf":
        gguf = gguf.with_suffix(".bin")
    result = cli("trainer.push", "--model", full_dir, "--repo_id", "alpaca-medis/g", "--gguf", gguf, env=hub_env(hub, tmp_path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert ("model", "alpaca-medis/g") not in hub.repos


@pytest.mark.slow
def test_push_gguf_uploads_the_export_with_ollama_files_and_a_card_section(hub, tmp_path):
    """A tiny Llama with SmolLM2's tokenizer (llama.cpp's converter must recognise it) trained 2 steps, exported to
    q8_0 by trainer.export, and pushed with --gguf."""
    from transformers import AutoTokenizer

    from conftest import build_model
    from trainer.models import prepare_embedded

    tokenizer = AutoTokenizer.from_pretrained(prepare_embedded("smollm2-135m"))
    base = tmp_path / "base"
    build_model("llama", len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = train(base, tmp_path / "out", "--template", "alpaca-id")
    gguf = tmp_path / "gguf" / "tiny-medis-id-q8_0.gguf"
    export = run_module("trainer.export", "--model", model, "--out", gguf, "--outtype", "q8_0", "--limit", "2",
                        "--min_agreement", "0.5")  # an untrained model's top tokens are near ties
    assert export.returncode == 0, export.stderr[-3000:]
    result = cli("trainer.push", "--model", model, "--repo_id", "alpaca-medis/tiny-medis-id", "--gguf", gguf,
                 env=hub_env(hub, tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("alpaca-medis/tiny-medis-id")
    assert files["tiny-medis-id-q8_0.gguf"] == gguf.read_bytes()
    assert files["tiny-medis-id-q8_0.Modelfile"] == gguf.with_suffix(".Modelfile").read_bytes()
    report = json.loads(gguf.with_suffix(".export.json").read_text())
    assert files["template"].decode() == report["ollama"]["template"] and "### Tanggapan:" in files["template"].decode()
    assert json.loads(files["params"])["stop"] == list(get_template("alpaca-id").stop_markers)
    card = files["README.md"].decode()
    assert "## Run it with llama.cpp or Ollama" in card
    assert "ollama run hf.co/alpaca-medis/tiny-medis-id:Q8_0" in card and "llama-cli -hf alpaca-medis/tiny-medis-id:Q8_0 --jinja" in card
    assert f"| [tiny-medis-id-q8_0.gguf](tiny-medis-id-q8_0.gguf) | q8_0 | {report['bytes'] / 1e6:.0f} MB | " \
           f"{report['check']['greedy_agreement']:.1%} |" in card
    assert all(str(tmp_path).encode() not in files[name] for name in files if not name.endswith(".gguf"))
    assert_clean(result, files)
