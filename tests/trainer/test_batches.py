import pytest
import torch

from conftest import sample_records
from trainer.batches import IGNORE_INDEX, DataCollator, tokenize_records
from trainer.prompts import TEMPLATES, bos_text, chat_template_for, get_template
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


# --------------------------------------------------------------------------------------------- conversations

CONVERSATION = [
    {"role": "system", "content": "Jika Anda seorang dokter, jawablah pertanyaan pasien."},
    {"role": "user", "content": "Saya demam sejak kemarin."},
    {"role": "assistant", "content": "Minum banyak air dan istirahat."},
    {"role": "user", "content": "Kalau demamnya naik?"},
    {"role": "assistant", "content": "Periksa ke dokter bila di atas 39 derajat."},
    {"role": "user", "content": "Terima kasih, dok."},
    {"role": "assistant", "content": "Sama-sama, semoga lekas sembuh."},
]
ANSWERS = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def real_tokenizer(request):
    from trainer.models import load_tokenizer

    return load_tokenizer(request.param)


def learned_runs(example) -> list[list[int]]:
    """The learned label ids, one list per contiguous run."""
    runs, run = [], []
    for label in example["labels"] + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(run)
            run = []
    return runs


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_conversation_trains_on_what_the_chat_template_renders(real_tokenizer, name):
    tok, template = real_tokenizer, get_template(name)
    tok.chat_template = chat_template_for(tok, template)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    pieces = "".join(prompt + answer + tok.eos_token for prompt, answer in template.segments(CONVERSATION))
    assert (bos_text(tok) or "") + pieces == rendered  # byte for byte, BOS or not
    assert rendered.count(CONVERSATION[0]["content"]) == 3  # the system text persists into every prompt
    (ex,), stats = tokenize_records([{"messages": CONVERSATION}], tok, template, 2048)
    assert tok.decode(ex["input_ids"]) == rendered
    # BOS once, first, when the tokenizer adds it (gemma3-270m's does, smollm2-135m's doesn't)
    assert ex["input_ids"].count(tok.bos_token_id) == (ex["input_ids"][0] == tok.bos_token_id) == (bos_text(tok) is not None)
    runs = learned_runs(ex)
    assert [tok.decode(run) for run in runs] == [a + tok.eos_token for a in ANSWERS]
    assert stats.learned_tokens == sum(map(len, runs)) and stats.tokens == len(ex["input_ids"])
    (last,), _ = tokenize_records([{"messages": CONVERSATION}], tok, template, 2048, train_on="last")
    assert last["input_ids"] == ex["input_ids"]
    assert [tok.decode(run) for run in learned_runs(last)] == [ANSWERS[-1] + tok.eos_token]


def test_an_alpaca_record_and_its_conversation_are_one_example(llama_tokenizer):
    from trainer.records import alpaca_messages

    template = get_template("alpaca-id")
    records = sample_records()[:4] + [{**sample_records()[0], "input": ""}]
    as_chat = [{"messages": alpaca_messages(r)} for r in records]
    assert tokenize_records(as_chat, llama_tokenizer, template, 1024) == tokenize_records(records, llama_tokenizer, template, 1024)
    for r in records:
        (prompt, answer), = template.segments(alpaca_messages(r))
        assert (prompt, answer) == (template.format(r["instruction"], r["input"]), r["output"])


def test_a_long_conversation_loses_its_oldest_exchanges_first(llama_tokenizer):
    tok, template = llama_tokenizer, get_template("alpaca-id")
    (full,), _ = tokenize_records([{"messages": CONVERSATION}], tok, template, 4096)
    (last_two,), _ = tokenize_records([{"messages": CONVERSATION[:1] + CONVERSATION[3:]}], tok, template, 4096)
    (cut,), stats = tokenize_records([{"messages": CONVERSATION}], tok, template, len(full["input_ids"]) - 1)
    assert stats.truncated == 1 and stats.dropped == 0
    assert cut == last_two  # the first exchange went whole; the rest is the conversation without it, BOS first
    assert cut["input_ids"][0] == tok.bos_token_id
    # Too long even for its last exchange: today's prompt-side cut on that exchange, the answer kept whole.
    answer = tok(ANSWERS[-1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (short,), stats = tokenize_records([{"messages": CONVERSATION}], tok, template, len(answer) + 12)
    assert stats.truncated == 1 and len(short["input_ids"]) == len(answer) + 12
    assert short["input_ids"][0] == tok.bos_token_id and short["labels"][-len(answer):] == answer
    assert learned_runs(short) == [answer]
