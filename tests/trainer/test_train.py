import json
import logging
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SAMPLE, run_module, sample_records
from trainer.alpaca_flags import cpu_adjust
from trainer.prompts import get_template
from trainer.train import parse_args

# stanford_alpaca's README command, flag for flag (sizes shrunk for a 2-layer model on a CPU).
SA_FLAGS = [
    "--bf16", "True", "--num_train_epochs", "3", "--per_device_train_batch_size", "4",
    "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "1",
    "--evaluation_strategy", "steps", "--eval_steps", "5", "--save_strategy", "steps", "--save_steps", "5",
    "--save_total_limit", "3", "--learning_rate", "3e-3", "--weight_decay", "0.", "--warmup_ratio", "0.03",
    "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--fsdp", "full_shard auto_wrap",
    "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--tf32", "True", "--model_max_length", "1024",
]


def train_cli(model, out, *extra):
    # stanford_alpaca's --model_name_or_path, an alias of --model: its command is run as written.
    result = run_module("trainer.train", "--model_name_or_path", model, "--data_path", SAMPLE, "--output_dir", out, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def llama_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result, summary = train_cli(tiny_llama, out, *SA_FLAGS, "--max_steps", "10", "--template", "alpaca")
    return out, result, summary


def test_stanford_alpaca_command_trains_and_lowers_the_loss(llama_run, tiny_llama):
    out, result, summary = llama_run
    assert "--tf32 ignored" in result.stderr
    assert "--fsdp 'full_shard auto_wrap' ignored" in result.stderr and "torchrun" in result.stderr
    assert "--bf16" in result.stderr  # kept or dropped, the measured reason is logged
    assert summary["global_step"] == 10
    assert summary["eval_loss_final"] < summary["eval_loss_initial"] - 0.05
    assert summary["train_loss_final"] < summary["train_loss_first"]
    assert summary["records"] == {"valid": 48, "skipped_invalid": 0, "train": 43, "val": 5, "val_evaluated": 5, "train_used": 43,
                                  "train_empty_input": 0, "train_extra": 0, "val_set_size": 0.1}
    assert summary["examples"]["train"]["truncated"] == 0 and summary["examples"]["train"]["learned_tokens"] > 0
    assert summary["learned_tokens_trained"] > 0 and summary["learned_tokens_per_second"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every parameter tensor moved away from the base model's.
    before, after = load_file(tiny_llama / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_reloads_and_chats_through_its_template(llama_run):
    out, _, _ = llama_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Apa gejala tifus?"}], add_generation_prompt=True, tokenize=False)
    assert text == "<s>" + get_template("alpaca").format("Apa gejala tifus?")
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_resume_continues_at_the_right_step(llama_run, tiny_llama, tmp_path):
    out, _, summary = llama_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-5", resumed / "checkpoint-5")
    result, resumed_summary = train_cli(
        tiny_llama, resumed, *SA_FLAGS, "--max_steps", "10", "--template", "alpaca", "--resume_from_checkpoint", "last"
    )
    assert resumed_summary["global_step"] == 10
    steps = [json.loads(line.split("step ", 1)[1].split(" |")[0]) for line in result.stderr.splitlines() if "| loss " in line]
    assert steps == [6, 7, 8, 9, 10]  # it did not start over
    # Same data order and optimizer state: steps 6-10 reproduce the uninterrupted run.
    full = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    again = json.loads((resumed / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    losses = lambda h: [e["loss"] for e in h if "loss" in e and e["step"] > 5]  # noqa: E731
    assert losses(again) == pytest.approx(losses(full), rel=1e-4)


def test_lora_saves_an_adapter_that_reloads_and_merges(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    _, summary = train_cli(tiny_llama, out, "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj,v_proj",
                           "--max_steps", "8", "--learning_rate", "1e-2", "--save_strategy", "no")
    assert summary["method"] == "lora (r=8, alpha=16)"
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama) and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    merged = tmp_path / "merged"
    result = run_module("trainer.export.merge", "--model", out, "--output_dir", merged)
    assert result.returncode == 0, result.stderr
    from trainer.models import load_model

    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        adapter_logits = load_model(str(out)).eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(ids).logits
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4)
    assert AutoTokenizer.from_pretrained(merged).chat_template == AutoTokenizer.from_pretrained(out).chat_template


def test_lora_wrong_target_lists_the_modules(tiny_llama, tmp_path):
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE,
                        "--output_dir", tmp_path / "o", "--lora_r", "4", "--lora_target_modules", "query_key_value")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "q_proj" in result.stderr and "--lora_target_modules" in result.stderr


def test_gpt2_architecture_trains(tiny_gpt2, tmp_path):
    result, summary = train_cli(tiny_gpt2, tmp_path / "out", "--max_steps", "8", "--learning_rate", "3e-3", "--save_strategy", "no",
                                "--per_device_train_batch_size", "4", "--empty_input_share", "0.5")
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    from trainer.records import split_records

    with_input = sum(bool(r["input"]) for r in split_records(sample_records(), 0.1)[0])
    assert summary["records"]["train_empty_input"] == round(0.5 * with_input) > 0
    assert f"{round(0.5 * with_input)} of 43 training records rendered with an empty input" in result.stderr
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.pad_token == tok.eos_token  # GPT-2 has no pad token: pad = eos, masked by position


def test_broken_dataset_exits_2_naming_the_record(tiny_llama, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": 5, "output": "b"}\n')
    out = tmp_path / "out"
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", data, "--output_dir", out)
    assert result.returncode == 2
    assert f"{data}: 1 invalid record(s) of 2:\n  line 2: field 'input' is int, not a string" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_config_file_with_flags_overriding(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 2e-5, "num_train_epochs": 3, "lora_r": 8, "lora_target_modules": "q_proj,v_proj",
                                      "bf16": False, "data_path": "x.json", "output_dir": str(tmp_path / "o")}))
    model_args, data_args, training_args = parse_args(["--config", str(config), "--learning_rate", "1e-4"])
    assert training_args.learning_rate == 1e-4  # the command line wins
    assert training_args.num_train_epochs == 3 and model_args.lora_r == 8 and data_args.data_path == "x.json"


def test_legacy_flags_are_renamed():
    _, _, args = parse_args(["--data_path", "x", "--output_dir", "o", "--evaluation_strategy", "steps", "--warmup_ratio", "0.03"])
    assert args.eval_strategy == "steps" and args.warmup_steps == pytest.approx(0.03)


def test_bf16_falls_back_to_fp32_where_it_is_slow(caplog):
    if torch.cuda.is_available():
        pytest.skip("on a GPU --bf16 is passed through")
    with caplog.at_level(logging.WARNING):
        argv = cpu_adjust(["--bf16", "True", "--tf32", "True"], fast_bf16=lambda: (False, "bf16 0.8 GFLOP/s vs fp32 74"))
    assert "--bf16" not in argv and "--tf32" not in argv
    assert "Training in fp32" in caplog.text and "0.8 GFLOP/s" in caplog.text
    assert cpu_adjust(["--bf16", "True"], fast_bf16=lambda: (True, "")) == ["--bf16", "True", "--use_cpu", "True"]
    assert cpu_adjust(["--bf16", "False"], fast_bf16=lambda: (False, "")) == ["--bf16", "False"]


def test_usage_errors_name_the_flag(tmp_path):
    result = run_module("trainer.train", "--data_path", SAMPLE, "--output_dir", tmp_path / "o", "--template", "vicuna")
    assert result.returncode == 2 and "--template 'vicuna' is unknown" in result.stderr and "Traceback" not in result.stderr
    result = run_module("trainer.train", "--data_path", SAMPLE, "--output_dir", tmp_path / "o", "--trust_remote_code")
    assert result.returncode == 2 and "--model_revision" in result.stderr


@pytest.mark.slow
def test_short_run_on_the_embedded_model(tmp_path):
    out = tmp_path / "out"
    _, summary = train_cli("smollm2-135m", out, "--template", "alpaca-id", "--max_steps", "4", "--per_device_train_batch_size", "2",
                           "--learning_rate", "1e-4", "--max_eval_samples", "4", "--model_max_length", "256", "--save_strategy", "no")
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Apa gejala flu?"}], add_generation_prompt=True, tokenize=False)
    assert prompt == get_template("alpaca-id").format("Apa gejala flu?")  # SmolLM2's tokenizer adds no BOS
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    new_ids = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    answer = tokenizer.decode(new_ids, skip_special_tokens=True)
    assert len(answer.split()) >= 3


def test_second_stage_continues_an_adapter_on_training_only_records(tiny_llama, tmp_path):
    """The v2 recipe: stage 1 trains an adapter; stage 2 starts from it (--init_adapter) with extra records that
    only train (--extra_data_path), on the same validation split."""
    first = tmp_path / "stage1"
    _, one = train_cli(tiny_llama, first, "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj,v_proj",
                       "--max_steps", "6", "--learning_rate", "1e-2", "--save_strategy", "no")
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sample_records()[:12]), encoding="utf-8")
    second = tmp_path / "stage2"
    _, two = train_cli(tiny_llama, second, "--init_adapter", first, "--lora_r", "4", "--extra_data_path", extra,
                       "--max_train_samples", "8", "--max_steps", "4", "--learning_rate", "1e-2", "--save_strategy", "no")
    assert two["records"]["train_extra"] == 12 and two["records"]["train_used"] == 8
    assert two["records"]["val"] == one["records"]["val"]  # the extra records never enter validation
    assert two["method"] == "lora (r=8, alpha=16)"  # the adapter's rank, not --lora_r 4
    assert two["eval_loss_initial"] == pytest.approx(one["eval_loss_final"], rel=1e-3)  # starts where stage 1 ended
    before, after = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir",
                        tmp_path / "x", "--init_adapter", tmp_path)
    assert result.returncode == 2 and "no adapter_config.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # ~10 s: a training subprocess of the 2-layer model
