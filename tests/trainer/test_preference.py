"""Preference tuning (--method dpo|kto with TRL) on the 2-layer model, its records and the stacked adapter."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from conftest import SAMPLE, run_module, sample_records
from trainer.preference import load_preference_records, stack_adapters
from trainer.records import DataError

LOOP = "obat obat obat obat obat obat obat obat obat obat obat obat"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def pairs(n=24):
    """The reference answer chosen, a loop rejected: what trainer.preference_set writes from a model's failures."""
    out = []
    for i, r in enumerate(sample_records()[:n]):
        prompt = r["input"] or r["instruction"]
        if i % 2:  # half as chat messages with a system turn (GenMedGPT's shape), half as a plain prompt
            out.append({"messages": [{"role": "system", "content": r["instruction"]}, {"role": "user", "content": prompt}],
                        "chosen": r["output"], "rejected": LOOP})
        else:
            out.append({"prompt": prompt, "chosen": r["output"], "rejected": LOOP})
    return out


def test_preference_records_are_validated_naming_each_problem(tmp_path):
    good = {"prompt": "Apa gejala flu?", "chosen": "Demam dan batuk.", "rejected": LOOP}
    rows = [
        good,
        {"chosen": "a", "rejected": "b"},
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "chosen": "a", "rejected": "b"},
        {"messages": [{"content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": "x", "chosen": "same", "rejected": "same"},
        {"prompt": "x", "completion": "a", "label": True},
        {"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": " "},
    ]
    path = write_jsonl(tmp_path / "dpo.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_preference_records(str(path), "dpo")
    message = str(e.value)
    assert "7 invalid record(s) of 8" in message
    assert "line 2: give the prompt as `prompt`" in message and "line 3: give the prompt" in message
    assert "line 4: messages[1]: the conversation ends on an assistant turn; it must end on the user's turn" in message
    assert "line 5: messages[0]: missing 'role'" in message
    assert "line 6: `chosen` and `rejected` are the same answer" in message
    assert "line 7: missing field 'chosen', 'rejected' for --method dpo (this looks like kto data: pass --method kto)" in message
    assert "line 8: `rejected` must be a non-empty string" in message
    loaded = load_preference_records(str(path), "dpo", skip_invalid=True)
    assert loaded.records == [good] and len(loaded.skipped) == 7
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "x", "completion": "a", "label": "yes"}])
    with pytest.raises(DataError, match="`label` must be true"):
        load_preference_records(str(kto), "kto")


def make_sft_adapter(base, out):
    """A LoRA adapter with non-zero weights standing in for an SFT stage's output."""
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(out)
    return out


def test_stacked_adapter_equals_the_sft_adapter_merged_plus_the_new_one(tiny_llama, tmp_path):
    sft = make_sft_adapter(tiny_llama, tmp_path / "sft")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), sft).merge_and_unload()
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "k_proj"], lora_dropout=0.0)  # k_proj: only in the new one
    second = get_peft_model(merged, config)
    with torch.no_grad():
        for name, p in second.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    expected = second.eval()(ids).logits
    stack_adapters(str(sft), get_peft_model_state_dict(second), config, str(tmp_path / "stacked"))
    stacked = json.loads((tmp_path / "stacked" / "adapter_config.json").read_text())
    assert stacked["r"] == 6 and stacked["lora_alpha"] == 6 and stacked["base_model_name_or_path"] == str(tiny_llama)
    assert sorted(stacked["target_modules"]) == ["k_proj", "q_proj", "up_proj", "v_proj"]
    got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "stacked").eval()(ids).logits
    sft_only = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), sft).eval()(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, sft_only, atol=1e-3)  # the new adapter is in it


def train(model, data, out, *extra):
    result = run_module("trainer.train", "--model", model, "--data_path", data, "--output_dir", out,
                        "--template", "alpaca", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
                        "--learning_rate", "5e-3", "--lora_r", "4", "--lora_alpha", "8", "--val_set_size", "8",
                        "--eval_strategy", "steps", "--eval_steps", "6", "--logging_steps", "1", "--report_to", "none",
                        "--beta", "0.1", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow  # ~20 s: two DPO runs of the 2-layer model (the second resumed from the first's checkpoint)
def test_dpo_on_an_sft_adapter_prefers_the_chosen_answers_and_resumes(tiny_llama, tmp_path):
    sft = make_sft_adapter(tiny_llama, tmp_path / "sft")
    data = write_jsonl(tmp_path / "dpo.jsonl", pairs())
    out = tmp_path / "dpo"
    _, summary = train(sft, data, out, "--method", "dpo", "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3")
    pref = summary["preference"]
    assert summary["method"] == "dpo (beta=0.1), lora (r=4, alpha=8) stacked on the SFT adapter"
    assert pref["initial"]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the new adapter starts at zero: policy == reference
    assert pref["final"]["loss"] < 0.6 and pref["final"]["rewards/chosen"] > pref["final"]["rewards/rejected"]
    assert pref["final"]["rewards/margins"] > 0.1 and summary["records"]["val"] == 8 and summary["records"]["train"] == 16
    assert (out / "loss.png").stat().st_size > 5000 and "### Response:" in (out / "chat_template.jinja").read_text()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(tiny_llama)  # SFT r=4 + new r=4, on the SFT's base
    # The tuned adapter gives the chosen answer a higher likelihood, relative to the rejected one, than the SFT adapter.
    from trainer.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(out))
    row = pairs()[0]
    prompt = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False),
                       add_special_tokens=False)["input_ids"]

    def logp(model, answer):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model.eval()(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1].float()
        return float(torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)].sum())

    before, after = load_model(str(sft)), load_model(str(out))
    assert logp(after, row["chosen"]) - logp(after, LOOP) > logp(before, row["chosen"]) - logp(before, LOOP) + 1
    # Resumable: the checkpoint at step 6 continues to step 9.
    _, resumed = train(sft, data, out, "--method", "dpo", "--max_steps", "9", "--save_strategy", "no",
                       "--resume_from_checkpoint", "last")
    assert resumed["global_step"] == 9


