import pytest
from transformers import AutoTokenizer

from trainer.prompts import TEMPLATES, bos_text, chat_template_for, get_template

# stanford_alpaca train.py PROMPT_DICT, copied verbatim (the reference our template must equal).
SA_PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def test_alpaca_is_stanford_alpacas_prompt_dict():
    t = get_template("alpaca")
    assert t.prompt_input == SA_PROMPT_DICT["prompt_input"]
    assert t.prompt_no_input == SA_PROMPT_DICT["prompt_no_input"]
    assert t.format("Hi") == SA_PROMPT_DICT["prompt_no_input"].format(instruction="Hi")
    assert t.format("Hi", "ctx") == SA_PROMPT_DICT["prompt_input"].format(instruction="Hi", input="ctx")
    assert t.format("Hi").endswith("### Response:")  # no newline after the marker


def test_alpaca_id_strings():
    t = get_template("alpaca-id")
    assert t.format("Apa itu DBD?") == (
        "Di bawah ini adalah instruksi yang menjelaskan tugas. Tulis tanggapan yang melengkapi permintaan "
        "dengan tepat.\n\n### Instruksi:\nApa itu DBD?\n\n### Tanggapan:"
    )
    assert t.format("Jawab.", "Saya demam.") == (
        "Di bawah ini adalah instruksi yang menjelaskan tugas, dipasangkan dengan masukan yang memberikan "
        "konteks lebih lanjut. Tulis tanggapan yang melengkapi permintaan dengan tepat.\n\n"
        "### Instruksi:\nJawab.\n\n### Masukan:\nSaya demam.\n\n### Tanggapan:"
    )


def test_llama2_wraps_without_literal_bos():
    t = get_template("llama-2")
    p = t.format("Apa itu DBD?")
    assert p.startswith("[INST] <<SYS>>\nDi bawah ini adalah instruksi yang menjelaskan tugas.")
    assert p.endswith("<</SYS>>\n\nApa itu DBD? [/INST]")
    assert "<s>" not in p and "<s>" not in t.format("a", "b")
    assert "### Masukan:\nb [/INST]" in t.format("a", "b")


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="alpaca, alpaca-id, llama-2"):
        get_template("vicuna")


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("tok_fixture", ["llama_tokenizer", "gpt2_tokenizer"])
def test_chat_template_round_trip(name, tok_fixture, request, tmp_path):
    tok = request.getfixturevalue(tok_fixture)
    template = get_template(name)
    tok.chat_template = chat_template_for(tok, template)
    tok.save_pretrained(tmp_path)  # the template must survive the trip through disk
    tok = AutoTokenizer.from_pretrained(tmp_path)
    bos = "<s>" if tok_fixture == "llama_tokenizer" else ""
    x = 'Dokter, saya pusing {sejak} "kemarin"\nApa sebabnya?'
    rendered = tok.apply_chat_template([{"role": "user", "content": x}], add_generation_prompt=True, tokenize=False)
    assert rendered == bos + template.format(x)
    with_system = tok.apply_chat_template(
        [{"role": "system", "content": "Jawab sebagai dokter."}, {"role": "user", "content": x}],
        add_generation_prompt=True, tokenize=False,
    )
    assert with_system == bos + template.format("Jawab sebagai dokter.", x)
    # Earlier turns: prompt + answer + EOS, then the new prompt.
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    multi = tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    assert multi == bos + template.format("a") + "b" + tok.eos_token + template.format("c")


def test_bos_text_only_when_tokenizer_adds_it(llama_tokenizer, gpt2_tokenizer):
    assert bos_text(llama_tokenizer) == "<s>"
    assert bos_text(gpt2_tokenizer) is None
    # Rendered with BOS, encoded without special tokens: exactly one BOS, as in training.
    llama_tokenizer.chat_template = chat_template_for(llama_tokenizer, get_template("alpaca"))
    text = llama_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
    ids = llama_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == llama_tokenizer(get_template("alpaca").format("x"))["input_ids"]
    assert ids.count(llama_tokenizer.bos_token_id) == 1
