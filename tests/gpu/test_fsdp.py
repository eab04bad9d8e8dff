"""FSDP2 over nccl on every visible GPU (one included): shards per rank, bf16 mixed precision, a sharded checkpoint
resumed, the consolidated save reloaded on the GPU, CPU offload, LoRA; and the Trainer's DDP over nccl."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import SAMPLE, run_module, torchrun_train
from gpu.conftest import CUDA, DEVICE, WORLD
from trainer.bench.gpu_check import ONE_GPU
from trainer.models import load_model

COMMON = ["--data_path", SAMPLE, "--learning_rate", "3e-3", "--model_max_length", "1024", "--seed", "7"]
FSDP = [*COMMON, "--fsdp", "full_shard auto_wrap", "--bf16", "True", "--per_device_train_batch_size", "2"]
# The same steps resumed repeat their losses; on CUDA within what nondeterministic kernels (atomic adds) allow.
RESUMED = 1e-3 if CUDA else 1e-5


@pytest.fixture(scope="module")
def sharded(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-gpu") / "run"
    result, summary = torchrun_train(WORLD, tiny_llama, out, *FSDP, "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, summary


def test_every_rank_holds_its_share(sharded):
    _, summary = sharded
    assert summary["strategy"] == "fsdp" and summary["world_size"] == WORLD
    assert summary["wrapped_class"] == "LlamaDecoderLayer" and summary["wrapped_units"] == 3  # 2 layers + root
    local, total = summary["local_params_per_rank"], summary["total_params"]
    assert len(local) == WORLD and sum(local) == total
    assert all(abs(n - total / WORLD) <= 0.02 * total for n in local)
    assert summary["device"].startswith(DEVICE) and summary["global_step"] == 6
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    if CUDA:
        assert summary["precision"] == "bf16" and summary["throughput"]["cuda_peak_allocated_mb"] > 0


def test_the_consolidated_checkpoint_is_whole_fp32_and_generates_on_the_device(sharded, tiny_llama):
    out, _ = sharded
    weights, base = load_file(out / "model.safetensors"), load_file(tiny_llama / "model.safetensors")
    assert weights.keys() == base.keys()
    assert all(weights[k].shape == base[k].shape and weights[k].dtype == torch.float32 for k in base)  # bf16 computes, fp32 is kept
    model = AutoModelForCausalLM.from_pretrained(out).to(DEVICE).eval()
    ids = torch.tensor([[1, 40, 50, 60]], device=DEVICE)
    assert model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False).shape == (1, 10)


def test_resume_from_the_sharded_checkpoint(sharded, tiny_llama):
    out, _ = sharded
    before = [h for h in json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["world_size"] == WORLD
    result, summary = torchrun_train(WORLD, tiny_llama, out, *FSDP, "--max_steps", "6", "--save_steps", "3",
                                     "--resume_from_checkpoint", out / "checkpoint-3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 3" in result.stderr
    after = [h for h in json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [h["step"] for h in after] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in after[3:]] == pytest.approx([h["loss"] for h in before[3:]], rel=RESUMED)
    assert summary["global_step"] == 6


def test_offload_keeps_parameters_in_cpu_memory(tiny_llama, tmp_path):
    result, summary = torchrun_train(WORLD, tiny_llama, tmp_path / "out", *COMMON, "--fsdp", "full_shard auto_wrap offload",
                                     "--per_device_train_batch_size", "2", "--max_steps", "3", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["fsdp"] == "full_shard auto_wrap offload" and summary["global_step"] == 3
    assert sum(summary["local_params_per_rank"]) == summary["total_params"]
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    if not CUDA:
        assert "--fsdp offload ignored" in result.stderr  # CPU processes hold their parameters in CPU memory anyway


def test_lora_under_fsdp_saves_an_adapter_that_loads_on_the_device(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    result, summary = torchrun_train(WORLD, tiny_llama, out, *FSDP, "--lora_r", "8", "--learning_rate", "1e-2",
                                     "--max_steps", "4", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["strategy"] == "fsdp" and summary["method"].startswith("lora")
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter) and not (out / "model.safetensors").exists()
    ids = torch.tensor([[1, 40, 50, 60]], device=DEVICE)
    with torch.no_grad():
        tuned = load_model(str(out)).to(DEVICE).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).to(DEVICE).eval()(ids).logits
    assert not torch.allclose(tuned, base, atol=1e-5)


def test_ddp_over_every_gpu_follows_one_process_with_the_same_global_batch(tiny_llama, tmp_path):
    """torchrun without --fsdp: the Trainer's DDP (nccl on GPUs), every rank a whole copy; the per-token mean over
    the global batch makes its curve the one of a single process with WORLD times the batch (fp32, no autocast).
    One example per rank, so that 3 steps stay within the 43 training records on up to 14 GPUs (a wrapped epoch
    pads DDP's last batch differently)."""
    result, summary = torchrun_train(WORLD, tiny_llama, tmp_path / "ddp", *COMMON, "--per_device_train_batch_size", "1",
                                     "--max_steps", "3", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["strategy"] == ("ddp" if WORLD > 1 else "single") and summary["world_size"] == WORLD
    assert summary["local_params_per_rank"] == [summary["total_params"]] * WORLD and summary["device"].startswith(DEVICE)
    one = run_module("trainer.train", "--model", tiny_llama, "--output_dir", tmp_path / "one", *COMMON,
                     "--per_device_train_batch_size", str(WORLD), "--max_steps", "3", "--save_strategy", "no", env=ONE_GPU)
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "train_summary.json").read_text())
    assert summary["train_loss_first"] == pytest.approx(single["train_loss_first"], abs=2e-3)
    assert summary["train_loss_final"] == pytest.approx(single["train_loss_final"], abs=2e-3)
