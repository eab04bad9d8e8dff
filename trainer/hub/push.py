"""Publish a trained model folder to the Hugging Face Hub, with a generated model card.

    python -m trainer.push --model out --repo_id USER/NAME [--private] [--dry_run] \
        [--datasets ID ...] [--license L] [--base_model ORG/NAME] [--commit_message M] \
        [--gguf out/gguf/NAME-q8_0.gguf ...]

`--model` is an output folder of `python -m trainer.train`: a full model (config.json +
*.safetensors) or a LoRA adapter (adapter_config.json + adapter_model.safetensors), next to the
tokenizer that carries the prompt as its chat_template. Only files on an allow-list are staged in a
temporary folder and uploaded from there, so checkpoint-*/, training_args.bin (a pickle holding
local paths) and optimizer state never leave the machine. The model card (README.md) is generated
from train_summary.json, loss.png and eval.json by trainer/hub/card.py.

Token: $HF_TOKEN, else the login cache of `hf auth login`. It is handed to HfApi and nowhere else.
Every staged file is scanned for a Hugging Face token before anything is sent; one found stops the
push. $HF_ENDPOINT points at another Hub. `--dry_run` lists what would be uploaded, without a
network connection or a token.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainer.hub.card import CardInfo, default_datasets, default_license, hub_model_id, is_local_path, model_card
from trainer.models import EMBEDDED, embedded_dir  # torch-free
from trainer.run_summary import RunSummary, SummaryError  # pure Python

logger = logging.getLogger(__name__)

# A Hugging Face access token: hf_ + 30 or more letters/digits. Any 30 of them mark a match, which
# lets the scan read big files in chunks overlapping by the pattern's length.
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30}")
_SCAN_CHUNK = 8 << 20

# The allow-list: everything that is uploaded from a model folder. Anything else stays local.
FULL_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
FULL_FILES = ("config.json", "generation_config.json", *FULL_WEIGHTS)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
    "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
)
REPORT_FILES = ("train_summary.json", "loss.png", "eval.json", "eval.md")


class PushError(Exception):
    """A push that cannot go ahead; the message says what to do. Exit code 2."""


# ------------------------------------------------------------------------------------------ token guard


def find_tokens(folder: Path, secrets: tuple[str, ...] = ()) -> list[str]:
    """Relative paths of the files under `folder` that hold a Hugging Face token (or one of `secrets`)."""
    literals = [s.encode() for s in secrets if s and len(s) >= 8]
    overlap = max([32, *(len(s) for s in literals)])
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        tail = b""
        with open(path, "rb") as f:
            while chunk := f.read(_SCAN_CHUNK):
                window = tail + chunk
                if TOKEN_PATTERN.search(window) or any(s in window for s in literals):
                    found.append(path.relative_to(folder).as_posix())
                    break
                tail = window[-overlap:]
    return found


def guard_tokens(folder: Path, secrets: tuple[str, ...] = ()) -> None:
    """Refuse to upload a folder in which a token appears; never show the token itself."""
    found = find_tokens(folder, secrets)
    if found:
        raise PushError(
            f"refusing to upload: {', '.join(found)} contain(s) what looks like a Hugging Face access "
            "token (hf_...). Remove it from the source file(s) and run again (and revoke the token at "
            "https://huggingface.co/settings/tokens if it was ever shared). Nothing was uploaded."
        )


# ------------------------------------------------------------------------------------ Hub plumbing


def hub_endpoint() -> str:
    """$HF_ENDPOINT as it is now (huggingface_hub reads it once, at import), else the library's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def repo_url(repo_id: str, repo_type: str = "model") -> str:
    return f"{hub_endpoint()}/{'spaces/' if repo_type == 'space' else ''}{repo_id}"


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        ok = repo_id.count("/") == 1
    except HFValidationError:
        ok = False
    if not ok:
        raise PushError(f"--repo_id {repo_id!r} is not a repo id: use USER/NAME or ORG/NAME, e.g. alpaca-medis/llama-2-7b-medis-id.")