def test_trains_on_conversations_learning_the_last_answer(tiny_llama, tmp_path):
    """ShareGPT conversations of two exchanges each train end to end; --train_on last learns only the final answers."""
    from trainer.batches import tokenize_records
    from trainer.records import alpaca_messages, load_records, sharegpt_turns, split_records

    records = sample_records()[:24]
    chats = [{"messages": alpaca_messages(a) + alpaca_messages(b)[-2:]} for a, b in zip(records[::2], records[1::2])]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"conversations": sharegpt_turns(c["messages"])}, ensure_ascii=False) + "\n"
                            for c in chats), encoding="utf-8")
    out = tmp_path / "out"
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", data, "--output_dir", out,
                        "--train_on", "last", "--val_set_size", "2", "--max_steps", "3", "--per_device_train_batch_size", "2",
                        "--learning_rate", "3e-3", "--save_strategy", "no", "--model_max_length", "1024")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["records"]["valid"] == 12 and summary["records"]["train"] == 10 and summary["records"]["val"] == 2
    assert "12 valid records (sharegpt)" in result.stderr
    train, _ = split_records(load_records(str(data), conversations=True).records, 2)
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected, _ = tokenize_records(train, tokenizer, get_template("alpaca-id"), 1024, "last")
    last_answers = sum(len(tokenizer(c["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) + 1 for c in train)
    assert summary["examples"]["train"]["learned_tokens"] == sum(
        sum(label != -100 for label in e["labels"]) for e in expected) == last_answers
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
