"""Training batches from records (Alpaca or conversations): token ids with masked prompt labels, the padding collator, the
loss over learned tokens and what a batch holds. Used by the Trainer path, the FSDP loop and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch

from trainer.records import DataError, alpaca_messages, is_conversation
from trainer.run_summary import ExampleCounts

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # CrossEntropyLoss skips these positions: prompt and padding are not learned.
TRAIN_ON = ("all", "last")  # which assistant turns of a conversation are learned


def tokenize_records(records, tokenizer, template, max_length: int | None, train_on: str = "all"):
    """Encode each record as its exchanges' prompt ids + answer ids + EOS, with prompt labels masked.

    An Alpaca record is one exchange; a conversation ({"messages": ...}) one per assistant turn, rendered
    by `template.segments` exactly as the chat template renders it. Every answer and its EOS is learned,
    or with `train_on="last"` only the final one. BOS (when the tokenizer adds it) comes once, first.
    `template=None` renders each prompt with the tokenizer's own chat_template instead, whatever wrote it
    (evaluation; one exchange per record). `max_length=None` truncates nothing.

    Prompt and answer are encoded separately and their ids concatenated: tokenizing the joined
    text can merge tokens across the boundary, so the prompt's tokens are not always a prefix of
    the full text's, and a length-based mask would then hide or expose the wrong tokens.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token, so a trained model could never stop. Set tokenizer.eos_token.")
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on {train_on!r}: choose one of {', '.join(TRAIN_ON)}")
    if not records:  # e.g. no validation split (--val_set_size 0)
        return [], ExampleCounts()
    render = template.segments if template is not None else partial(chat_template_segments, tokenizer)
    segments = [render(r["messages"] if is_conversation(r) else alpaca_messages(r)) for r in records]
    # One batched call per kind of piece: the first prompt with special tokens (BOS), the rest without. A
    # chat_template's text already holds any BOS.
    first_ids = tokenizer([s[0][0] for s in segments], add_special_tokens=template is not None)["input_ids"]
    later = [p for s in segments for p, _ in s[1:]]
    later_ids = iter(tokenizer(later, add_special_tokens=False)["input_ids"] if later else [])
    answer_ids = iter(tokenizer([a for s in segments for _, a in s], add_special_tokens=False)["input_ids"])
    n_bos = 1 if tokenizer.bos_token_id is not None and first_ids[0][:1] == [tokenizer.bos_token_id] else 0
    min_prompt = max(max_length // 4, n_bos + 1) if max_length else 0
    examples, stats = [], ExampleCounts()
    for s, first in zip(segments, first_ids):
        exchanges = [[first if i == 0 else next(later_ids), next(answer_ids) + [tokenizer.eos_token_id],
                      train_on == "all" or i == len(s) - 1] for i in range(len(s))]
        exchanges, truncated = _fit(exchanges, n_bos, max_length, min_prompt) if max_length else (exchanges, False)
        stats.truncated += truncated
        if exchanges is None:
            stats.dropped += 1
            continue
        ids, labels = [], []
        for p, a, learned in exchanges:
            ids += p + a
            labels += [IGNORE_INDEX] * len(p) + (a if learned else [IGNORE_INDEX] * len(a))
        examples.append({"input_ids": ids, "labels": labels})
        stats.learned_tokens += sum(len(a) for _, a, learned in exchanges if learned)
        stats.tokens += len(ids)
    stats.examples = len(examples)
    if stats.truncated:
        logger.warning(
            "%d of %d examples were longer than %d tokens and truncated (oldest exchanges, then prompt first); "
            "%d dropped with nothing left to learn", stats.truncated, len(records), max_length, stats.dropped,
        )
    return examples, stats


def chat_template_segments(tokenizer, messages: list[dict]) -> list[tuple[str, str]]:
    """`Template.segments` through the tokenizer's own chat_template, for a single exchange: the prompt as the
    template renders it before an answer (any BOS text included), and the answer."""
    *prompt, answer = messages
    if answer["role"] != "assistant" or any(m["role"] == "assistant" for m in prompt):
        raise ValueError("a chat_template renders one exchange here: prompt turns, then one assistant turn")
    return [(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), answer["content"])]


def _fit(exchanges: list[list], n_bos: int, max_length: int, min_prompt: int) -> tuple[list[list] | None, bool]:
    """The exchanges ([prompt ids, answer ids, learned]) cut to max_length, whether they were cut; None if
    nothing learnable is left.

    Whole exchanges go first, oldest first, keeping the last one (the system text is in every prompt, so
    what remains is still the conversation the chat template would render). Then the prompt side of the
    last exchange: its oldest tokens (after BOS) but not its end, which holds the response marker the
    model must learn to answer after; then the answer's tail."""
    def length():
        return sum(len(p) + len(a) for p, a, _ in exchanges)

    if length() <= max_length:
        return exchanges, False
    bos = exchanges[0][0][:n_bos]
    while len(exchanges) > 1 and length() > max_length:
        exchanges = exchanges[1:]
        exchanges[0] = [bos + exchanges[0][0], *exchanges[0][1:]]
    overflow = length() - max_length
    if overflow > 0:
        (p, a, learned), = exchanges
        cut = min(overflow, max(len(p) - min_prompt, 0))
        p = p[:n_bos] + p[n_bos + cut :]
        a = a[: max_length - len(p)]
        if not a:
            return None, True
        exchanges = [[p, a, learned]]
    return exchanges, True


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
