"""Real multi-process runs: torchrun with 2 CPU processes talking gloo, as on a GPU node with nccl."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, SAMPLE, torchrun_train
from trainer.fsdp import FsdpError, detect_layer_class, parse_mode
from trainer.models import load_model

pytestmark = pytest.mark.slow
TOLERANCE = 2e-3  # per-step train loss, 2 ranks vs 1 rank on the same global batch (fp32 summation order)
COMMON = ["--data_path", SAMPLE, "--learning_rate", "3e-3", "--model_max_length", "1024", "--seed", "7"]


def torchrun(nproc: int, model, out, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    return torchrun_train(nproc, model, out, *COMMON, *extra)


@pytest.fixture(scope="module")
def llama_runs(tiny_llama, tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    two, s2 = torchrun(2, tiny_llama, base / "two", "--fsdp", "full_shard auto_wrap", "--per_device_train_batch_size", "2",
                       "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1")
    assert two.returncode == 0, two.stderr[-3000:]
    one, s1 = torchrun(1, tiny_llama, base / "one", "--fsdp", "full_shard auto_wrap", "--per_device_train_batch_size", "4",
                       "--max_steps", "6", "--save_strategy", "no", "--logging_steps", "1")
    assert one.returncode == 0, one.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--model", str(tiny_llama), "--output_dir", str(base / "single"),
         *map(str, COMMON), "--max_steps", "1", "--save_strategy", "no"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    s0 = json.loads((base / "single" / "train_summary.json").read_text())
    return base, s2, s1, s0


def test_two_ranks_each_hold_half_the_parameters(llama_runs):
    _, s2, _, _ = llama_runs
    assert s2["strategy"] == "fsdp" and s2["world_size"] == 2
    assert s2["wrapped_class"] == "LlamaDecoderLayer" and s2["wrapped_units"] == 3  # 2 layers + root
    local, total = s2["local_params_per_rank"], s2["total_params"]
    assert len(local) == 2 and sum(local) == total
    assert all(abs(n - total / 2) <= 0.02 * total for n in local)
    assert s2["eval_loss_final"] < s2["eval_loss_initial"] - 0.1


def test_loss_curve_matches_one_process_with_the_same_global_batch(llama_runs):
    base, s2, s1, s0 = llama_runs
    two = [h["loss"] for h in json.loads((base / "two" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert s1["world_size"] == 1 and s1["local_params_per_rank"] == [s1["total_params"]]
    assert len(two) == 6 and two[-1] < two[0]
    assert s1["train_loss_first"] == pytest.approx(two[0], abs=TOLERANCE)
    assert s1["train_loss_final"] == pytest.approx(two[-1], abs=TOLERANCE)
    assert s1["eval_loss_final"] == pytest.approx(s2["eval_loss_final"], abs=TOLERANCE)
    # Before any step the model is the same, and eval_loss means the same as the Trainer's.
    assert s0["strategy"] == "single"
    assert s2["eval_loss_initial"] == pytest.approx(s0["eval_loss_initial"], rel=1e-5)
    assert s1["eval_loss_initial"] == pytest.approx(s0["eval_loss_initial"], rel=1e-5)


def test_consolidated_checkpoint_reloads_and_generates(llama_runs, tiny_llama):
    base, _, _, _ = llama_runs
    out = base / "two"
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(load_file(tiny_llama / "model.safetensors"))  # full, unsharded tensors
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Apa itu tifus?"}], add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_resume_under_fsdp_continues_at_the_right_step(llama_runs, tiny_llama):
    base, _, _, _ = llama_runs
    out = base / "two"
    before = [h for h in json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    result, summary = torchrun(2, tiny_llama, out, "--fsdp", "full_shard auto_wrap", "--per_device_train_batch_size", "2",
                               "--max_steps", "6", "--save_steps", "3", "--resume_from_checkpoint", out / "checkpoint-3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 3" in result.stderr
    after = [h for h in json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [h["step"] for h in after] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in after[3:]] == pytest.approx([h["loss"] for h in before[3:]], rel=1e-5)
    assert summary["global_step"] == 6


def test_gpt2_shards_its_blocks(tiny_gpt2, tmp_path):
    result, summary = torchrun(2, tiny_gpt2, tmp_path / "out", "--fsdp", "full_shard auto_wrap", "--per_device_train_batch_size", "2",
                               "--max_steps", "4", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["wrapped_class"] == "GPT2Block" and summary["strategy"] == "fsdp"
    assert sum(summary["local_params_per_rank"]) == summary["total_params"]
    assert max(summary["local_params_per_rank"]) < 0.52 * summary["total_params"]
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # tied embeddings survive consolidation
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


def test_packing_under_fsdp_follows_the_padded_curve(llama_runs, tiny_llama):
    base, _, s1, _ = llama_runs
    result, summary = torchrun(2, tiny_llama, base / "packed", "--fsdp", "full_shard auto_wrap", "--packing",
                               "--per_device_train_batch_size", "2", "--max_steps", "6", "--save_strategy", "no", "--logging_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["strategy"] == "fsdp" and summary["throughput"]["batching"] == "packed"
    assert summary["throughput"]["padding_fraction"] == 0 < s1["throughput"]["padding_fraction"]
    assert [s["learned"] for s in summary["throughput"]["steps"]] == [s["learned"] for s in s1["throughput"]["steps"]]
    assert summary["train_loss_first"] == pytest.approx(s1["train_loss_first"], abs=TOLERANCE)
    assert summary["train_loss_final"] == pytest.approx(s1["train_loss_final"], abs=TOLERANCE)
    assert summary["eval_loss_final"] == pytest.approx(s1["eval_loss_final"], abs=TOLERANCE)


def test_lora_under_fsdp_saves_one_loadable_adapter(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    result, summary = torchrun(2, tiny_llama, out, "--fsdp", "full_shard auto_wrap", "--lora_r", "8", "--learning_rate", "1e-2",
                               "--per_device_train_batch_size", "2", "--max_steps", "4", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["strategy"] == "fsdp" and summary["method"].startswith("lora")
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    ids = torch.tensor([[1, 40, 50, 60]])
    with torch.no_grad():
        tuned = load_model(str(out)).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(ids).logits
    assert not torch.allclose(tuned, base, atol=1e-5)


def test_wrong_layer_class_lists_the_real_ones(tiny_llama, tmp_path):
    result, _ = torchrun(2, tiny_llama, tmp_path / "out", "--fsdp", "full_shard auto_wrap",
                         "--fsdp_transformer_layer_cls_to_wrap", "LLaMADecoderLayer", "--max_steps", "2")
    assert result.returncode != 0
    assert ("--fsdp_transformer_layer_cls_to_wrap LLaMADecoderLayer: this model has no such layer. "
            "Its layer classes: LlamaDecoderLayer") in result.stderr
    assert "raise FsdpError" not in result.stderr  # the ranks print the message, not a traceback


def test_torchrun_without_fsdp_is_ddp_with_whole_copies(tiny_llama, tmp_path):
    result, summary = torchrun(2, tiny_llama, tmp_path / "out", "--per_device_train_batch_size", "2", "--max_steps", "3", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["strategy"] == "ddp" and summary["world_size"] == 2
    assert summary["local_params_per_rank"] == [summary["total_params"]] * 2
    # The loss is a per-token mean over the global batch: one process with batch 4 gives the same curve.
    single = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--model", str(tiny_llama), "--output_dir", str(tmp_path / "single"),
         *map(str, COMMON), "--per_device_train_batch_size", "4", "--max_steps", "3", "--save_strategy", "no"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "train_summary.json").read_text())
    assert summary["train_loss_first"] == pytest.approx(one["train_loss_first"], abs=TOLERANCE)
    assert summary["train_loss_final"] == pytest.approx(one["train_loss_final"], abs=TOLERANCE)


def test_layer_class_detection_per_architecture(tiny_llama, tiny_gpt2):
    assert detect_layer_class(AutoModelForCausalLM.from_pretrained(tiny_llama)).__name__ == "LlamaDecoderLayer"
    assert detect_layer_class(AutoModelForCausalLM.from_pretrained(tiny_gpt2)).__name__ == "GPT2Block"

    class InternLMDecoderLayer(torch.nn.Module):  # InternLM-7B's remote code declares this in _no_split_modules
        pass

    class InternLMForCausalLM(torch.nn.Module):
        _no_split_modules = ["InternLMDecoderLayer"]

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([InternLMDecoderLayer(), InternLMDecoderLayer()])

    assert detect_layer_class(InternLMForCausalLM()) is InternLMDecoderLayer
    with pytest.raises(FsdpError, match="Its layer classes: InternLMDecoderLayer"):
        detect_layer_class(InternLMForCausalLM(), "LlamaDecoderLayer")


def test_fsdp_options_are_checked():
    assert parse_mode("full_shard auto_wrap") == {"full_shard", "auto_wrap"}
    with pytest.raises(FsdpError, match="unknown option"):
        parse_mode("full_shard hybrid")
    with pytest.raises(FsdpError, match="full_shard or shard_grad_op"):
        parse_mode("auto_wrap")


def test_trainer_flags_the_fsdp_loop_lacks_are_named(caplog):
    from trainer.fsdp import warn_unsupported
    from trainer.train import parse_args

    _, _, args = parse_args(["--data_path", "x", "--output_dir", "o", "--optim", "adafactor"])
    with caplog.at_level("WARNING"):
        warn_unsupported(args)
    assert "ignored under --fsdp" in caplog.text and "--optim" in caplog.text
    caplog.clear()
    _, _, args = parse_args(["--data_path", "x", "--output_dir", "o"])
    warn_unsupported(args)
    assert "ignored" not in caplog.text


def test_intervals_follow_the_trainer_rules():
    from trainer.fsdp import _due

    assert [s for s in range(1, 11) if _due("steps", 3, s, 10, 5)] == [3, 6, 9]
    assert [s for s in range(1, 11) if _due("steps", 0.5, s, 10, 5)] == [5, 10]  # a share of max_steps
    assert [s for s in range(1, 11) if _due("epoch", 500, s, 10, 4)] == [4, 8]
    assert not any(_due("no", 1, s, 10, 5) for s in range(1, 11))


def test_micro_batches_resume_where_they_stopped():
    from torch.utils.data import DataLoader, DistributedSampler

    from trainer.fsdp import _micro_batches

    data = list(range(10))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    loader = DataLoader(data, batch_size=3, sampler=sampler)  # 4 micro-batches per epoch, the last of 1
    stream = _micro_batches(loader, sampler, epoch=0, skip=0)
    first = [(i, b.tolist()) for i, b in (next(stream) for _ in range(9))]
    assert [i for i, _ in first] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert sorted(x for _, b in first[:4] for x in b) == data  # each epoch sees every example once
    resumed = _micro_batches(loader, sampler, epoch=1, skip=2)
    assert [(i, b.tolist()) for i, b in (next(resumed) for _ in range(3))] == first[6:9]
