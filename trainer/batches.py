"""Training batches from Alpaca records: token ids with masked prompt labels, the padding collator, the
loss over learned tokens and what a batch holds. Used by the Trainer path, the FSDP loop and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from trainer.records import DataError
from trainer.run_summary import ExampleCounts

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # CrossEntropyLoss skips these positions: prompt and padding are not learned.


def tokenize_records(records, tokenizer, template, max_length: int):
    """Encode each record as prompt ids + response ids + EOS, with prompt labels masked.

    Prompt and response are encoded separately and their ids concatenated: tokenizing the joined
    text can merge tokens across the boundary, so the prompt's tokens are not always a prefix of
    the full text's, and a length-based mask would then hide or expose the wrong tokens.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token, so a trained model could never stop. Set tokenizer.eos_token.")
    if not records:  # e.g. no validation split (--val_set_size 0)
        return [], ExampleCounts()
    prompts = [template.format(r["instruction"], r["input"]) for r in records]
    prompt_ids = tokenizer(prompts)["input_ids"]
    response_ids = tokenizer([r["output"] for r in records], add_special_tokens=False)["input_ids"]
    n_bos = 1 if tokenizer.bos_token_id is not None and prompt_ids and prompt_ids[0][:1] == [tokenizer.bos_token_id] else 0
    min_prompt = max(max_length // 4, n_bos + 1)
    examples, stats = [], ExampleCounts()
    for p, r in zip(prompt_ids, response_ids):
        r = r + [tokenizer.eos_token_id]
        overflow = len(p) + len(r) - max_length
        if overflow > 0:
            stats.truncated += 1
            # Prompt side first: drop its oldest tokens (after BOS) but keep its end, which holds the
            # response marker the model must learn to answer after; then cut the response's tail.
            cut = min(overflow, max(len(p) - min_prompt, 0))
            p = p[:n_bos] + p[n_bos + cut :]
            r = r[: max_length - len(p)]
            if not r:
                stats.dropped += 1
                continue
        examples.append({"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r})
        stats.learned_tokens += len(r)
        stats.tokens += len(p) + len(r)
    stats.examples = len(examples)
    if stats.truncated:
        logger.warning(
            "%d of %d examples were longer than %d tokens and truncated (prompt first); %d dropped with nothing left to learn",
            stats.truncated, len(records), max_length, stats.dropped,
        )
    return examples, stats


def learned_loss_sum(model, batch: dict, learned_only: bool = True) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the learned tokens of a collated batch (padded or packed), and their
    count (labels shifted by one, as the HF causal LMs do). One definition for the Trainer, the FSDP
    loop and evaluation.

    Logits are computed only at positions whose next token is learned (`logits_to_keep`): about two
    thirds of an Alpaca example is prompt, and the vocabulary projection and its fp32 softmax are
    the largest single cost of a small model's step."""
    labels = batch["labels"][:, 1:]
    learned = labels != IGNORE_INDEX
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if learned_only and accepts_logits_to_keep(model):
        keep = learned.any(dim=0).nonzero().squeeze(1)  # positions learned in any row of the batch
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        labels = labels[:, keep]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int(learned.sum())


def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own models do; old remote code may not)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_counts(batch: dict) -> dict:
    """What a collated batch (padded or packed) holds: learned tokens, real tokens, slots computed
    (real + padding) and the sum of squared example lengths (attention cost)."""
    if "cu_seq_lens_q" in batch:
        lengths = batch["cu_seq_lens_q"].diff()
    elif "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(dim=1)
    else:
        lengths = torch.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[1])
    return {
        "learned": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "tokens": int(lengths.sum()),
        "slots": batch["input_ids"].numel(),
        "sum_sq_lengths": int((lengths.long() ** 2).sum()),
    }


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class SupervisedDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


@dataclass
class DataCollator:
    """Right-pads a batch. Padding is masked by position, never by token id: many tokenizers have
    pad == eos (SmolLM2 does), and masking `labels == pad_id` would also hide the real EOS, so the
    model never learns to stop."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(ex["input_ids"]) for ex in batch)
        out = {"input_ids": [], "labels": [], "attention_mask": []}
        for ex in batch:
            pad = width - len(ex["input_ids"])
            out["input_ids"].append(ex["input_ids"] + [self.pad_token_id] * pad)
            out["labels"].append(ex["labels"] + [IGNORE_INDEX] * pad)
            out["attention_mask"].append([1] * len(ex["input_ids"]) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
