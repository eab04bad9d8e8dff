"""The demo as a user meets it: a real server on 127.0.0.1 (Gradio UI + OpenAI API), driven through
gradio_client and the real openai client."""

import os
import subprocess
import sys

import pytest
import torch
from gradio_client import Client
from openai import BadRequestError, OpenAI

import app
from conftest import ROOT, SAMPLE, free_port, run_module, start_server
from trainer.prompts import get_template
from trainer.serve.inference import ChatModel

QUESTION = "Dokter, kenapa saya sering pusing saat bangun tidur?"
GREEDY = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """A tiny model fine-tuned for a few steps, so it has a chat_template like our checkpoints do."""
    out = tmp_path_factory.mktemp("app") / "out"
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir", out,
                        "--max_steps", "5", "--learning_rate", "3e-3", "--save_strategy", "no", "--template", "alpaca-id",
                        "--model_max_length", "1024")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def serve(chat: ChatModel, config: dict = app.DEFAULTS, ratings=None):
    """Start app.build_app on a free port in a thread; returns (url, server)."""
    return start_server(app.build_app(chat, config, ratings))


@pytest.fixture(scope="module")
def server(trained):
    chat = ChatModel.load(str(trained))
    url, server = serve(chat)
    yield url, chat
    server.should_exit = True


def test_examples_are_indonesian_questions_from_our_sample():
    questions = app.example_questions()
    assert len(questions) == 4 and all(q.endswith("?") for q in questions)
    assert all(q in SAMPLE.read_text(encoding="utf-8") for q in questions)


def test_config_yaml_overrides_defaults(tmp_path):
    (tmp_path / "config.yaml").write_text("model: someone/model\ntemplate: llama-2\nmax_new_tokens: 128\n")
    config = app.load_config(tmp_path / "config.yaml")
    assert config["model"] == "someone/model" and config["template"] == "llama-2" and config["max_new_tokens"] == 128
    assert config["temperature"] == app.DEFAULTS["temperature"]
    assert app.load_config(tmp_path / "absent.yaml") == app.DEFAULTS


def test_chat_streams_through_gradio_client(server):
    url, chat = server
    expected = chat.answer(QUESTION, max_new_tokens=24, **GREEDY)
    assert expected
    client = Client(url, verbose=False)
    job = client.submit(QUESTION, 24, 0.0, 1.0, 1.0, api_name="/chat")
    assert job.result() == expected
    updates = [u for u in job.outputs() if u]
    assert len(updates) > 1 and updates[-1] == expected  # streamed, not one block
    assert all(expected.startswith(u) for u in updates)  # each update extends the last


def test_controls_change_generation(server):
    url, chat = server

    def ask(*settings):  # a new Client is a new conversation: a Client's session keeps its history
        return Client(url, verbose=False).predict(QUESTION, *settings, api_name="/chat")

    ask(16, 0.0, 1.0, 1.0)
    assert chat.last.new_tokens <= 16
    ask(4, 0.0, 1.0, 1.0)
    assert chat.last.new_tokens <= 4 and chat.last.finish in ("length", "eos", "marker")
    greedy = ask(32, 0.0, 1.0, 1.0)
    assert ask(32, 0.0, 1.0, 1.0) == greedy  # temperature 0 is greedy
    assert ask(32, 0.0, 1.0, 2.0) != greedy  # repetition penalty
    sampled = {ask(32, 1.5, 1.0, 1.0) for _ in range(3)}
    assert sampled - {greedy}  # sampling


def test_a_client_session_is_one_conversation(server):
    url, chat = server
    client = Client(url, verbose=False)
    client.predict(QUESTION, 8, 0.0, 1.0, 1.0, api_name="/chat")
    first_prompt = chat.last.prompt_tokens
    client.predict(QUESTION, 8, 0.0, 1.0, 1.0, api_name="/chat")
    assert chat.last.prompt_tokens > first_prompt  # the first turn is now history


def test_page_shows_the_disclaimer(server):
    import httpx

    url, _ = server
    assert "Bukan pengganti dokter" in httpx.get(f"{url}/config").text


def test_errors_show_and_the_server_keeps_serving(server):
    url, _ = server
    with pytest.raises(Exception, match="the limit is 4000"):
        Client(url, verbose=False).predict("x" * 4500, 16, 0.0, 1.0, 1.0, api_name="/chat")
    assert Client(url, verbose=False).predict(QUESTION, 8, 0.0, 1.0, 1.0, api_name="/chat")


