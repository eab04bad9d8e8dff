"""Packed (padding-free) batches give the padded batches' loss and logits, and train through the real Trainer."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SAMPLE, build_model, build_tokenizer, run_module, sample_records
from trainer import packing
from trainer.batches import IGNORE_INDEX, DataCollator, batch_counts, learned_loss_sum, tokenize_records
from trainer.prompts import get_template
from trainer.records import split_records


def examples_and_model(kind: str, n: int = 6):
    tokenizer = build_tokenizer(add_bos=kind != "gpt2")
    model = build_model(kind, len(tokenizer)).eval()
    examples, _ = tokenize_records(sample_records()[:n], tokenizer, get_template("alpaca"), 512)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return examples, model, DataCollator(pad)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma"])
def test_packed_loss_and_logits_equal_the_padded_ones(kind):
    examples, model, pad_collate = examples_and_model(kind)
    lengths = [len(e["input_ids"]) for e in examples]
    assert len(set(lengths)) > 1  # a padded batch of these really holds padding
    padded, packed = pad_collate(examples), packing.collator()(examples)
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["position_ids"][0, lengths[0]] == 0  # positions restart at each example
    assert batch_counts(packed)["learned"] == batch_counts(padded)["learned"] > 0
    packing.enable(model)
    with torch.no_grad():
        loss_padded, n_padded = learned_loss_sum(model, padded, learned_only=False)
        loss_packed, n_packed = learned_loss_sum(model, packed)
        loss_packed_full, _ = learned_loss_sum(model, packed, learned_only=False)
        assert n_padded == n_packed
        assert abs(float(loss_packed / loss_padded) - 1) < 1e-4
        assert abs(float(loss_packed_full / loss_padded) - 1) < 1e-4
        # Per example: the packed row's logits equal that example's logits in the padded batch.
        row = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0]
        full = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    start = 0
    for i, n in enumerate(lengths):
        torch.testing.assert_close(row[start : start + n], full[i, :n], rtol=1e-4, atol=1e-4)
        start += n


def test_packed_rows_without_isolation_would_mix_examples():
    """The check is able to fail: plain eager attention with no mask lets examples see each other."""
    _, model, _ = examples_and_model("gpt2")
    packing.set_attention(model, "eager")
    model.config._attn_implementation = "eager"
    original = model.transformer.forward

    def unmasked(*args, **kwargs):  # what remote code that ignores position_ids does
        kwargs.pop("position_ids", None)
        return original(*args, **kwargs)

    model.transformer.forward = unmasked
    with pytest.raises(packing.PackingError, match="see each other"):
        packing.check_isolation(model)
    model.transformer.forward = original
    packing.enable(model)
    assert packing.check_isolation(model) < 1e-4


def test_sliding_window_layers_keep_their_window_when_packed():
    """Gemma 3: the isolation check runs one example longer than the window, and fails if packed rows ignored it."""
    examples, model, _ = examples_and_model("gemma")
    assert min(len(e["input_ids"]) for e in examples) > model.config.sliding_window
    packing.enable(model)
    assert packing.check_isolation(model) < 1e-4
    sliding = [m for m in model.modules() if getattr(m, "sliding_window", None)]
    assert sliding  # the window reaches the attention function from these modules
    for module in sliding:
        module.sliding_window = None  # packed rows would then attend past the window; padded ones do not
    with pytest.raises(packing.PackingError, match="see each other"):
        packing.check_isolation(model)


def test_gradients_of_packed_and_padded_batches_agree():
    examples, model, pad_collate = examples_and_model("llama")
    packing.enable(model)
    grads = []
    for batch, learned_only in ((pad_collate(examples), False), (packing.collator()(examples), True)):
        model.zero_grad()
        loss, n = learned_loss_sum(model, batch, learned_only)
        (loss / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def test_labels_stay_masked_per_example():
    examples, _, _ = examples_and_model("llama", n=3)
    packed = packing.collator()(examples)
    labels, start = packed["labels"][0].tolist(), 0
    for e in examples:
        n = len(e["input_ids"])
        # The first token of each example is never a target (it would be predicted from the previous one).
        assert labels[start] == IGNORE_INDEX
        assert labels[start + 1 : start + n] == e["labels"][1:]
        start += n


def train(model, out, *extra):
    result = run_module("trainer.train", "--model", model, "--data_path", SAMPLE, "--output_dir", out,
                        "--template", "alpaca", "--max_steps", "4", "--per_device_train_batch_size", "4",
                        "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                        "--seed", "3", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "train_summary.json").read_text())


def assert_follows(packed: dict, padded: dict) -> None:
    """A packed run's first and last losses are the padded run's (same examples, same steps)."""
    assert packed["train_loss_first"] == pytest.approx(padded["train_loss_first"], rel=1e-4)
    assert packed["train_loss_final"] == pytest.approx(padded["train_loss_final"], rel=1e-3)


@pytest.mark.slow
def test_trainer_runs_padded_and_packed_to_the_same_losses_and_groups_by_length(tiny_llama, tmp_path):
    """Same examples and steps: the packed run's losses follow the padded run's; group_by_length pads less."""
    _, padded = train(tiny_llama, tmp_path / "padded", "--learned_logits_only", "False", "--max_train_samples", "16")
    result, packed = train(tiny_llama, tmp_path / "packed", "--packing", "--max_train_samples", "16")
    _, grouped = train(tiny_llama, tmp_path / "grouped", "--group_by_length")
    assert "packing: one row per batch, attention packed_sdpa" in result.stderr
    assert packed["records"]["train_used"] == padded["records"]["train_used"] == 16 and packed["epochs"] == 1
    steps_padded, steps_packed = padded["throughput"]["steps"], packed["throughput"]["steps"]
    assert [s["learned"] for s in steps_padded] == [s["learned"] for s in steps_packed]
    assert [s["tokens"] for s in steps_padded] == [s["tokens"] for s in steps_packed]
    assert packed["throughput"]["padding_fraction"] == 0 < padded["throughput"]["padding_fraction"]
    # The length-grouped sampler puts the longest example in the first batch.
    train_records, _ = split_records(sample_records(), 0.1)
    tokenized, _ = tokenize_records(train_records, AutoTokenizer.from_pretrained(tiny_llama), get_template("alpaca"), 1024)
    assert grouped["throughput"]["steps"][0]["slots"] == 4 * max(len(e["input_ids"]) for e in tokenized)
    assert grouped["throughput"]["batching"] == "group_by_length"
    assert_follows(packed, padded)
    # The saved model names plain sdpa and reloads without this project's code registered.
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert config.get("_attn_implementation", "sdpa") in (None, "sdpa")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "packed").config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_gemma3_trains_full_lora_and_packed(tiny_gemma, tmp_path):
    """A tiny Gemma 3 (a sliding-window layer) trains full and LoRA; packed runs follow the padded ones."""
    _, full = train(tiny_gemma, tmp_path / "full", "--learned_logits_only", "False")
    result, full_packed = train(tiny_gemma, tmp_path / "full-packed", "--packing")
    assert "examples isolated" in result.stderr
    assert_follows(full_packed, full)
    assert full["train_loss_final"] < full["train_loss_first"]
    _, lora = train(tiny_gemma, tmp_path / "lora", "--lora_r", "8", "--learning_rate", "1e-2")
    _, lora_packed = train(tiny_gemma, tmp_path / "lora-packed", "--lora_r", "8", "--learning_rate", "1e-2", "--packing")
    assert (tmp_path / "lora-packed" / "adapter_model.safetensors").exists()
    assert_follows(lora_packed, lora)
    assert lora["train_loss_final"] < lora["train_loss_first"]


@pytest.mark.slow
def test_lora_with_packing_follows_the_padded_lora_run(tiny_llama, tmp_path):
    _, padded = train(tiny_llama, tmp_path / "padded", "--lora_r", "8", "--learning_rate", "1e-2")
    _, packed = train(tiny_llama, tmp_path / "packed", "--lora_r", "8", "--learning_rate", "1e-2", "--packing")
    assert (tmp_path / "packed" / "adapter_model.safetensors").exists()
    assert_follows(packed, padded)
    assert packed["train_loss_final"] < packed["train_loss_first"]