def hub_token() -> str:
    """The token from $HF_TOKEN or the login cache; never printed or written anywhere."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError(
            "no Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`. "
            "--dry_run shows what would be uploaded without one."
        )
    return token


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def list_staged(folder: Path, notes: dict[str, str]) -> list[str]:
    """One line per staged file: path, size and where it came from."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    width = max(len(p.relative_to(folder).as_posix()) for p in files)
    lines = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        note = notes.get(rel, "")
        lines.append(f"  {rel:<{width}}  {_size(p.stat().st_size):>9}  {note}".rstrip())
    total = sum(p.stat().st_size for p in files)
    lines.append(f"  {len(files)} files, {_size(total)}")
    return lines


def publish(folder: Path, repo_id: str, *, repo_type: str = "model", private: bool = False, dry_run: bool = False,
            commit_message: str, notes: dict[str, str] | None = None) -> str:
    """Guard, then create the repo and upload `folder` as one commit (or, with dry_run, list it). Returns the URL."""
    url = repo_url(repo_id, repo_type)
    if dry_run:
        # No token is needed; one in the environment is still looked for in the files.
        guard_tokens(folder, (os.environ.get("HF_TOKEN", ""),))
        print(f"dry run, nothing uploaded: {url} ({repo_type} repo, {'private' if private else 'public'}) would get")
        print("\n".join(list_staged(folder, notes or {})))
        return url
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it (or use --dry_run).")
    token = hub_token()
    guard_tokens(folder, (token,))
    api = HfApi(endpoint=hub_endpoint(), token=token)
    logger.info("creating %s repo %s (exist_ok, %s)", repo_type, repo_id, "private" if private else "public")
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                    space_sdk="gradio" if repo_type == "space" else None)
    n = sum(1 for p in folder.rglob("*") if p.is_file())
    logger.info("uploading %d files to %s", n, repo_id)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type, commit_message=commit_message)
    logger.info("committed %s: %s", commit.oid, commit_message)
    print(url)
    return url


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    found = (getattr(sys.modules.get(m), "TransportError", None) for m in ("httpx2", "httpx"))
    return tuple(e for e in found if isinstance(e, type))


