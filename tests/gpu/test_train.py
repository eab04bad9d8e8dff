"""The HF Trainer on CUDA: LoRA and full fine-tuning in bf16 autocast with TF32, the CUDA peak memory in
train_summary.json, the export's merge of a CUDA-trained adapter, and one process refusing several GPUs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SAMPLE, run_module
from gpu.conftest import CUDA, DEVICE, TF32
from trainer import ROOT
from trainer.bench.gpu_check import ONE_GPU
from trainer.models import load_model

# trainer.train's main() in a fresh process, then the TF32 setting of CUDA matmuls before and after it. torch 2.9+
# has the fp32_precision API ("tf32" / "ieee"; transformers sets it for --tf32); the legacy allow_tf32 getter raises
# once that API has been used.
MAIN_WITH_TF32_STATE = (
    "import json, sys, torch; from trainer.train import main; before = torch.backends.cuda.matmul.fp32_precision; "
    "code = main(sys.argv[1:]); print('matmul_fp32_precision', json.dumps([before, torch.backends.cuda.matmul.fp32_precision])); "
    "sys.exit(code)"
)


def train_bf16(model, out, *extra) -> tuple[str, dict, list[str]]:
    """Six steps in bf16 (+ TF32 where the GPU has it) on one device: (stderr, summary, TF32 state before/after)."""
    flags = ["--model", model, "--data_path", SAMPLE, "--output_dir", out, "--template", "alpaca-id", "--bf16", "True",
             *(["--tf32", "True"] if TF32 else []), "--per_device_train_batch_size", "4", "--max_steps", "6",
             "--learning_rate", "3e-3", "--logging_steps", "1", "--save_strategy", "no", "--seed", "3", *extra]
    result = subprocess.run([sys.executable, "-c", MAIN_WITH_TF32_STATE, *map(str, flags)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, **ONE_GPU})
    assert result.returncode == 0, result.stderr[-3000:]
    state = next(line for line in result.stdout.splitlines() if line.startswith("matmul_fp32_precision "))
    return result.stderr, json.loads((out / "train_summary.json").read_text()), json.loads(state.split(" ", 1)[1])


def assert_trained_on_the_device(stderr: str, summary: dict, tf32: list[str]) -> None:
    throughput = summary["throughput"]
    assert summary["device"].startswith(DEVICE) and summary["global_step"] == 6
    assert throughput["peak_rss_mb"] > 0 and throughput["learned_tokens_per_second"] > 0
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    if CUDA:
        assert summary["precision"] == "bf16"
        assert 0 < throughput["cuda_peak_allocated_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
    else:  # a CPU keeps --bf16 only where it runs bf16 fast (measured, trainer/alpaca_flags.py)
        assert summary["precision"] == ("bf16" if "--bf16 on CPU" in stderr else "fp32")
        assert throughput["cuda_peak_allocated_mb"] is None
    if TF32:
        assert tf32[0] != "tf32" and tf32[1] == "tf32"


def test_lora_in_bf16_with_tf32_and_its_merge(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    stderr, summary, tf32 = train_bf16(tiny_llama, out, "--lora_r", "8", "--lora_target_modules", "q_proj,v_proj",
                                       "--learning_rate", "1e-2")
    assert_trained_on_the_device(stderr, summary, tf32)
    assert summary["method"] == "lora (r=8, alpha=16)"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k and t.dtype == torch.float32 for k, t in adapter.items())  # autocast: weights stay fp32
    merged = tmp_path / "merged"
    result = run_module("trainer.export.merge", "--model", out, "--output_dir", merged)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = torch.tensor([[1, 40, 50, 60, 70]], device=DEVICE)
    with torch.no_grad():
        tuned = load_model(str(out)).to(DEVICE).eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged).to(DEVICE).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).to(DEVICE).eval()(ids).logits
    torch.testing.assert_close(merged_logits, tuned, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tuned, base, atol=1e-3)


def test_full_fine_tune_in_bf16_saves_fp32_weights_that_generate(tiny_llama, tmp_path):
    out = tmp_path / "full"
    assert_trained_on_the_device(*train_bf16(tiny_llama, out))
    before, after = load_file(tiny_llama / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and all(t.dtype == torch.float32 for t in after.values())
    assert all(not torch.equal(before[k], after[k]) for k in before)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).to(DEVICE).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Apa gejala tifus?"}], add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(DEVICE)
    generated = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 8


def test_one_process_refuses_several_gpus(tiny_llama, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU or none visible: nothing for DataParallel to split")
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir", tmp_path / "o",
                        "--max_steps", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{torch.cuda.device_count()} GPUs are visible to one process" in result.stderr
    assert f"torchrun --nproc_per_node={torch.cuda.device_count()}" in result.stderr
