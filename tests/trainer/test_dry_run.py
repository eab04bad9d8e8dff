"""`trainer.train --dry_run`: the GPU presets built on the meta device from their stored configs, sharded by FSDP2
over a fake process group, and README's memory table generated from them."""

import json
import re

import pytest

from conftest import ROOT
from trainer import dry_run, train
from trainer.dry_run import PRESETS, PUBLISHED, TABLE_END, TABLE_START, plan_from_argv


def preset(name: str, *extra: str):
    return plan_from_argv(["--config", str(ROOT / "trainer" / "configs" / f"{name}.yaml"), *extra])


@pytest.fixture(scope="module")
def plans():
    """Each preset as a full fine-tune on one GPU and under FSDP on 2 ranks, from its stored config (offline)."""
    return {name: (preset(name, "--fsdp", "", "--gpus", "1"), preset(name, "--gpus", "2")) for name in PRESETS}


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_counts_match_the_published_sizes(plans, name):
    one, _ = plans[name]
    published, source = PUBLISHED[one.model]
    assert abs(one.total_params - published) / published < 0.01, (one.total_params, published, source)
    assert one.trainable_params == one.total_params == one.params_per_rank  # whole model on the one GPU
    assert "trainer/configs/models/" in one.config_source and "offline" in one.config_source


@pytest.mark.parametrize("name", PRESETS)
def test_two_ranks_each_hold_half(plans, name):
    one, two = plans[name]
    assert two.strategy == "fsdp" and two.gpus == 2 and two.wrapped_units > 20
    assert two.total_params == one.total_params
    assert two.params_per_rank * 2 == one.total_params  # every dimension 0 here is even: no padding
    # fp32 weights, gradients and two AdamW moments: 16 bytes per parameter a rank holds
    assert two.memory.weights == pytest.approx(4 * two.params_per_rank / 1e9, abs=1e-3)
    assert two.memory.optimizer == pytest.approx(8 * two.params_per_rank / 1e9, abs=1e-3)
    assert two.memory.total < one.memory.total


def test_known_counts_lora_and_the_internlm_stand_in(plans):
    llama, _ = plans["llama-2-7b"]
    assert llama.total_params == 6_738_415_616  # Llama-2-7b-hf's own count
    lora = preset("llama-2-7b", "--lora_r", "8", "--fsdp", "")
    # peft's default targets for Llama are q_proj and v_proj: 32 layers x 2 x (8 x 4096 + 4096 x 8)
    assert lora.trainable_params == 32 * 2 * 2 * 8 * 4096 and lora.total_params == llama.total_params + lora.trainable_params
    assert lora.memory.gradients == pytest.approx(4 * lora.trainable_params / 1e9, abs=1e-3)
    internlm, _ = plans["internlm-7b"]
    assert internlm.architecture == "LlamaForCausalLM" and any("remote code is not run" in n for n in internlm.notes)
    # Llama-2-7B's shapes plus InternLM's 103,168-word vocabulary (untied) and the q/k/v/o biases
    assert internlm.total_params == llama.total_params + 2 * (103_168 - 32_000) * 4096 + 32 * 4 * 4096


def test_the_cli_says_whether_it_fits(capsys, tmp_path):
    config = str(ROOT / "trainer" / "configs" / "llama-2-7b.yaml")
    assert train.main(["--config", config, "--dry_run", "--fsdp", "", "--gpu_memory_gb", "80", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "does NOT fit a 80 GB GPU" in out and "one GPU" in out
    saved = json.loads((tmp_path / "dry_run.json").read_text())
    assert saved["fits"] is False and saved["memory"]["total"] > 80 and saved["precision"] == "bf16"
    assert train.main(["--config", config, "--dry_run", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "FSDP over 4 GPUs, 32 × LlamaDecoderLayer + root sharded" in out and "fits a 80 GB GPU" in out
    assert "1,684,603,904" in out  # a quarter of 6,738,415,616 per rank


def test_bad_dry_runs_are_clear_errors(capsys):
    config = str(ROOT / "trainer" / "configs" / "llama-2-7b.yaml")
    assert train.main(["--config", config, "--dry_run", "--gpus", "0"]) == 2
    assert "--gpus 0" in capsys.readouterr().err
    assert train.main(["--model", "someone/unknown-model", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "No config for someone/unknown-model" in err and "trainer/configs/models/someone--unknown-model.json" in err


def test_the_dry_run_shards_a_real_config_as_fsdp_would(tiny_llama):
    """A local folder's config.json; its 2-rank split is the one the real 2-process FSDP run reports (test_fsdp.py
    asserts sum == total for the same model and wrapping)."""
    plan = plan_from_argv(["--model", str(tiny_llama), "--fsdp", "full_shard auto_wrap", "--gpus", "2"])
    assert plan.config_source.endswith("config.json") and plan.wrapped_class == "LlamaDecoderLayer" and plan.wrapped_units == 3
    assert plan.params_per_rank * 2 == plan.total_params and plan.precision == "fp32"


def test_readme_memory_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(TABLE_START) + r"\n(.*?)\n" + re.escape(TABLE_END), readme, re.S)
    assert block, "README.md lost its memory table markers"
    assert block.group(1) == dry_run.memory_table(), "README's memory table is stale: python -m trainer.dry_run --readme README.md"
