"""Preference tuning on top of a supervised model: DPO or KTO with TRL's trainers, as a new LoRA adapter.

    python -m trainer.train --method dpo --model models/alpaca-medis-270m \
        --data_path out/preferences/dpo.jsonl --output_dir out/alpaca-medis-270m-dpo
    python -m trainer.train --config trainer/configs/alpaca-medis-270m-dpo.yaml ...   # the preset

The model is an SFT model folder or a LoRA adapter (the shipped alpaca-medis-270m is one). An adapter is
merged into its base in memory; a new LoRA adapter is trained on top, and the reference policy is the same
weights with the new adapter switched off (TRL does this when it is given a `peft_config`), so no second copy
of the model is held. An adapter's output is written stacked: the SFT adapter and the new one side by side
as one LoRA adapter of rank r1 + r2 on the original base (`stack_adapters`, exact), which loads, serves,
evaluates and pushes like any adapter of this project. Prompts are rendered by our chat template (the same
text `apply_chat_template` gives, and training and the page use); TRL adds EOS to each answer.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields

import torch
import transformers

from trainer import records as record_lib
from trainer.models import is_adapter, load_model, load_tokenizer, resolve
from trainer.preferences import METHODS, prompt_messages, validate_preference
from trainer.prompts import bos_text, chat_template_for, get_template

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text of a conversation that ends on a user turn, as our chat template renders it, without the
    BOS text the tokenizer adds on its own when TRL encodes it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    bos = bos_text(tokenizer)
    return text[len(bos):] if bos and text.startswith(bos) else text


def trl_rows(records: list[dict], tokenizer, method: str) -> list[dict]:
    """TRL's standard (text) format: the rendered prompt, and the answers as plain text."""
    rows = []
    for r in records:
        prompt = render_prompt(tokenizer, prompt_messages(r))
        if method == "dpo":
            rows.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]})
        else:
            rows.append({"prompt": prompt, "completion": r["completion"], "label": bool(r["label"])})
    return rows


def load_policy(model_args, training_args):
    """(model, tokenizer, the SFT adapter folder or None): an adapter is merged into its base in memory."""
    kwargs = dict(trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision)
    name = model_args.model
    tokenizer = load_tokenizer(name, **kwargs)
    tokenizer.model_max_length = training_args.model_max_length
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = chat_template_for(tokenizer, get_template(model_args.template))
    model = load_model(name, dtype=torch.float32, **kwargs)
    sft_adapter = resolve(name) if is_adapter(resolve(name)) else None
    if sft_adapter:
        model = model.merge_and_unload()  # the reference: these weights, with the new adapter off
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, sft_adapter


def lora_config(model_args, sft_adapter: str | None):
    from peft import LoraConfig

    if model_args.lora_target_modules:
        targets = model_args.lora_target_modules.split(",")
    elif sft_adapter:  # the SFT adapter's own modules, so the stacked adapter covers the same layers
        with open(os.path.join(sft_adapter, "adapter_config.json"), encoding="utf-8") as f:
            targets = sorted(json.load(f)["target_modules"])
    else:
        targets = list(DEFAULT_TARGETS)
    return LoraConfig(r=model_args.lora_r or 16, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def trl_config(training_args, method: str):
    """TRL's config: our TrainingArguments' values (the Trainer's own fields) plus the method's."""
    from trl import DPOConfig, KTOConfig

    common = {f.name: getattr(training_args, f.name) for f in fields(transformers.TrainingArguments) if f.init}
    common["gradient_checkpointing"] = training_args.gradient_checkpointing  # TRL defaults it on; we do not
    common["logging_steps"] = training_args.logging_steps
    specific = dict(beta=training_args.beta, max_length=training_args.model_max_length, precompute_ref_log_probs=False)
    if method == "dpo":
        losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, training_args.sft_weight]) if training_args.sft_weight else {}
        return DPOConfig(**common, **specific, **losses, truncation_mode="keep_start")
    # KTO estimates its KL term from each batch's neighbours, so batches keep the (already shuffled) split's order.
    return KTOConfig(**{**common, "train_sampling_strategy": "sequential"}, **specific)


def make_trainer(method: str, model, tokenizer, config, train_rows, val_rows, peft_config, callbacks):
    import datasets
    from trl import DPOTrainer, KTOTrainer

    cls = DPOTrainer if method == "dpo" else KTOTrainer
    return cls(model=model, args=config, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
               train_dataset=datasets.Dataset.from_list(train_rows),
               eval_dataset=datasets.Dataset.from_list(val_rows) if val_rows else None)


