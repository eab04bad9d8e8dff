"""Every shipped preset loads, validates, and carries the seed's hyperparameters and its launch command."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SAMPLE
from trainer.train import parse_args

CONFIGS = sorted((ROOT / "trainer" / "configs").glob("*.yaml"))
PROJECT_PRESET = ROOT / "trainer" / "configs" / "alpaca-medis-270m.yaml"
STAGE2_PRESET = ROOT / "trainer" / "configs" / "alpaca-medis-270m-v2.yaml"
DPO_PRESET = ROOT / "trainer" / "configs" / "alpaca-medis-270m-dpo.yaml"
PROJECT = ("accelerate_fsdp.yaml", PROJECT_PRESET.name, STAGE2_PRESET.name, DPO_PRESET.name)
PRESETS = [p for p in CONFIGS if p.name not in PROJECT]  # the seed's recipe
LAYER = {"llama-2-7b": "LlamaDecoderLayer", "polylm-1.7b": "GPT2Block", "internlm-7b": "InternLMDecoderLayer", "smollm2-135m": "LlamaDecoderLayer"}


def test_all_four_presets_ship():
    assert sorted(p.stem for p in PRESETS) == sorted(LAYER)


def test_the_project_model_preset_loads_with_its_recipe(tmp_path, monkeypatch):
    """alpaca-medis-270m: LoRA on every linear layer of gemma3-270m, packed, half the records in the demo's shape."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    header = " ".join(line for line in PROJECT_PRESET.read_text().splitlines() if line.startswith("#"))
    assert "make model" in header and f"--config trainer/configs/{PROJECT_PRESET.name}" in header
    assert f"--config trainer/configs/{PROJECT_PRESET.name}" in (ROOT / "Makefile").read_text()
    model_args, data_args, args = parse_args(["--config", str(PROJECT_PRESET), "--data_path", str(SAMPLE), "--output_dir", str(tmp_path)])
    assert model_args.model == "gemma3-270m" and model_args.template == "alpaca-id"
    assert model_args.lora_r == 16 and set(model_args.lora_target_modules.split(",")) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert data_args.empty_input_share == 0.5 and data_args.val_set_size == 0.1 and args.seed == 42
    assert args.packing and args.learned_logits_only and args.num_train_epochs == 1 and args.strategy == "single"
    assert args.save_strategy == "steps" and args.save_steps > 0  # resumable


def test_the_second_stage_preset_continues_stage_one_on_the_condition_records(tmp_path, monkeypatch):
    """v2: stage 1's adapter continued on the condition records, mixed with a GenMedGPT replay; make model runs it."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    header = " ".join(line for line in STAGE2_PRESET.read_text().splitlines() if line.startswith("#"))
    assert "make model" in header and "--init_adapter" in header and "--extra_data_path" in header
    makefile = (ROOT / "Makefile").read_text()
    assert f"--config trainer/configs/{STAGE2_PRESET.name}" in makefile and "data_gen conditions" in makefile
    model_args, data_args, args = parse_args(["--config", str(STAGE2_PRESET), "--data_path", str(SAMPLE), "--output_dir",
                                              str(tmp_path), "--init_adapter", str(tmp_path), "--extra_data_path", str(SAMPLE)])
    assert model_args.model == "gemma3-270m" and model_args.template == "alpaca-id"
    assert data_args.max_train_samples > 0 and data_args.empty_input_share == 0.5 and data_args.val_set_size == 0.1
    assert args.packing and args.save_strategy == "steps" and args.save_steps > 0  # resumable


def test_the_preference_preset_tunes_the_shipped_adapter_with_dpo(tmp_path, monkeypatch):
    """Stage 3: DPO (with an SFT term) as a new adapter on the shipped SFT adapter, resumable."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    header = " ".join(line for line in DPO_PRESET.read_text().splitlines() if line.startswith("#"))
    assert "trainer.preference_set" in header and f"--config trainer/configs/{DPO_PRESET.name}" in header
    model_args, data_args, args = parse_args(["--config", str(DPO_PRESET), "--data_path", str(SAMPLE), "--output_dir", str(tmp_path)])
    assert args.method == "dpo" and args.beta == 0.1 and args.sft_weight == 1.0 and not args.packing
    assert model_args.model == "models/alpaca-medis-270m" and model_args.template == "alpaca-id"
    assert model_args.lora_r == 16 and data_args.val_set_size == 0.1 and args.save_strategy == "steps" and args.save_steps > 0


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_with_the_seed_hyperparameters(path, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = next(line for line in header if "torchrun" in line)
    assert f"--config trainer/configs/{path.name}" in " ".join(header)
    nproc = int(re.search(r"--nproc_per_node=(\d+)", launch).group(1))

    model_args, data_args, args = parse_args(["--config", str(path), "--data_path", str(SAMPLE), "--output_dir", str(tmp_path)])
    assert args.learning_rate == 2e-5 and args.num_train_epochs == 3 and args.model_max_length == 512
    assert args.weight_decay == 0 and args.warmup_steps == pytest.approx(0.03) and args.lr_scheduler_type == "cosine"
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * nproc == 128
    assert yaml.safe_load(path.read_text())["bf16"] is True  # kept on GPUs; on a slow-bf16 CPU the run says it uses fp32
    assert args.fsdp_mode is None and args.strategy == "single"  # outside torchrun --fsdp is set aside with a warning
    assert args.fsdp_transformer_layer_cls_to_wrap == LAYER[path.stem]
    if path.stem == "internlm-7b":
        assert model_args.trust_remote_code and re.fullmatch(r"[0-9a-f]{40}", model_args.model_revision)
    else:
        assert not model_args.trust_remote_code


@pytest.mark.slow
def test_accelerate_config_launches_real_fsdp_on_cpu(tiny_llama, tmp_path):
    config = yaml.safe_load((ROOT / "trainer" / "configs" / "accelerate_fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    config.update(num_processes=2, use_cpu=True, mixed_precision="no")
    config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] = "LlamaDecoderLayer"
    cpu_config = tmp_path / "accelerate_cpu.yaml"
    cpu_config.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(cpu_config), "-m", "trainer.train",
         "--model", str(tiny_llama), "--data_path", str(SAMPLE), "--output_dir", str(out),
         "--max_steps", "2", "--save_strategy", "no", "--model_max_length", "1024"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = yaml.safe_load((out / "train_summary.json").read_text())
    assert summary["strategy"] == "fsdp" and summary["world_size"] == 2
    assert summary["local_params_per_rank"] == [summary["total_params"] // 2] * 2