def run(body, action: str) -> int:
    """Run `body()` with the CLI's error handling: exit 2 for our errors, 1 for the Hub's."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("httpx", "httpx2"):  # one line per HTTP request: our own log lines say what happens
        logging.getLogger(name).setLevel(logging.WARNING)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        body()
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = {
            401: "The token was rejected: set HF_TOKEN to a valid write token or run `hf auth login`.",
            403: "The token may not write there: use your user name or an organization you belong to, with a write token.",
        }.get(status, "Fix the cause and run again.")
        print(f"error: the Hub refused the {action} ({status}): {e}\n{hint}", file=sys.stderr)
        return 1
    except _transport_errors() as e:  # connection refused, DNS, timeouts
        print(f"error: could not reach {hub_endpoint()}: {e}. Check the network connection, or HF_ENDPOINT.", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------- the model folder


@dataclass
class ModelFolder:
    path: Path
    kind: str  # "full" or "adapter"
    files: list[str]  # names in `path` that are uploaded
    summary: RunSummary | None = None  # train_summary.json, when the folder has one
    adapter_config: dict = field(default_factory=dict)
    remote_code: bool = False
    # An adapter of an embedded base kept without the base's tokenizer (models/alpaca-medis-270m): the
    # base's tokenizer files are staged with it, so the published repo loads on its own.
    tokenizer_from_base: str | None = None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PushError(f"{path} is not readable JSON ({e}).") from None
    return data if isinstance(data, dict) else {}


def _read_summary(path: Path) -> RunSummary | None:
    try:
        return RunSummary.read(path)
    except SummaryError as e:  # names the file and what to do
        raise PushError(str(e)) from None


def _matches(path: Path, patterns) -> list[str]:
    return sorted({p.name for pattern in patterns for p in path.glob(pattern) if p.is_file()})


def _auto_map_files(path: Path, config: dict) -> list[str]:
    """Module files of remote code named by an `auto_map` (e.g. modeling_internlm.py), when in the folder."""
    names = []
    for value in (config.get("auto_map") or {}).values():
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str) and "--" not in ref:  # "repo--module.Class" lives in another repo
                module = ref.rsplit(".", 1)[0] + ".py"
                if (path / module).is_file():
                    names.append(module)
    return names


def _weights(path: Path, model_dir: str, train_hint: str) -> tuple[str, list[str], list[str]]:
    """(kind, weight and config files, what is missing): a LoRA adapter if adapter_config.json is there, else a full model."""
    if (path / "adapter_config.json").is_file():
        files = _matches(path, ADAPTER_FILES)
        missing = [] if "adapter_model.safetensors" in files else [
            "adapter_model.safetensors (the adapter weights; adapter_config.json alone is not a model)"]
        return "adapter", files, missing
    if (path / "config.json").is_file():
        files = _matches(path, FULL_FILES)
        missing = [] if any(f.endswith(".safetensors") for f in files) else [
            "model.safetensors (the weights; only safetensors are uploaded)"]
        return "full", files, missing
    raise PushError(
        f"{model_dir} holds no trained model (missing: config.json + model.safetensors for a full model, "
        f"or adapter_config.json + adapter_model.safetensors for a LoRA adapter). {train_hint}"
    )


def _tokenizer_problems(path: Path, tokenizer: list[str], from_base: str | None) -> list[str]:
    """The prompt format must travel with the model: as chat_template.jinja or inside tokenizer_config.json."""
    if from_base:
        if not (path / "chat_template.jinja").is_file():
            return [f"chat_template.jinja (the prompt format; the tokenizer itself comes from the base, {from_base})"]
        return []
    if "tokenizer_config.json" not in tokenizer:
        return ["tokenizer_config.json (the tokenizer is saved next to the weights by trainer.train)"]
    if not ((path / "chat_template.jinja").is_file() or _read_json(path / "tokenizer_config.json").get("chat_template")):
        return [
            "chat_template.jinja (and no \"chat_template\" in tokenizer_config.json): the prompt format would not "
            "travel with the model. trainer.train saves it; for a tokenizer saved elsewhere set "
            "tok.chat_template = trainer.prompts.chat_template_for(tok, get_template('alpaca-id')) and save it again"
        ]
    return []


def inspect_model_dir(model_dir: str) -> ModelFolder:
    """What `model_dir` holds and which of its files are uploaded; every missing piece in one error."""
    path = Path(model_dir)
    train_hint = f"Train one with `python -m trainer.train --output_dir {model_dir} ...`."
    if not path.is_dir():
        raise PushError(f"{model_dir}: no such folder. {train_hint}")
    kind, files, problems = _weights(path, model_dir, train_hint)
    tokenizer = _matches(path, TOKENIZER_FILES)
    adapter_base = _read_json(path / "adapter_config.json").get("base_model_name_or_path") if kind == "adapter" else None
    from_base = adapter_base if adapter_base in EMBEDDED and "tokenizer_config.json" not in tokenizer else None
    problems += _tokenizer_problems(path, tokenizer, from_base)
    if problems:
        raise PushError(f"{model_dir} is not ready to publish; missing: " + "; ".join(problems) + f". {train_hint}")
    configs = [_read_json(path / name) for name in ("config.json", "tokenizer_config.json") if (path / name).is_file()]
    code = sorted({f for config in configs for f in _auto_map_files(path, config)})
    reports = _matches(path, REPORT_FILES)
    return ModelFolder(
        path=path, kind=kind, files=sorted({*files, *tokenizer, *code, *reports}),
        summary=_read_summary(path) if "train_summary.json" in reports else None,
        adapter_config=_read_json(path / "adapter_config.json") if kind == "adapter" else {},
        remote_code=any(c.get("auto_map") for c in configs), tokenizer_from_base=from_base,
    )


def evaluated_names(data) -> dict[str, str]:
    """Local paths in a trainer.evaluate eval.json (models, data) -> the names to publish instead."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return {}
    loss_from = (data.get("backend") or {}).get("loss_from") or ""  # --backend's local copy of the served model
    local = [n for n in [*data["models"], data.get("data_path") or "", loss_from] if n and is_local_path(n)]
    return {n: hub_model_id(n) or Path(n).name for n in sorted(local, key=len, reverse=True)}


# --------------------------------------------------------------------------------------------- staging


