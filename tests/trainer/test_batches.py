import pytest
import torch

from conftest import sample_records
from trainer.batches import IGNORE_INDEX, DataCollator, tokenize_records
from trainer.prompts import get_template
from trainer.records import DataError


def test_labels_mask_the_prompt_and_learn_the_eos(llama_tokenizer):
    template = get_template("alpaca-id")
    records = sample_records()[:5]
    examples, stats = tokenize_records(records, llama_tokenizer, template, max_length=1024)
    assert stats.examples == 5 and stats.truncated == 0
    for rec, ex in zip(records, examples):
        prompt_ids = llama_tokenizer(template.format(rec["instruction"], rec["input"]))["input_ids"]
        response_ids = llama_tokenizer(rec["output"], add_special_tokens=False)["input_ids"]
        # Pieces encoded separately, then concatenated (never a prefix assumption on the joined text).
        assert ex["input_ids"] == prompt_ids + response_ids + [llama_tokenizer.eos_token_id]
        assert ex["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert ex["labels"][len(prompt_ids):] == response_ids + [llama_tokenizer.eos_token_id]
        assert ex["input_ids"][0] == llama_tokenizer.bos_token_id
        assert llama_tokenizer.decode(ex["input_ids"][len(prompt_ids):-1]) == rec["output"]


def test_collator_with_pad_equal_to_eos_keeps_the_real_eos(gpt2_tokenizer):
    tok = gpt2_tokenizer
    eos = tok.eos_token_id
    examples, _ = tokenize_records(sample_records()[:2] + sample_records()[-1:], tok, get_template("alpaca"), 1024)
    batch = DataCollator(pad_token_id=eos)(examples)  # pad == eos, as in SmolLM2
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["labels"][row, n - 1] == eos  # the real EOS is learned ...
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()  # ... the padding is not
        assert batch["attention_mask"][row].sum() == n
        assert (batch["input_ids"][row, n:] == eos).all()
    assert batch["input_ids"].dtype == torch.long


def test_truncation_cuts_the_prompt_first_and_keeps_bos(llama_tokenizer):
    template = get_template("alpaca-id")
    rec = {"instruction": "Jawab. " * 60, "input": "Saya batuk. " * 40, "output": "Minum obat batuk dan istirahat."}
    response = llama_tokenizer(rec["output"], add_special_tokens=False)["input_ids"] + [llama_tokenizer.eos_token_id]
    full, _ = tokenize_records([rec], llama_tokenizer, template, 4096)
    assert len(full[0]["input_ids"]) > 128
    (ex,), stats = tokenize_records([rec], llama_tokenizer, template, 128)
    assert stats.truncated == 1 and stats.dropped == 0
    assert len(ex["input_ids"]) == 128
    assert ex["input_ids"][0] == llama_tokenizer.bos_token_id
    assert ex["input_ids"][-len(response):] == response  # the whole answer survives
    assert ex["labels"][-len(response):] == response
    end_of_prompt = llama_tokenizer("### Tanggapan:", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][-len(response) - len(end_of_prompt): -len(response)] == end_of_prompt
    # Too short to hold anything learnable: dropped and counted, never kept empty.
    examples, stats = tokenize_records([rec], llama_tokenizer, template, 2)
    assert examples == [] and stats.dropped == 1


def test_tokenizer_without_eos_is_refused(gpt2_tokenizer):
    tok = gpt2_tokenizer.__class__(tokenizer_object=gpt2_tokenizer.backend_tokenizer)
    assert tok.eos_token is None
    with pytest.raises(DataError, match="no EOS token"):
        tokenize_records(sample_records()[:1], tok, get_template("alpaca"), 64)
