import pytest

from trainer.inference import MAX_INPUT_CHARS, STOP_MARKERS, ChatModel, InputError, _cut_at_marker, _without_marker_start


def test_markers_cover_every_template():
    assert {"### Instruksi", "### Instruction", "[INST]"} <= set(STOP_MARKERS)


def test_answer_is_cut_where_the_model_starts_a_new_turn():
    assert _cut_at_marker("Minum air putih.\n\n### Instruksi:\nApa lagi?") == "Minum air putih."
    assert _cut_at_marker("Rest well. ### Instruction: more") == "Rest well."
    assert _cut_at_marker("Tidak ada penanda.") is None


def test_a_possible_marker_start_is_held_back_until_it_resolves():
    assert _without_marker_start("Minum air. ##") == "Minum air. "
    assert _without_marker_start("Minum air. ### Inst") == "Minum air. "
    assert _without_marker_start("Minum air. [IN") == "Minum air. "
    assert _without_marker_start("Skor #1 adalah") == "Skor #1 adalah"


def test_limits(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id")
    with pytest.raises(InputError, match=f"the limit is {MAX_INPUT_CHARS}"):
        chat.prompt("x" * (MAX_INPUT_CHARS + 1))
    with pytest.raises(InputError, match="more than the .* left in this model's 1024-token context"):
        chat.prompt("demam " * 600, max_new_tokens=512)
    chat.answer("Halo", max_new_tokens=5000, temperature=0.0)  # clamped, not an error
    assert chat.last.new_tokens <= 512  # half the tiny model's 1024-token context