def link_or_copy(src: Path, dst: Path) -> None:
    """Weights can be many GB: link them into the staging folder instead of copying where possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copy2(src, dst)


@dataclass
class ResolvedBase:
    """The base model as the folder recorded it (a Hub id, an embedded name or a local path) and its Hub id."""

    recorded: str | None
    hub_id: str | None


def _resolve_base(folder: ModelFolder, args) -> ResolvedBase:
    """The base to name on the Hub: --base_model, else what training recorded, when that is a Hub id. An adapter
    must name one (nobody could load it otherwise); a full model only loses the card's base_model."""
    recorded = folder.adapter_config.get("base_model_name_or_path") if folder.kind == "adapter" else (
        folder.summary.model if folder.summary is not None else None)
    if args.base_model and hub_model_id(args.base_model) is None:
        raise PushError(f"--base_model {args.base_model!r} is not a Hub id: give ORG/NAME, e.g. meta-llama/Llama-2-7b-hf.")
    hub_id = hub_model_id(args.base_model) or hub_model_id(recorded)
    if hub_id is None and folder.kind == "adapter":
        raise PushError(
            f"the adapter in {folder.path} names its base model {recorded!r}, which is not a Hub id, so nobody could "
            "load it from the Hub. Name the Hub model it was trained from with --base_model ORG/NAME."
        )
    if hub_id is None:
        logger.warning("base model %r is not a Hub id: the card names no base_model (pass --base_model ORG/NAME to set one)",
                       recorded)
    return ResolvedBase(recorded, hub_id)


def _stage_files(folder: ModelFolder, staging: Path) -> None:
    """The allow-listed files, linked: the cleaning steps below replace (never edit) a linked file."""
    for name in folder.files:
        link_or_copy(folder.path / name, staging / name)


def _restage(staging: Path, name: str, text: str) -> None:
    """Write a cleaned copy: unlink first, so a hard link to the user's file is not written through."""
    (staging / name).unlink()
    (staging / name).write_text(text, encoding="utf-8")


def _stage_tokenizer_from_base(folder: ModelFolder, staging: Path) -> dict[str, str]:
    """An adapter kept without its embedded base's tokenizer (models/alpaca-medis-270m) gets the base's tokenizer
    files, so the published repo loads on its own; its own chat_template.jinja stays."""
    if not folder.tokenizer_from_base:
        return {}
    base_dir = embedded_dir(folder.tokenizer_from_base)
    names = [n for n in _matches(base_dir, TOKENIZER_FILES) if n != "chat_template.jinja"]
    if "tokenizer_config.json" not in names:
        raise PushError(f"the adapter's tokenizer comes from {folder.tokenizer_from_base}, which is not prepared on "
                        f"this machine: run `python -m trainer.models prepare {folder.tokenizer_from_base}` first.")
    for name in names:
        link_or_copy(base_dir / name, staging / name)
    return {name: f"tokenizer of the base, {folder.tokenizer_from_base}" for name in names}


def _clean_adapter_config(folder: ModelFolder, staging: Path, base: ResolvedBase) -> dict[str, str]:
    """peft loads the base named in adapter_config.json: the Hub id, not a local path or an embedded name."""
    if folder.kind != "adapter":
        return {}
    config = dict(folder.adapter_config, base_model_name_or_path=base.hub_id)
    _restage(staging, "adapter_config.json", json.dumps(config, indent=2) + "\n")
    if base.recorded != base.hub_id:
        return {"adapter_config.json": f"base_model_name_or_path: {base.hub_id} (was {base.recorded})"}
    return {}


def _clean_summary(folder: ModelFolder, staging: Path, base: ResolvedBase) -> dict[str, str]:
    """No local paths leave the machine: the base by Hub id (or folder name), the data by file name."""
    summary = folder.summary
    if summary is None:
        return {}
    data_path = summary.data_path
    if data_path and (is_local_path(data_path) or Path(data_path).suffix in (".json", ".jsonl")):
        data_path = Path(data_path).name
    model = base.hub_id or (Path(base.recorded).name if base.recorded else None)
    extra = ",".join(Path(p).name for p in summary.extra_data_path.split(",")) if summary.extra_data_path else None
    init_adapter = Path(summary.init_adapter).name if summary.init_adapter else None
    cleaned = summary.replace(model=model, data_path=data_path, extra_data_path=extra, init_adapter=init_adapter)
    _restage(staging, "train_summary.json", cleaned.to_json())
    return {"train_summary.json": "local paths replaced by names"} if cleaned != summary else {}


