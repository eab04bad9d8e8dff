"""The demo as a user meets it: a real Gradio server on 127.0.0.1, driven through gradio_client."""

import socket

import httpx
import pytest
from gradio_client import Client

import app
from conftest import SAMPLE, run_module
from trainer.inference import ChatModel


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """A tiny model fine-tuned for a few steps, so it has a chat_template like our checkpoints do."""
    out = tmp_path_factory.mktemp("app") / "out"
    result = run_module("trainer.train", "--model_name_or_path", tiny_llama, "--data_path", SAMPLE, "--output_dir", out,
                        "--max_steps", "5", "--learning_rate", "3e-3", "--save_strategy", "no", "--template", "alpaca-id")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_examples_are_indonesian_questions_from_our_sample():
    questions = app.example_questions()
    assert len(questions) == 4 and all(q.endswith("?") for q in questions)
    assert all(q in SAMPLE.read_text(encoding="utf-8") for q in questions)


def test_chat_through_the_server_matches_direct_generation(trained):
    chat = ChatModel.load(str(trained))
    question = "Dokter, kenapa saya sering pusing saat bangun tidur?"
    expected = chat.answer(question, max_new_tokens=24)
    assert expected  # the tiny model says something
    demo = app.build_demo(chat)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        reply = client.predict(question, 24, 0.0, api_name="/chat")
        assert reply == expected
        page_config = httpx.get(f"http://127.0.0.1:{port}/config").text
        assert "Bukan pengganti dokter" in page_config  # the disclaimer is on the page
    finally:
        demo.close()
