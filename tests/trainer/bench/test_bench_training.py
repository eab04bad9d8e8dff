"""The training benchmark's arithmetic: padding shares, FLOPs per step, parameter split."""

import json
import random

import pytest
from transformers import AutoModelForCausalLM

from trainer.bench.training import epoch_padding, model_shape, step_flops


def test_equal_lengths_have_no_padding_and_grouping_removes_most():
    assert epoch_padding([50] * 64, 8, seed=0) == {"random": 1.0, "group_by_length": 1.0}
    rng = random.Random(0)
    lengths = [rng.randint(60, 500) for _ in range(800)]
    shares = epoch_padding(lengths, 8, seed=0)
    assert 0.5 < shares["random"] < 0.8 < shares["group_by_length"] <= 1.0
    # Hand check on a tiny case: batches [100, 10] and [100, 10] (any order) -> 220 real of 400 slots.
    assert epoch_padding([100, 10, 100, 10], 2, seed=0)["random"] in (220 / 400, 1.0)


def test_parameter_split_of_a_llama(tiny_llama):
    shape = model_shape(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    layers = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
    assert shape["body_params"] == layers
    assert shape["head_params"] == head == embed  # untied here, same shape
    assert shape["params"] == layers + embed + head
    assert (shape["layers"], shape["hidden"]) == (2, 64)


def test_gpt2_position_embeddings_are_not_counted_as_matmuls(tiny_gpt2):
    shape = model_shape(str(tiny_gpt2))
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    blocks = sum(p.numel() for p in model.transformer.h.parameters()) + sum(p.numel() for p in model.transformer.ln_f.parameters())
    assert shape["body_params"] == blocks  # tied head, wpe excluded


def test_step_flops_counts_body_head_and_causal_attention():
    shape = {"body_params": 1000, "head_params": 100, "layers": 2, "hidden": 8}
    step = {"tokens": 30, "learned": 10, "sum_sq_lengths": 10**2 + 20**2}
    assert step_flops(step, shape) == 6 * (1000 * 30 + 100 * 10 + 2 * 8 * 500)


def test_a100_estimate_from_the_published_rates():
    from trainer.bench.training import a100_estimate

    alpaca, packed, padded = a100_estimate(tokens_per_epoch=1_000_000, examples_per_epoch=4_500, useful_fraction=0.8)
    # Alpaca: 52,002 examples x 3 epochs in 3 h on 8 GPUs -> 1.806 examples/s/GPU.
    assert alpaca["hours"] == pytest.approx(3 * 4_500 / (4 * 1.8056) / 3600, rel=1e-3)
    # Llama 2: 2T tokens in 184,320 GPU-hours -> 3,014 tokens/s/GPU.
    assert packed["hours"] == pytest.approx(3 * 1_000_000 / (4 * 3014.1) / 3600, rel=1e-3)
    assert padded["hours"] == pytest.approx(packed["hours"] / 0.8)


@pytest.mark.slow
def test_training_part_runs_every_configuration_on_the_same_examples(tiny_llama, tmp_path):
    from conftest import SAMPLE, run_module

    out = tmp_path / "bench"
    result = run_module("trainer.bench", "--part", "training", "--model", tiny_llama, "--data_path", SAMPLE,
                        "--steps", "3", "--batch_size", "4", "--matmul_sizes", "64", "128", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    part = json.loads((out / "bench.json").read_text())["parts"]["training"]
    rows = {r["config"]: r for r in part["rows"]}
    assert {"padded", "group_by_length", "packing", "packing + learned logits"} <= set(rows)
    padded, packed, best = rows["padded"], rows["packing"], rows["packing + learned logits"]
    # Same examples and steps: the same learned and real tokens, only the padding differs.
    assert padded["learned"] == packed["learned"] == best["learned"] > 0
    assert padded["tokens"] == packed["tokens"] == best["tokens"]
    assert padded["padding_fraction"] > 0 == packed["padding_fraction"] == best["padding_fraction"]
    assert padded["steps_timed"] == 2 and padded["speedup"] == 1.0
    assert all(r["mfu"] > 0 and r["peak_rss_mb"] > 0 and r["learned_tokens_per_s"] > 0 for r in rows.values())
    assert part["packing_bound"] == pytest.approx(1 / padded["useful_fraction"])
    assert part["matmul_peak_gflops"]["fp32"] > 0
    md = (out / "bench.md").read_text()
    assert "## training" in md and "| padded | fp32 |" in md and "packing's bound" in md and "4 A100-80GB" in md
