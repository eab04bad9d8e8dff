"""trainer.evaluate on CUDA: the model is placed on the GPU, and the held-out loss it reports is the CPU's."""

import json

import pytest
import torch

from conftest import SAMPLE, run_module
from gpu.conftest import DEVICE
from trainer.bench.gpu_check import ONE_GPU
from trainer.evaluate import learned_token_loss, select_records
from trainer.serve.inference import ChatModel


def test_evaluate_on_the_device_measures_what_the_cpu_measures(tiny_llama, tmp_path):
    out = tmp_path / "eval"
    result = run_module("trainer.evaluate", "--model", tiny_llama, "--template", "alpaca-id", "--data_path", SAMPLE,
                        "--limit", "2", "--max_new_tokens", "6", "--shapes", "input", "--output_dir", out, env=ONE_GPU)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{tiny_llama}: {DEVICE}, float32" in result.stderr  # ChatModel.load's line: where the model ran
    metrics = json.loads((out / "eval.json").read_text())["models"][str(tiny_llama)]["input"]
    assert len(metrics["answers"]) == 2 and all(isinstance(a, str) for a in metrics["answers"])
    on_cpu = ChatModel.load(str(tiny_llama), "alpaca-id", device="cpu", dtype=torch.float32)
    loss, learned = learned_token_loss(on_cpu.model, on_cpu.tokenizer, select_records(str(SAMPLE), limit=2))
    assert metrics["learned_tokens"] == learned > 0
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)
