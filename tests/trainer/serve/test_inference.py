import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.hw import fast_cpu_dtype, on_torch_thread
from trainer.serve.inference import (
    MAX_INPUT_CHARS,
    STOP_MARKERS,
    ChatModel,
    InputError,
    _contiguous_input,
    _cut_at_marker,
    _without_marker_start,
)


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


QUESTION = "Dokter, saya demam tinggi sejak tiga hari. Apa yang harus saya lakukan?"


def generate_plainly(model, chat, n):
    """What a plain greedy HF generate answers to QUESTION, on `model`."""
    text, prompt_tokens, _ = chat.prompt(QUESTION, max_new_tokens=n)
    ids = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=chat.tokenizer.pad_token_id)
    return chat.tokenizer.decode(out[0, prompt_tokens:], skip_special_tokens=True)


def test_greedy_stream_equals_plain_generate_of_a_fresh_model(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id", dtype=torch.float32)
    chat.generate_options = {"min_new_tokens": 12}  # a fixed length, as the benchmark runs it
    answer = chat.answer(QUESTION, max_new_tokens=12)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    assert chat.last.new_tokens == 12 and generate_plainly(fresh, chat, 12).startswith(answer)


def test_the_default_load_streams_what_generate_makes_of_the_same_model(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id")  # dtype and oneDNN use as measured here
    dtype = fast_cpu_dtype()[0]
    assert chat.model.dtype == dtype and chat.settings.startswith(f"cpu, {str(dtype).removeprefix('torch.')}")
    chat.generate_options = {"min_new_tokens": 12}
    answer = chat.answer(QUESTION, max_new_tokens=12)
    assert chat.last.new_tokens == 12 and generate_plainly(chat.model, chat, 12).startswith(answer)


def test_one_token_steps_run_without_onednn_and_prompts_with_it_all_on_the_torch_thread(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id", dtype=torch.bfloat16, onednn_for_one_token=False)
    assert chat.settings == "cpu, bfloat16, one-token steps without oneDNN"
    seen = []  # (tokens in the forward call, oneDNN on during it, thread); our hook runs before this one
    chat.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (kwargs["input_ids"].shape[-1], torch.backends.mkldnn.enabled, threading.current_thread().name)), with_kwargs=True)
    before = torch.backends.mkldnn.enabled
    chat.generate_options = {"min_new_tokens": 4}
    chat.answer(QUESTION, max_new_tokens=4)
    assert seen[0][0] > 1 and seen[0][1] == before  # the prompt, as configured
    assert len(seen) == 4 and all(n == 1 and not onednn for n, onednn, _ in seen[1:])
    assert torch.backends.mkldnn.enabled == before  # restored after each step
    assert {thread for *_, thread in seen} == {on_torch_thread(lambda: threading.current_thread().name)}


def scripted_generate(script: list[int]):
    """A generate() that emits `script` token by token, 5 ms apart, checking the stopping criteria like generate() does."""

    def generate(input_ids, streamer, stopping_criteria, **kwargs):
        ids = input_ids
        streamer.put(ids)
        for token in script:
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            streamer.put(torch.tensor([token]))
            time.sleep(0.005)  # the reader's time to see a marker, or to stop reading
            if stopping_criteria(ids, None).all():
                break
        streamer.end()
        return ids

    return generate


def test_generation_ends_soon_after_a_marker_without_stop_strings(tiny_llama):
    """The answer is cut at a marker in the text, and the stop event then ends generation early."""
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id", dtype=torch.float32)
    script = chat.tokenizer("Minum air putih yang banyak.\n\n### Instruksi:\nApa lagi? " + "lagi " * 200,
                            add_special_tokens=False)["input_ids"]
    chat.model.generate = scripted_generate(script)
    assert chat.answer(QUESTION, max_new_tokens=500) == "Minum air putih yang banyak."
    assert chat.last.finish == "marker" and chat.last.new_tokens < len(script) // 2


def test_a_stream_says_why_it_ended_and_raises_what_generate_raised(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), template="alpaca-id", dtype=torch.float32)
    words = chat.tokenizer("Minum air putih yang banyak. " * 40, add_special_tokens=False)["input_ids"]
    eos = chat.tokenizer.eos_token_id

    chat.model.generate = scripted_generate(words[:8] + [eos])
    assert chat.answer(QUESTION) == chat.tokenizer.decode(words[:8])
    assert chat.last.finish == "eos" and chat.last.new_tokens == 9
    chat.model.generate = scripted_generate(words[:8])
    chat.answer(QUESTION)
    assert chat.last.finish == "length" and chat.last.new_tokens == 8

    chat.model.generate = scripted_generate(words)
    stream = chat.stream(QUESTION)
    first = next(stream)
    assert first and chat.tokenizer.decode(words).startswith(first)
    stream.close()  # what Gradio does when the user presses stop
    assert chat.last.finish == "stopped" and chat.last.new_tokens < len(words) // 2  # generation ended too
    assert 0 < chat.last.seconds_to_first_token <= chat.last.seconds

    def failing_generate(**kwargs):
        raise RuntimeError("out of memory")

    chat.model.generate = failing_generate
    with pytest.raises(RuntimeError, match="out of memory"):
        chat.answer(QUESTION)
    assert chat.last.new_tokens == 0
    chat.model.generate = scripted_generate(words[:3])
    assert chat.answer(QUESTION) == chat.tokenizer.decode(words[:3])  # the lock was released


def test_torch_thread_work_can_nest_without_deadlock():
    from trainer.hw import TORCH_THREAD

    def outer():
        return threading.get_ident(), on_torch_thread(threading.get_ident)

    outer_id, inner_id = TORCH_THREAD.submit(outer).result(timeout=30)  # fails instead of hanging
    assert outer_id == inner_id != threading.get_ident()


def test_the_heads_input_gets_standard_strides():
    """generate() hands the head the last position as a strided view; .contiguous() leaves a [1, 1, d] view as it is
    (size-1 dimensions count as contiguous), and oneDNN took ~0.8 s for Gemma's head on it instead of ~25 ms."""
    last = torch.randn(2, 200, 64)[:, -1:, :]
    copied = _contiguous_input(None, (last,))[0]
    assert copied.stride() == (64, 64, 1) and torch.equal(copied, last)