@pytest.mark.slow  # ~10 s: a KTO run of the 2-layer model
def test_kto_learns_desirable_from_undesirable(tiny_llama, tmp_path):
    rows = []
    for r in pairs():
        prompt = {k: r[k] for k in ("prompt", "messages") if k in r}
        rows += [{**prompt, "completion": r["chosen"], "label": True}, {**prompt, "completion": r["rejected"], "label": False}]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    _, summary = train(tiny_llama, data, tmp_path / "kto", "--method", "kto", "--max_steps", "6", "--save_strategy", "no")
    pref = summary["preference"]
    assert summary["method"] == "kto (beta=0.1), lora (r=4, alpha=8)"
    assert pref["final"]["loss"] < pref["initial"]["loss"]
    assert pref["final"]["rewards/chosen"] > pref["final"]["rewards/rejected"]
    assert (tmp_path / "kto" / "adapter_model.safetensors").exists()


def test_method_flags_are_checked(tmp_path):
    from trainer.alpaca_flags import UsageError
    from trainer.train import parse_args

    base = ["--data_path", "d.jsonl", "--output_dir", str(tmp_path)]
    with pytest.raises(UsageError, match="--method 'ppo' is unknown; choose sft, dpo, kto"):
        parse_args([*base, "--method", "ppo"])
    with pytest.raises(UsageError, match="--sft_weight is for --method dpo"):
        parse_args([*base, "--method", "kto", "--sft_weight", "1"])
    with pytest.raises(UsageError, match="without --fsdp, --packing or --init_adapter"):
        parse_args([*base, "--method", "dpo", "--packing"])
    data = write_jsonl(tmp_path / "dpo.jsonl", pairs(4))
    with pytest.raises(DataError, match=r"this looks like dpo data: pass --method dpo"):
        load_preference_records(str(data), "kto")


def test_failures_name_each_reason():
    from trainer.preference_set import failures, preference_records

    assert failures("Berdasarkan gejala Anda, Anda mungkin menderita flu.", "eos") == []
    loop = "Anda perlu minum obat seperti Vitamin B12, Vitamin B12, Vitamin B12, Vitamin B12 dan istirahat yang cukup."
    assert failures(loop, "eos") == ["loops"]
    assert failures("Anda mungkin menderita flu dan", "length") == ["no_stop"]
    assert failures("Based on your symptoms, you may have the flu.", "eos") == ["not_indonesian"]
    asked = [{"messages": [{"role": "user", "content": "q"}], "answer": LOOP, "reference": "Periksa ke dokter.",
              "reasons": ["loops"]},
             {"messages": [{"role": "user", "content": "q2"}], "answer": "Baik.", "reference": "Ya.", "reasons": []}]
    assert preference_records(asked, "dpo") == [{"messages": [{"role": "user", "content": "q"}], "chosen": "Periksa ke dokter.",
                                                 "rejected": LOOP, "reasons": ["loops"]}]
    assert [r["label"] for r in preference_records(asked, "kto")] == [False, True]


def test_preference_set_asks_training_records_only_and_resumes(tiny_llama, tmp_path):
    from trainer.records import split_records

    out = tmp_path / "dpo.jsonl"
    args = ["--model", tiny_llama, "--template", "alpaca", "--data_path", SAMPLE, "--limit", "3", "--max_new_tokens", "6",
            "--out", out]
    result = run_module("trainer.preference_set", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in (tmp_path / "dpo.jsonl.answers.jsonl").read_text().splitlines()]
    train, val = split_records(sample_records(), 0.1)
    assert [(a["record"], a["shape"]) for a in answers] == [(i, s) for i in range(3) for s in ("input", "empty")]
    assert {a["reference"] for a in answers} == {r["output"] for r in train[:3]}  # the training split's first records
    assert not {a["reference"] for a in answers} & {r["output"] for r in val}
    # The 2-layer random model never stops within 6 tokens: every answer is rejected, the reference chosen.
    pairs_written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs_written) == 6 and all("no_stop" in p["reasons"] for p in pairs_written)
    assert load_preference_records(str(out), "dpo").records[0]["chosen"] == train[0]["output"]
    again = run_module("trainer.preference_set", *args)  # everything answered already: nothing is asked again
    assert again.returncode == 0 and "0 to ask" in again.stderr and len((tmp_path / "dpo.jsonl.answers.jsonl").read_text().splitlines()) == 6
