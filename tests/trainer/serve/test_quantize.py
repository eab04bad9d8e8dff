"""int8 weights for serving: every linear layer and the head replaced (counted), logits close to fp32 on a tiny
Llama and a tiny Gemma 3, batched answers equal to one-at-a-time ones, `quantize="none"` unchanged, and the
choice named in the settings the app prints at start."""

import pytest
import torch

from conftest import ask_together, build_model
from trainer.serve.batching import BatchedChat
from trainer.serve.inference import ChatModel
from trainer.serve.quantize import Int8Linear, QuantizeError, int8_layer_count, int8_per_channel, quantize_int8

GREEDY = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0)
QUESTIONS = ["Saya demam.", "Dokter, kepala saya pusing sejak kemarin pagi dan mual.", "Batuk?",
             "Anak saya ruam merah di lengan dan kaki setelah makan udang, apa yang harus saya lakukan?"]


def test_per_channel_symmetric_int8_round_trips_within_half_a_step():
    weight = torch.randn(32, 48) * torch.linspace(0.01, 3, 32)[:, None]  # rows of very different size
    q, scale = int8_per_channel(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.allclose(q.abs().amax(1).float(), torch.full((32,), 127.0))  # every row uses its whole range
    assert torch.all((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7)


@pytest.mark.parametrize("kernel", ["dynamic", "weight_only"])
def test_an_int8_layer_matches_the_linear_and_a_row_ignores_its_batch(kernel):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    x = torch.randn(3, 5, 256)
    x[1] *= 50  # a row far larger than the others must not coarsen their quantization
    layer = Int8Linear.from_linear(linear, kernel)
    with torch.no_grad():
        y, want = layer(x), linear(x)
    assert y.shape == want.shape and y.dtype == x.dtype
    assert float((y - want).abs().max() / want.abs().max()) < 0.02
    assert torch.equal(layer(x[0:1, 2:3]), y[0:1, 2:3])  # alone = inside a batch, bit for bit


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_every_linear_and_the_head_become_int8_and_logits_stay_close(kind):
    model = build_model(kind, vocab_size=300).eval()
    ids = torch.randint(4, 300, (2, 24))
    with torch.no_grad():
        want = model(ids).logits
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    embedding = model.get_input_embeddings().weight.clone()
    quantize_int8(model)
    assert int8_layer_count(model) == linears and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # the lookup keeps its dtype and values
    with torch.no_grad():
        got = model(ids).logits
    assert float((got - want).abs().mean() / want.abs().mean()) < 0.05  # ~1-3 % here; a wrong scale gives ~100 %
    assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.9


def test_an_adapter_must_be_merged_first(tiny_llama):
    from trainer.models import load_model

    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(load_model(str(tiny_llama)), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(QuantizeError, match="merge the LoRA adapter"):
        quantize_int8(model)


@pytest.fixture(scope="module")
def int8_chat(tiny_llama):
    return ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32, quantize="int8")


def test_batched_answers_equal_one_at_a_time_under_int8(int8_chat):
    alone = [int8_chat.answer(q, max_new_tokens=24, **GREEDY) for q in QUESTIONS]
    batched = BatchedChat(int8_chat, max_batch=8, start=False)
    answers, _ = ask_together(batched, QUESTIONS, max_new_tokens=24, **GREEDY)
    batched.close()
    assert batched.batch_sizes == [4]
    assert answers == alone and all(alone)


def test_quantize_none_is_the_unquantized_path(tiny_llama, int8_chat):
    plain = ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32)
    none = ChatModel.load(str(tiny_llama), "alpaca-id", dtype=torch.float32, quantize="none")
    assert int8_layer_count(none.model) == 0 and none.settings == plain.settings == "cpu, float32"
    assert none.answer(QUESTIONS[1], max_new_tokens=16, **GREEDY) == plain.answer(QUESTIONS[1], max_new_tokens=16, **GREEDY)
    assert int8_chat.settings == "cpu, int8 weights, float32 activations"
    assert int8_layer_count(int8_chat.model) == 2 * 7 + 1  # 2 layers x (q, k, v, o, gate, up, down) + the head


def test_auto_names_its_choice_and_the_timing_behind_it(tiny_llama):
    chat = ChatModel.load(str(tiny_llama), "alpaca-id", quantize="auto")
    assert "quantize auto: matrix-vector int8 " in chat.settings
    layers = int8_layer_count(chat.model)
    if chat.settings.endswith("so int8)"):
        assert chat.settings.startswith("cpu, int8 weights, float32 activations") and layers == 15
    elif chat.settings.endswith("so the head only)"):
        assert chat.settings.startswith("cpu, bfloat16, int8 head") and layers == 1
    else:
        assert chat.settings.endswith("so unquantized)") and layers == 0


def test_the_head_alone_in_int8_keeps_the_greedy_answers(tiny_gemma):
    """A tied head's top candidates are rescored with the embedding's own weights: greedy decoding is unchanged."""
    plain = ChatModel.load(str(tiny_gemma), "alpaca-id", dtype=torch.float32)
    head = ChatModel.load(str(tiny_gemma), "alpaca-id", dtype=torch.float32, quantize="head")
    assert head.settings == "cpu, float32, int8 head" and int8_layer_count(head.model) == 1
    assert isinstance(head.model.get_output_embeddings(), Int8Linear) and head.model.get_output_embeddings().exact is not None
    ids = torch.randint(4, 200, (3, 40))
    with torch.no_grad():
        want, got = plain.model(ids).logits, head.model(ids).logits
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    top = want.topk(8, dim=-1).indices  # the candidates' logits are the unquantized ones
    assert torch.allclose(got.gather(-1, top), want.gather(-1, top), atol=1e-5)
    for q in QUESTIONS:
        assert head.answer(q, max_new_tokens=16, **GREEDY) == plain.answer(q, max_new_tokens=16, **GREEDY)


def test_an_unknown_choice_is_refused(tiny_llama):
    from trainer.models import ModelError

    with pytest.raises(ModelError, match="quantize='int4' is not a choice; use one of auto, int8, head, none"):
        ChatModel.load(str(tiny_llama), "alpaca-id", quantize="int4")


def test_an_int8_weight_is_taken_with_its_scale():
    q = torch.randint(-127, 128, (48, 32), dtype=torch.int8)
    scale = torch.rand(48) + 0.5
    x = torch.randn(3, 32)
    for kernel in ("dynamic", "weight_only"):
        layer = Int8Linear(q, scale=scale, kernel=kernel)
        want = x @ (q.float() * scale[:, None]).T
        assert float((layer(x) - want).abs().max() / want.abs().max()) < 0.02
    with pytest.raises(QuantizeError, match="needs its scale"):
        Int8Linear(q)