def _read_eval(folder: ModelFolder):
    """eval.json's data for the card; a broken file is still uploaded as it is, but shown nowhere."""
    if "eval.json" not in folder.files:
        return None
    try:
        return json.loads((folder.path / "eval.json").read_text(encoding="utf-8"))
    except ValueError as e:
        logger.warning("eval.json is not valid JSON (%s): uploaded, but not shown in the card", e)
        return None


def _clean_eval_reports(folder: ModelFolder, staging: Path) -> tuple[object, dict[str, str]]:
    """trainer.evaluate names models and data as given, maybe as local paths: eval.json and eval.md get the
    published names instead. Returns eval.json's (cleaned) data for the card, and the notes."""
    eval_data = _read_eval(folder)
    names = evaluated_names(eval_data)
    if not names:
        return eval_data, {}
    notes = {}
    for report in ("eval.json", "eval.md"):
        if report in folder.files:
            text = (folder.path / report).read_text(encoding="utf-8")
            for local, public in names.items():
                text = text.replace(json.dumps(local)[1:-1] if report == "eval.json" else local, public)
            _restage(staging, report, text)
            notes[report] = "local paths replaced by names"
    return json.loads((staging / "eval.json").read_text(encoding="utf-8")), notes


def _write_card(folder: ModelFolder, staging: Path, args, base: ResolvedBase, eval_data) -> dict[str, str]:
    """README.md, the repo's front page. It reads the summary as trained (the card shows only file names)."""
    info = CardInfo(
        repo_id=args.repo_id, kind=folder.kind, base_model=base.hub_id,
        datasets=args.datasets if args.datasets else default_datasets(folder.summary),
        license=args.license or default_license(base.hub_id or base.recorded), summary=folder.summary,
        eval_data=eval_data, has_loss_plot="loss.png" in folder.files, has_eval_md="eval.md" in folder.files,
        remote_code=folder.remote_code, embedded_base=base.recorded if base.recorded in EMBEDDED else None,
        gguf=args.exports,
    )
    (staging / "README.md").write_text(model_card(info), encoding="utf-8")
    return {"README.md": f"model card (generated), the front page of {repo_url(args.repo_id)}"}


def read_exports(paths: list[str]) -> list[dict]:
    """The reports `trainer.export` wrote beside each GGUF; a file without one, or one that failed its check,
    is not published."""
    exports = []
    for name in paths:
        gguf = Path(name)
        report_path, modelfile = gguf.with_suffix(".export.json"), gguf.with_suffix(".Modelfile")
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise PushError(f"--gguf {name}: no such .gguf file. Make one with `python -m trainer.export --out {name} ...`.")
        if not report_path.is_file() or not modelfile.is_file():
            raise PushError(f"--gguf {name}: {report_path.name} or {modelfile.name} is missing beside it; "
                            f"export it with `python -m trainer.export --out {name} ...`, which writes both.")
        report = _read_json(report_path)
        if report.get("bytes") != gguf.stat().st_size:
            raise PushError(f"--gguf {name}: the file changed since {report_path.name} was written; export it again.")
        if not isinstance(report.get("problems"), list) or not isinstance(report.get("check"), dict):
            raise PushError(f"--gguf {name}: {report_path.name} holds no check result; export it again.")
        if report["problems"]:
            raise PushError(f"--gguf {name} did not pass the export's check ({'; '.join(report['problems'])}); it is not published.")
        exports.append(dict(report, path=str(gguf)))
    return exports


def _stage_gguf(exports: list[dict], staging: Path) -> dict[str, str]:
    """Each GGUF with its Modelfile and report, plus the `template` and `params` files that
    `ollama run hf.co/USER/REPO` reads from a repo (the TEMPLATE and PARAMETERs of the Modelfile)."""
    notes = {}
    for report in exports:
        gguf = Path(report["path"])
        for path in (gguf, gguf.with_suffix(".Modelfile"), gguf.with_suffix(".export.json")):
            link_or_copy(path, staging / path.name)
        notes[gguf.name] = f"GGUF ({report['outtype']}) from trainer.export"
    if exports:
        ollama = exports[0]["ollama"]
        (staging / "template").write_text(ollama["template"], encoding="utf-8")
        (staging / "params").write_text(json.dumps(ollama["params"], indent=2) + "\n", encoding="utf-8")
        notes |= {"template": "Ollama's TEMPLATE for hf.co runs", "params": "Ollama's parameters for hf.co runs"}
    return notes


