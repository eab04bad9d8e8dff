"""Packed rows on CUDA: flash-attention's varlen kernel where `flash_attn` is installed (packed_sdpa where it is not),
examples kept apart, logits equal to padded batches', and a Trainer run whose losses follow the padded run's."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import SAMPLE, build_model, build_tokenizer, run_module, sample_records
from gpu.conftest import CUDA, DEVICE, FLASH_ATTN
from trainer import packing
from trainer.batches import DataCollator, to_device, tokenize_records
from trainer.bench.gpu_check import ONE_GPU
from trainer.prompts import get_template

# flash-attention computes in bf16 (it takes no fp32), so on CUDA packed and padded rows round differently, by up to
# ~0.005 of the tiny models' logits (std ~0.16); examples that see each other move them by ~0.5. On the CPU both run in
# fp32 and agree as tests/trainer/test_packing.py asks.
DTYPE = torch.bfloat16 if CUDA else torch.float32
TOLERANCE = dict(rtol=3e-2, atol=3e-2) if CUDA else dict(rtol=1e-4, atol=1e-4)
ATTENTION = "flash_attention_2" if FLASH_ATTN else packing.PACKED_SDPA


@pytest.mark.parametrize("kind", ["llama", "gemma", "gpt2"])
def test_packed_rows_on_the_device_equal_padded_ones_and_stay_apart(kind):
    tokenizer = build_tokenizer(add_bos=kind != "gpt2")
    model = build_model(kind, len(tokenizer))
    assert packing.enable(model) == ATTENTION  # chosen before the model moves, as trainer.train does
    model = model.to(DEVICE, DTYPE).eval()
    examples, _ = tokenize_records(sample_records()[:6], tokenizer, get_template("alpaca"), 512)
    lengths = [len(e["input_ids"]) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padded, packed = (to_device(c(examples), DEVICE) for c in (DataCollator(pad), packing.collator()))
    with torch.no_grad():
        row = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0].float()
        full = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.float()
    start = 0
    for i, n in enumerate(lengths):
        torch.testing.assert_close(row[start : start + n], full[i, :n], **TOLERANCE)
        start += n
    # Two examples packed and apart (and, for Gemma 3, one longer than its sliding window): what trainer.train checks
    # before training on a packed_sdpa model, run here on the kernel that trains on the GPU.
    assert packing.check_isolation(model, tolerance=TOLERANCE["atol"]) <= TOLERANCE["atol"]


def train(model, out, *extra):
    result = run_module("trainer.train", "--model", model, "--data_path", SAMPLE, "--output_dir", out, "--template", "alpaca",
                        "--bf16", "True", "--max_steps", "4", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
                        "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--seed", "3", *extra, env=ONE_GPU)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr, json.loads((out / "train_summary.json").read_text())


def test_a_packed_trainer_run_on_the_device_follows_the_padded_one(tiny_gemma, tmp_path):
    _, padded = train(tiny_gemma, tmp_path / "padded", "--learned_logits_only", "False")
    stderr, packed = train(tiny_gemma, tmp_path / "packed", "--packing")
    line = f"packing: one row per batch, attention {ATTENTION}"
    assert line + (" (varlen)" if FLASH_ATTN else " (examples isolated") in stderr
    assert packed["device"].startswith(DEVICE) and packed["throughput"]["batching"] == "packed"
    assert packed["throughput"]["padding_fraction"] == 0 < padded["throughput"]["padding_fraction"]
    assert [s["learned"] for s in packed["throughput"]["steps"]] == [s["learned"] for s in padded["throughput"]["steps"]]
    # bf16 autocast rounds the two batch layouts differently; fp32 agrees as closely as the CPU suite asks.
    rel = 2e-2 if packed["precision"] == "bf16" else 1e-3
    assert packed["train_loss_first"] == pytest.approx(padded["train_loss_first"], rel=rel)
    assert packed["train_loss_final"] == pytest.approx(padded["train_loss_final"], rel=rel)
    assert packed["train_loss_final"] < packed["train_loss_first"]
    # Saved without the training-time attention: it loads where neither flash_attn nor this project's code is.
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "packed").config._attn_implementation == "sdpa"