def stack_adapters(first: str, second_state: dict, second_config, out: str) -> None:
    """Write one LoRA adapter equal to `first` (a folder) plus `second` (state dict + LoraConfig, trained on the
    base with `first` merged): rank r1 + r2, A stacked by rows, B by columns with each side's scaling folded in,
    alpha = rank (scaling 1). The sum of two low-rank updates is exactly this one."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    with open(os.path.join(first, "adapter_config.json"), encoding="utf-8") as f:
        cfg1 = json.load(f)
    s1 = cfg1["lora_alpha"] / cfg1["r"]
    s2 = second_config.lora_alpha / second_config.r
    w1 = load_file(os.path.join(first, "adapter_model.safetensors"))
    w2 = {k.replace(".default.", "."): v for k, v in second_state.items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in [*w1, *w2] if ".lora_" in k})
    r1, r2 = cfg1["r"], second_config.r
    out_state = {}
    for m in modules:
        a1, b1 = w1.get(f"{m}.lora_A.weight"), w1.get(f"{m}.lora_B.weight")
        a2, b2 = w2.get(f"{m}.lora_A.weight"), w2.get(f"{m}.lora_B.weight")
        ref_a, ref_b = (a1, b1) if a1 is not None else (a2, b2)
        a1 = a1 if a1 is not None else ref_a.new_zeros(r1, ref_a.shape[1])
        b1 = b1 if b1 is not None else ref_b.new_zeros(ref_b.shape[0], r1)
        a2 = a2 if a2 is not None else ref_a.new_zeros(r2, ref_a.shape[1])
        b2 = b2 if b2 is not None else ref_b.new_zeros(ref_b.shape[0], r2)
        out_state[f"{m}.lora_A.weight"] = torch.cat([a1.float(), a2.float()], dim=0).contiguous()
        out_state[f"{m}.lora_B.weight"] = torch.cat([b1.float() * s1, b2.float() * s2], dim=1).contiguous()
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    config = LoraConfig(r=r1 + r2, lora_alpha=r1 + r2, lora_dropout=cfg1.get("lora_dropout", 0.0), target_modules=targets,
                        task_type="CAUSAL_LM", base_model_name_or_path=cfg1.get("base_model_name_or_path"))
    os.makedirs(out, exist_ok=True)
    config.save_pretrained(out)
    save_file(out_state, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})


def load_preference_records(path: str, method: str, skip_invalid: bool = False) -> record_lib.LoadedData:
    """Read and validate DPO or KTO records (JSON array or JSON Lines); raises records.DataError naming every bad
    record unless skipping, as SFT data does."""
    if method not in METHODS:
        raise record_lib.DataError(f"--method {method!r}: preference data is for {' or '.join(METHODS)}.")
    raw = record_lib._read_file(path, is_record=lambda obj: "prompt" in obj or "messages" in obj)
    kept, _, problems = record_lib.validate_objects(raw, lambda obj: validate_preference(obj, method))
    record_lib.report_problems(path, problems, len(raw), skip_invalid)
    if not kept:
        raise record_lib.DataError(f"{path} holds no valid {method} records.")
    return record_lib.LoadedData(path, kept, problems)


def load_preference_datasets(data_args, method: str):
    """Validated preference records, split like SFT data (seed 42): (train, val, RecordCounts)."""
    from trainer.run_summary import RecordCounts

    loaded = load_preference_records(data_args.data_path, method, data_args.skip_invalid)
    train, val = record_lib.split_records(loaded.records, data_args.val_set_size)
    counts = RecordCounts(valid=len(loaded.records), skipped_invalid=len(loaded.skipped), train=len(train), val=len(val),
                          val_set_size=data_args.val_set_size)
    if 0 < data_args.max_eval_samples < len(val):
        val = val[: data_args.max_eval_samples]
    if 0 < data_args.max_train_samples < len(train):
        train = train[: data_args.max_train_samples]
    counts.val_evaluated, counts.train_used = len(val), len(train)
    logger.info("data: %d %s records from %s (%d invalid skipped) -> %d train / %d validation", counts.valid, method,
                data_args.data_path, counts.skipped_invalid, counts.train_used, counts.val_evaluated)
    return train, val, counts