def stage_model(folder: ModelFolder, staging: Path, args) -> dict[str, str]:
    """Put the upload into `staging`: allow-listed files, a cleaned adapter_config/summary/eval reports, the card.
    Returns a note per file that is not a plain copy, for the dry-run listing."""
    base = _resolve_base(folder, args)
    _stage_files(folder, staging)
    notes = _stage_tokenizer_from_base(folder, staging)
    notes |= _clean_adapter_config(folder, staging, base)
    notes |= _clean_summary(folder, staging, base)
    eval_data, eval_notes = _clean_eval_reports(folder, staging)
    notes |= eval_notes
    notes |= _stage_gguf(args.exports, staging)
    notes |= _write_card(folder, staging, args, base, eval_data)
    return notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.push", description=__doc__.split("\n\n")[0],
        epilog="Token: $HF_TOKEN or `hf auth login`. $HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument("--model", "--model_dir", dest="model_dir", metavar="MODEL", required=True,
                        help="output folder of `python -m trainer.train`")
    parser.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME on the Hub (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded; no network, no token")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset ids for the card (default: the training file's name)")
    parser.add_argument("--license", default=None, help="license id for the card (default: from the base model)")
    parser.add_argument("--base_model", default=None, help="Hub id of the base model, when the folder names a local path")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--gguf", nargs="+", default=[],
                        help="GGUF files written by `python -m trainer.export` to upload as well, each with its Modelfile")
    parser.add_argument("--output_dir", default=None,
                        help="write what would be uploaded into this folder instead (a model kept in git: adapter in "
                             "bf16, an embedded base's tokenizer left to the base); no network, no token")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def write_folder(folder: ModelFolder, staging: Path, output_dir: str) -> str:
    """The staged upload as a compact local folder: the adapter's weights in bf16 (half the bytes, what the
    demo computes in where bf16 is fast), and, for an embedded base, no tokenizer but its chat_template.jinja
    (load_tokenizer takes the base's; trainer.push stages it again when publishing). The adapter keeps the
    embedded base's name, so it loads offline."""
    out = Path(output_dir)
    recorded = folder.adapter_config.get("base_model_name_or_path")
    slim = folder.kind == "adapter" and recorded in EMBEDDED
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # beside it, so the final rename is atomic
    try:
        for path in sorted(staging.iterdir()):
            if slim and path.name in TOKENIZER_FILES and path.name != "chat_template.jinja":
                continue
            if slim and path.name == "adapter_model.safetensors":
                import torch
                from safetensors.torch import load_file, save_file

                weights = {k: v.to(torch.bfloat16) for k, v in load_file(path).items()}
                save_file(weights, tmp / path.name, metadata={"format": "pt"})
            elif slim and path.name == "adapter_config.json":
                config = dict(json.loads(path.read_text()), base_model_name_or_path=recorded)
                (tmp / path.name).write_text(json.dumps(config, indent=2) + "\n")
            else:
                shutil.copyfile(path, tmp / path.name)
        tmp.chmod(0o755)  # mkdtemp makes it private; this is a folder to share
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    for name, size in sizes.items():
        logger.info("  %-28s %s", name, _size(size))
    logger.info("wrote %s: %d files, %s", out, len(sizes), _size(sum(sizes.values())))
    return str(out)


def push(args: argparse.Namespace) -> str:
    check_repo_id(args.repo_id)
    folder = inspect_model_dir(args.model_dir)
    args.exports = read_exports(args.gguf)
    logger.info("%s: %s model, %d files on the allow-list", args.model_dir, folder.kind, len(folder.files))
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.path.iterdir() if p.name not in folder.files)
    if skipped:
        logger.info("not uploaded (not on the allow-list): %s", ", ".join(skipped))
    with tempfile.TemporaryDirectory(prefix="alpaca-medis-push-") as tmp:
        staging = Path(tmp)
        notes = stage_model(folder, staging, args)
        if args.output_dir:
            return write_folder(folder, staging, args.output_dir)
        message = args.commit_message or f"Upload {folder.kind} model with alpaca-medis (trainer.push)"
        return publish(staging, args.repo_id, repo_type="model", private=args.private, dry_run=args.dry_run,
                       commit_message=message, notes=notes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run(lambda: push(args), "upload")


if __name__ == "__main__":
    sys.exit(main())
