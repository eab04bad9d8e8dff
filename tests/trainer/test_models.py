import json
import time

import pytest
import torch

from trainer import models
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
    path = models.prepare_embedded()  # converts once per machine (~30 s), then reuses the folder
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert (path / "model.safetensors").stat().st_size > 400e6  # de-quantized fp32, not Q4 blocks
    start = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    print(f"embedded model loaded in {time.perf_counter() - start:.2f} s")  # speed lives in benchmarks, not asserts
    assert model.dtype == torch.float32 and tokenizer.eos_token == "<|im_end|>"
    # Its own (ChatML) chat template; greedy decoding answers a factual question.
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
