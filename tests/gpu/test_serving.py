"""Serving on CUDA: ChatModel loads onto the GPU in bf16 and streams what generate() makes; the CPU suite's BatchedChat
tests (same answers as one at a time, a reader's stop ends only its row, a full queue refuses, the page and /v1 in
shared batches) on a GPU model; int8 weights on the GPU's kernel; app.py under a ZeroGPU stand-in answering from it."""

import pytest
import torch

from gpu.conftest import CUDA, DEVICE, cpu_test_module
from spaces_stand_in import ask_app_under_stand_in
from trainer.serve import zerogpu
from trainer.serve.inference import ChatModel
from trainer.serve.quantize import Int8Linear, dynamic_kernel_available

cpu_batching = cpu_test_module("trainer/serve/test_batching.py")
cpu_quantize = cpu_test_module("trainer/serve/test_quantize.py")
QUESTION = "Dokter, saya demam tinggi sejak tiga hari. Apa yang harus saya lakukan?"


@pytest.fixture(scope="module")
def chat(tiny_llama):
    """fp32 on the device: batched (left-padded) and one-at-a-time greedy answers round alike, as on the CPU."""
    chat = ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32)
    assert chat.model.device.type == DEVICE and chat.settings == f"{DEVICE}, float32"
    return chat


def test_the_page_default_load_is_bf16_on_the_gpu_and_streams_what_generate_makes(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), "alpaca-id", quantize="auto")  # app.py's load
    assert chat.model.device.type == DEVICE
    if CUDA:  # bf16, and no int8 (auto never chooses it on CUDA)
        assert chat.model.dtype == torch.bfloat16 and chat.settings == "cuda, bfloat16"
    chat.generate_options = {"min_new_tokens": 12}
    answer = chat.answer(QUESTION, max_new_tokens=12)
    text, prompt_tokens, _ = chat.prompt(QUESTION, max_new_tokens=12)
    inputs = chat.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(DEVICE)
    with torch.inference_mode():
        ids = chat.model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=chat.tokenizer.pad_token_id)
    assert chat.last.new_tokens == 12 and answer
    assert chat.tokenizer.decode(ids[0, prompt_tokens:], skip_special_tokens=True).startswith(answer)


@pytest.mark.parametrize("name", [
    "test_a_batch_answers_as_one_at_a_time", "test_closing_one_stream_stops_only_its_row",
    "test_a_full_queue_refuses_with_busy_and_a_stopped_wait_leaves_it", "test_settings_that_differ_go_to_different_batches",
    "test_the_app_serves_concurrent_clients_in_shared_batches", "test_a_running_batch_pauses_for_newcomers_and_its_answer_is_unchanged",
])
def test_batched_chat_on_the_device(chat, name):
    getattr(cpu_batching, name)(chat)


def test_int8_weights_on_the_device_answer_in_batches_as_alone(tiny_llama):
    int8 = ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32, quantize="int8")
    layers = [m for m in int8.model.modules() if isinstance(m, Int8Linear)]
    assert int8.model.device.type == DEVICE and len(layers) == 2 * 7 + 1  # 2 layers x 7 linear + the head
    # fbgemm's dynamic int8 GEMM is a CPU kernel; CUDA gets the weight-only one.
    kernel = "dynamic" if not CUDA and dynamic_kernel_available() else "weight_only"
    assert {m.kernel for m in layers} == {kernel}
    assert all(m.qweight.device.type == DEVICE for m in layers if kernel == "weight_only")
    cpu_quantize.test_batched_answers_equal_one_at_a_time_under_int8(int8)


def test_the_page_under_zerogpu_answers_from_the_gpu(tiny_llama, tmp_path):
    run = ask_app_under_stand_in(tiny_llama, tmp_path, max_new_tokens=40)
    assert isinstance(run.answer, str)
    assert run.calls == [{"function": "respond", "duration": zerogpu.seconds_for(40)}]
    assert run.v1_status == 404 and "on ZeroGPU" in run.output
    assert f"({DEVICE}, " in run.output  # the start-up line: where the model was placed (bf16 on CUDA)