def test_openai_client_stream_and_non_stream(server):
    url, chat = server
    expected = chat.answer(QUESTION, max_new_tokens=20, **GREEDY)
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [chat.name]
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=chat.name, messages=messages, max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens == chat.last.new_tokens and reply.usage.prompt_tokens > 0
    assert reply.choices[0].finish_reason == ("length" if chat.last.finish == "length" else "stop")
    chunks = list(client.chat.completions.create(model=chat.name, messages=messages, max_tokens=20, temperature=0, stream=True))
    assert len(chunks) > 3 and "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(BadRequestError, match="last message must have role 'user'"):
        client.chat.completions.create(model=chat.name, messages=[{"role": "assistant", "content": "hi"}])


def test_system_message_selects_the_with_input_prompt(trained):
    chat = ChatModel.load(str(trained))
    text, _, _ = chat.prompt("Saya batuk.", [{"role": "system", "content": "Jawab sebagai dokter."}])
    assert text == "<s>" + get_template("alpaca-id").format("Jawab sebagai dokter.", "Saya batuk.")


def test_long_history_is_cut_from_the_oldest(trained):
    chat = ChatModel.load(str(trained))
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Pertanyaan {i}: " + "demam " * 40},
                    {"role": "assistant", "content": f"Jawaban {i}: " + "istirahat " * 40}]
    text, tokens, dropped = chat.prompt("Apa obatnya?", history, max_new_tokens=256)
    assert dropped > 0 and tokens <= chat.context_length - 256
    assert "Pertanyaan 11" in text and "Pertanyaan 0:" not in text  # the newest turns stay
    answer = chat.answer("Apa obatnya?", history, max_new_tokens=8)
    assert chat.last.history_turns_dropped == dropped and isinstance(answer, str)


def test_closing_the_stream_stops_generation(trained):
    chat = ChatModel.load(str(trained))
    stream = chat.stream(QUESTION, max_new_tokens=900, **GREEDY)
    next(stream)
    stream.close()  # what Gradio does when the user presses stop
    assert chat.last.finish in ("stopped", "eos", "marker")
    if chat.last.finish == "stopped":
        assert chat.last.new_tokens < 900
    assert not chat.lock.locked()


def test_a_lora_adapter_folder_loads_and_answers(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    result = run_module("trainer.train", "--model", tiny_llama, "--data_path", SAMPLE, "--output_dir", out,
                        "--max_steps", "2", "--lora_r", "4", "--save_strategy", "no", "--model_max_length", "1024")
    assert result.returncode == 0, result.stderr[-2000:]
    chat = ChatModel.load(str(out), dtype=torch.float32)
    # Folded into its base's weights at load: a plain model, no extra LoRA matmuls per decoded token.
    assert type(chat.model).__name__ == "LlamaForCausalLM" and chat.base == str(tiny_llama)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    merged_q, base_q = chat.model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    assert merged_q.shape == base_q.shape and not torch.equal(merged_q, base_q)
    chat.answer(QUESTION, max_new_tokens=6, **GREEDY)
    assert 0 < chat.last.new_tokens <= 6 and chat.last.prompt_tokens > 0


def test_the_default_model_is_the_shipped_adapter_with_the_empty_input_alpaca_prompt():
    from conftest import ROOT
    from trainer.models import PROJECT_MODEL, SHIPPED

    assert app.load_config(ROOT / "no-such-config.yaml")["model"] == PROJECT_MODEL == "alpaca-medis-270m"
    assert not (ROOT / "config.yaml").exists()  # nothing overrides the default in a checkout
    # Gemma's tokenizer adds <bos>, so the template carries it; the user's words are the instruction, no input.
    template = (SHIPPED[PROJECT_MODEL] / "chat_template.jinja").read_text()
    assert template == get_template("alpaca-id").chat_template("<bos>")


@pytest.mark.slow
def test_the_shipped_model_answers_in_indonesian_and_stops_by_itself():
    from trainer.eval_report import has_repetition, is_indonesian
    from trainer.models import PROJECT_MODEL

    chat = ChatModel.load(PROJECT_MODEL)  # base converted from PyPI once per machine, then the adapter
    assert chat.base == "gemma3-270m" and "Gemma Terms of Use" in app.model_line(chat)
    prompt, _, _ = chat.prompt(QUESTION)
    assert prompt == "<bos>" + get_template("alpaca-id").format(QUESTION)
    answer = chat.answer(QUESTION, max_new_tokens=256, **GREEDY)
    print(answer)
    assert chat.last.finish == "eos" and len(answer.split()) >= 5  # a sentence; its answers are short (README "The model")
    assert is_indonesian(answer) and not has_repetition(answer)


# Patients' questions that are in no data file (not in data/eval/, not generated from the cards): written with the
# evaluation set by a separate session and kept out of it. The shipped model must name their conditions.
UNSEEN = {
    "gagal_jantung": "Bapak saya 68 th, dulu pernah kena serangan jantung. Sebulan ini gampang ngos-ngosan kalau jalan "
                     "sedikit, malam harus tidur pakai 3 bantal karena kalau rebahan sesak, kedua kakinya bengkak dan kalau "
                     "ditekan membekas.",
    "hipertiroid": "Saya perempuan 30 th, beberapa bulan ini jantung berdebar terus, tangan gemetar, gampang keringetan dan "
                   "kepanasan, berat badan turun padahal makan banyak. Kata teman mata saya kelihatan agak melotot.",
    "kutu_air": "Sela-sela jari kaki saya gatal, kulitnya putih lembek dan mengelupas, kadang bau. Tiap hari saya pakai "
                "sepatu boots kerja dan kaus kakinya sering lembap.",
    "rinitis_alergi": "Tiap pagi bangun tidur saya bersin berkali-kali, hidung gatal dan meler bening, mata juga gatal "
                      "berair. Kalau nyapu atau beresin kamar berdebu makin parah. Gak pernah demam.",
    "gigitan_hewan_rabies": "Anak saya 9 tahun tadi sore digigit anjing liar di betis pas pulang sekolah, lukanya berdarah. "
                            "Anjingnya kabur dan gak tahu sudah divaksin atau belum. Cukup dikasih betadine?",
    "glaukoma": "Ibu saya 60 th sejak tadi malam tiba-tiba mata kirinya sakit hebat, merah, pandangannya kabur dan lihat "
                "lingkaran pelangi di sekitar lampu, kepalanya sakit sampai muntah-muntah.",
}
NAMED_BY_V2 = ("gagal_jantung",)  # of the six, the one v2 names (README "The model"): the others are wrong


def test_unseen_questions_are_in_no_data_file():
    from data_gen.cards import load_cards
    from data_gen.conditions import LEAK_THRESHOLD, build, eval_questions
    from data_gen.rouge import rouge_l, tokenize

    records, _ = build(load_cards(), 21, 42, 0.7, eval_questions(), progress=False)  # v2's training records
    texts = [tokenize(r["input"] or r["instruction"]) for r in records] + [tokenize(q) for q in eval_questions()]
    for question in UNSEEN.values():
        assert max(rouge_l(tokenize(question), t) for t in texts) < LEAK_THRESHOLD


@pytest.fixture(scope="module")
def shipped_chat():
    from trainer.models import PROJECT_MODEL

    return ChatModel.load(PROJECT_MODEL)


@pytest.mark.slow
@pytest.mark.parametrize("condition", NAMED_BY_V2)
def test_the_shipped_model_names_the_condition_of_an_unseen_question(condition, shipped_chat):
    from data_gen.cards import load_cards
    from trainer.defaults import GENERATION
    from trainer.eval_conditions import names_condition

    card = next(c for c in load_cards() if c.id == condition)
    chat = shipped_chat
    answer = chat.answer(UNSEEN[condition], **GENERATION)  # as the page answers
    print(answer)
    assert names_condition(answer, card), answer
    assert chat.last.finish == "eos"



@pytest.mark.parametrize("flag, env, want", [
    (["--quantize", "int8"], {}, "cpu, int8 weights, float32 activations"),
    ([], {"QUANTIZE": "none"}, "cpu, "),
])
def test_the_start_up_line_names_the_quantization_chosen(trained, flag, env, want):
    cmd = [sys.executable, "app.py", "--model", str(trained), "--port", str(free_port()), "--max_batch", "1", *flag]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "QUANTIZE": "", **env})
    try:
        line = process.stdout.readline()
    finally:
        process.kill()
        process.wait()
    assert line.startswith(f"alpaca-medis: {trained} ({want}")
    assert ("int8" in line) == ("int8" in flag)
