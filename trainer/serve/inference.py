"""Load a chat model and stream answers: the generation path behind app.py and its OpenAI API.

    python -m trainer.inference --model out "Apa gejala demam berdarah?"

The prompt is the model's own `chat_template` (training saves the Alpaca template there); a
model trained elsewhere can be given a template by name with `template=`.

Speed on a CPU (`python -m trainer.bench`; the numbers, and the alternatives measured, are in
BENCHMARKS.md). A decoded token reads every weight once, so decoding is bound by memory bandwidth:
- the model runs in bf16 where this CPU multiplies bf16 at least half as fast as fp32: half the bytes
  per decoded token, and faster prompt matmuls;
- one-token decode steps skip oneDNN where ATen's own bf16 matrix-vector kernel is faster: ATen's
  reads the weights at memory bandwidth, oneDNN's (made for a prompt's matrix-matrix products) not;
- both are decided by timing at the first load, never by CPU flags, which VMs misreport;
- all torch work runs on one thread, trainer.hw.TORCH_THREAD (why: at its definition), with torch's usual
  intra-op threads: a single one makes both the prompt and decoding slower;
- int8 weights with `quantize` (trainer/serve/quantize.py): the output head alone where bf16 is fast (it keeps
  the model's greedy answers), every linear layer where it is not (3x fp32's decode speed);
- no static KV cache: every step attends over the whole cache, which generate() keeps at the longest
  size any answer needed, so after one long conversation every answer decodes slower; and no
  torch.compile on top of it, which decoded no faster and compiles again for each new cache size.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from trainer import hw
from trainer.defaults import GENERATION, MAX_INPUT_CHARS, QUANTIZE_CHOICES
from trainer.hw import fast_cpu_dtype, on_torch_thread, one_token_faster_without_onednn
from trainer.models import PROJECT_MODEL, ModelError, adapter_base, load_model, load_tokenizer, resolve
from trainer.prompts import TEMPLATES, chat_template_for, get_template

logger = logging.getLogger(__name__)

# Markers a model may produce when it starts a new turn by itself; the answer ends there.
STOP_MARKERS = tuple(dict.fromkeys(m for t in TEMPLATES.values() for m in t.stop_markers))
MAX_NEW_TOKENS = 1024
DEFAULT_NEW_TOKENS = GENERATION["max_new_tokens"]  # when a caller names no answer budget
# Plain greedy decoding, what evaluation scores: answer_batch decodes so, and trainer.evaluate --backend asks an
# engine for exactly this, so that local and served answers are the same answers.
GREEDY = {"temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0}


class InputError(ValueError):
    """A request the model cannot serve as asked; the message says why, for the user to read."""


def check_length(message: str) -> None:
    """Refuse a message over MAX_INPUT_CHARS with a message saying so (InputError), rather than cut it silently."""
    if len(message) > MAX_INPUT_CHARS:
        raise InputError(f"The message has {len(message)} characters; the limit is {MAX_INPUT_CHARS}. Shorten it.")


class BusyError(RuntimeError):
    """Every generation slot and waiting place is taken: the request was not started. Retry shortly."""

    def __init__(self, message: str = "The server is busy: every answer slot is taken. Retry in a few seconds.",
                 retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    finish: str = ""  # "eos", "marker", "length" or "stopped" (the user pressed stop)
    history_turns_dropped: int = 0
    seconds_to_first_token: float | None = None
    seconds: float = 0.0


class _StopOnEvent:
    """A StoppingCriteria: generation ends as soon as the consumer stops reading (stop button)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _OneTokenStepsWithoutOneDNN:
    """Forward hooks that turn oneDNN off while the model decodes one token, and back on after."""

    def __init__(self, model: torch.nn.Module):
        # generate() calls the base model of a peft wrapper, so the hooks go there.
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.saved: bool | None = None
        model.register_forward_pre_hook(self.before, with_kwargs=True)
        model.register_forward_hook(self.after, always_call=True)

    def before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        # Only a single sequence's step is a matrix-vector product; a batch's (evaluation) is a small matmul,
        # which oneDNN runs far faster than ATen.
        if ids is not None and ids.shape == (1, 1):
            self.saved, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False

    def after(self, module, args, output):
        if self.saved is not None:
            torch.backends.mkldnn.enabled, self.saved = self.saved, None


def _contiguous_input(module, args):
    # A copy with standard strides: .contiguous() returns a [1, 1, d] view unchanged (size-1 dimensions count as
    # contiguous whatever their strides), and oneDNN still takes its slow path on it.
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


def _quantize_choice(quantize: str, on_cpu: bool, dtype: torch.dtype | None) -> tuple[str, torch.dtype | None, str]:
    """(what goes int8: "none", "head" or "int8" = every linear layer, the dtype of the rest, why) for --quantize."""
    from trainer.serve.quantize import int8_faster_here

    if quantize not in QUANTIZE_CHOICES:
        raise ModelError(f"quantize={quantize!r} is not a choice; use one of {', '.join(QUANTIZE_CHOICES)}.")
    if quantize == "none" or (quantize == "auto" and not on_cpu):  # CUDA keeps bf16 unless int8 is asked for
        return "none", dtype, ""
    # With every layer in int8 the rest (norms, attention, the embedding lookup, the KV cache) runs in fp32 on a CPU:
    # fbgemm takes fp32 input, and converting around every layer decoded ~10 % slower (BENCHMARKS.md, "Inference:
    # int8"). It also spares CPUs without fast bf16 its emulation.
    everything = dtype or (torch.float32 if on_cpu else torch.bfloat16)
    if quantize in ("int8", "head"):
        return quantize, everything if quantize == "int8" else dtype, "as asked"
    unquantized = dtype or fast_cpu_dtype()[0]
    faster, why = int8_faster_here(unquantized)
    if not faster:
        return "none", dtype, f"quantize auto: {why}, so unquantized"
    if unquantized == torch.bfloat16:
        # Where bf16 is fast, an int8 body decodes only ~3 % faster than a bf16 one (the step's op overhead, not its
        # bytes, dominates) but departs from the model's answers more; the int8 head alone keeps bf16's answers.
        return "head", dtype, f"quantize auto: {why}; bf16 is fast here, so the head only"
    return "int8", everything, f"quantize auto: {why}, so int8"


def _load_model_for_speed(name, device, dtype, onednn_for_one_token, trust_remote_code, revision, quantize="none", tokenizer=None):
    """(model, settings): the model in `dtype`, else the fastest here, with oneDNN off for one-token steps where
    that is faster; with int8 weights where `quantize` asks for them or (auto) chooses them (`_quantize_choice`)."""
    on_cpu = torch.device(device).type == "cpu"
    measured = []
    part, dtype, chosen = _quantize_choice(quantize, on_cpu, dtype)  # part in int8: "none", "head" or "int8" (all)
    if chosen:
        measured.append(chosen)
    if dtype is None:
        dtype, why = fast_cpu_dtype() if on_cpu else (torch.bfloat16, "bf16 on CUDA")
        measured.append(why)
    model = load_model(name, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision)
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter: folded into the weights, no extra matmuls per token
        model = model.merge_and_unload()
        measured.append("LoRA adapter merged")
    model = model.to(device).eval()
    if part != "none":
        from trainer.serve.quantize import calibration_ids, int8_layer_count, quantize_int8

        if part == "head":
            quantize_int8(model, head_only=True)
        else:
            quantize_int8(model, calibration=calibration_ids(tokenizer) if tokenizer is not None else None)
        measured.append(f"{int8_layer_count(model)} linear layers in int8")
    if onednn_for_one_token is None and on_cpu and dtype == torch.bfloat16:
        faster, why = one_token_faster_without_onednn()
        onednn_for_one_token = not faster
        measured.append(why)
    if onednn_for_one_token is False:
        _OneTokenStepsWithoutOneDNN(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if on_cpu and head is not None and part == "none":
        # generate() asks for the last position's logits only, a strided view of the hidden states; on the CPU a
        # bf16 linear layer over a non-contiguous input leaves oneDNN for a kernel ~200x slower (for Gemma's
        # 262k-word head ~0.9 s per prompt, ~6 s for a batch of 8; BENCHMARKS.md, "Serving"). A copy costs
        # nothing in comparison.
        head.register_forward_pre_hook(_contiguous_input)
    precision = (f"int8 weights, {str(dtype).removeprefix('torch.')} activations" if part == "int8" else
                 str(dtype).removeprefix("torch.") + (", int8 head" if part == "head" else ""))
    settings = f"{device}, {precision}" + (", one-token steps without oneDNN" if onednn_for_one_token is False else "")
    if quantize == "auto" and chosen:  # the start-up line says what auto chose and why
        settings += f" ({chosen})"
    logger.info("%s: %s (%s)", name, settings, "; ".join(measured) or "as asked")
    return model, settings


@dataclass
class ChatModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    settings: str = ""  # device, dtype and decode choices of load(), e.g. "cpu, bfloat16, one-token steps without oneDNN"
    base: str | None = None  # the base model, when `name` is a LoRA adapter
    # Extra generate() arguments for every answer (a benchmark sets min_new_tokens, cache_implementation, ...).
    generate_options: dict = field(default_factory=dict)
    last: GenerationStats = field(default_factory=GenerationStats)
    # One generation at a time: the UI queue and the OpenAI endpoint share one model.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, name: str = PROJECT_MODEL, template: str | None = None, device: str | None = None,
             trust_remote_code: bool = False, revision: str | None = None, dtype: torch.dtype | None = None,
             onednn_for_one_token: bool | None = None, quantize: str = "none") -> ChatModel:
        """`dtype` and `onednn_for_one_token` default to what is fastest here (see the module docstring);
        `quantize` (trainer/serve/quantize.py): "int8" (every linear layer and the head), "head" (the head only),
        "none", or "auto": the head where bf16 is fast, every layer where it is not, none where int8 is not faster
        (timed) and on CUDA."""
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
        if template:
            tokenizer.chat_template = chat_template_for(tokenizer, get_template(template))
        elif not tokenizer.chat_template:
            raise ModelError(f"{name} has no chat_template; pass a template ({', '.join(TEMPLATES)}).")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, settings = on_torch_thread(
            _load_model_for_speed, name, device, dtype, onednn_for_one_token, trust_remote_code, revision, quantize, tokenizer)
        return cls(model, tokenizer, name, settings=settings, base=adapter_base(resolve(name)))

    @property
    def context_length(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)

    def bounded_new_tokens(self, max_new_tokens) -> int:
        """Bounded by the server limit and by half the context, so a prompt always has room."""
        return max(1, min(int(max_new_tokens), MAX_NEW_TOKENS, self.context_length // 2))

    def prompt(self, message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS) -> tuple[str, int, int]:
        """(prompt text, its token count, history turns dropped) so that prompt + answer fit the context.

        The oldest user/assistant turns go first; a system message stays."""
        check_length(message)
        history = list(history or [])
        system = [m for m in history[:1] if m["role"] == "system"]
        turns = history[len(system):]
        budget = self.context_length - max_new_tokens
        dropped = 0
        while True:
            messages = [*system, *turns, {"role": "user", "content": message}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n <= budget:
                return text, n, dropped
            if not turns:
                raise InputError(
                    f"The message needs {n} tokens, more than the {budget} left in this model's "
                    f"{self.context_length}-token context after {max_new_tokens} new tokens. Shorten it."
                )
            turns = turns[2:] if len(turns) >= 2 else []  # one user/assistant pair at a time
            dropped += 1

    def stream(self, message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               stats: GenerationStats | None = None):
        """Yield the growing answer text. temperature 0 = greedy. Closing the generator stops generation.

        `stats`, if given, is filled in when the answer ends: the request's own numbers even when other
        requests run meanwhile (`self.last` is only the latest answer's)."""
        max_new_tokens = self.bounded_new_tokens(max_new_tokens)
        text, prompt_tokens, dropped = self.prompt(message, history, max_new_tokens)
        generation = self._generation(text, max_new_tokens, temperature, top_p, repetition_penalty)
        with self.lock:
            generation.start()
            try:
                yield from generation.texts()
            finally:
                # Reached on completion, on a marker, and when the reader closes us (stop button).
                generation.stop_and_wait()
                self.last = generation.stats(prompt_tokens, dropped, self.tokenizer.eos_token_id)
                if stats is not None:
                    stats.__dict__.update(self.last.__dict__)
        if generation.error is not None:
            raise generation.error

    def _generation(self, text: str, max_new_tokens: int, temperature: float, top_p: float,
                    repetition_penalty: float) -> _Generation:
        """The generate() call that answers a prompt text, not started yet."""
        # The template already holds any BOS text, so the tokenizer must not add another.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        options = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, pad_token_id=self._pad_token_id,
                       eos_token_id=self.tokenizer.eos_token_id, **sampling_options(temperature, top_p))
        return _Generation(self.model, self.tokenizer, inputs, {**options, **self.generate_options})

    @property
    def _pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def answer(self, message: str, history: list[dict] | None = None, **kwargs) -> str:
        return last_text(self.stream(message, history, **kwargs))

    def answer_batch(self, conversations: list[list[dict]], max_new_tokens: int = DEFAULT_NEW_TOKENS) -> list[tuple[str, str]]:
        """Greedy answers to several conversations (each ends with a user message) in one generate() call,
        left-padded: (text, finish) per conversation, finish being "eos", "marker" or "length". For
        evaluation, where a batch decodes several times faster than one answer after another; the
        answers equal one-at-a-time greedy ones up to the rounding that padding brings."""
        max_new_tokens = self.bounded_new_tokens(max_new_tokens)
        texts = [self.prompt(c[-1]["content"], c[:-1], max_new_tokens)[0] for c in conversations]
        tok, pad = self.tokenizer, self._pad_token_id
        inputs = left_padded(tok(texts, add_special_tokens=False)["input_ids"], pad, self.model.device)

        def run():
            with torch.inference_mode():
                return self.model.generate(**inputs, max_new_tokens=max_new_tokens, repetition_penalty=GREEDY["repetition_penalty"],
                                           **sampling_options(GREEDY["temperature"], GREEDY["top_p"]), pad_token_id=pad,
                                           eos_token_id=tok.eos_token_id)

        with self.lock:
            ids = on_torch_thread(run)[:, inputs["input_ids"].shape[1]:].tolist()
        results = []
        for row in ids:
            finish = "length"
            if tok.eos_token_id in row:
                row, finish = row[: row.index(tok.eos_token_id)], "eos"
            text = tok.decode(row, skip_special_tokens=True)
            cut = _cut_at_marker(text)
            results.append((cut, "marker") if cut is not None else (text.strip(), finish))
        return results


class _Generation:
    """One streamed generate() call: run on hw.TORCH_THREAD, read as text by the caller while it runs."""

    def __init__(self, model: torch.nn.Module, tokenizer, inputs, options: dict):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.model = model
        self.prompt_length = int(inputs["input_ids"].shape[1])
        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop = threading.Event()
        # No stop_strings: texts() cuts the answer at a marker and `stop` then ends generation a few tokens
        # later; HF's StopStringCriteria re-scans the whole vocabulary on every call, i.e. for every token.
        self.kwargs = {**inputs, "streamer": self.streamer,
                       "stopping_criteria": StoppingCriteriaList([_StopOnEvent(self.stop)]), **options}
        self.ids: torch.Tensor | None = None
        self.error: Exception | None = None
        self.ending: str | None = None  # "marker" or "exhausted", set before the last text; None if the reader left
        self.started = self.seconds = 0.0
        self.seconds_to_first_token: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()
        self.future = hw.TORCH_THREAD.submit(self._run)

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self.ids = self.model.generate(**self.kwargs)
        except Exception as e:  # raised by stream() once reading ends, not lost in the thread
            self.error = e
            self.streamer.end()

    def texts(self):
        """The answer as the streamer releases it, shown as `visible_texts` shows it."""
        yield from visible_texts(self._growing(), lambda ending: setattr(self, "ending", ending))

    def _growing(self):
        answer = ""
        for piece in self.streamer:
            if self.seconds_to_first_token is None:
                self.seconds_to_first_token = time.perf_counter() - self.started
            answer += piece
            yield answer

    def stop_and_wait(self) -> None:
        """End generation within a step (if it still runs) and wait for it."""
        self.stop.set()
        self.future.result()
        self.seconds = time.perf_counter() - self.started

    def stats(self, prompt_tokens: int, history_turns_dropped: int, eos_token_id) -> GenerationStats:
        new_tokens = 0 if self.ids is None else int(self.ids.shape[1] - self.prompt_length)
        last = None if self.ids is None or new_tokens == 0 else int(self.ids[0, -1])
        finish = ("marker" if self.ending == "marker" else "stopped" if self.ending is None else
                  "eos" if last == eos_token_id else "length")
        return GenerationStats(prompt_tokens=prompt_tokens, new_tokens=new_tokens, finish=finish,
                               history_turns_dropped=history_turns_dropped,
                               seconds_to_first_token=self.seconds_to_first_token, seconds=self.seconds)


def sampling_options(temperature: float, top_p: float) -> dict:
    """generate() options for a temperature (0 = greedy) and top_p."""
    return dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)


def left_padded(encoded: list[list[int]], pad: int, device) -> dict:
    """input_ids and attention_mask of several prompts padded on the left, so every row's next token comes
    right after its own prompt."""
    width = max(map(len, encoded))
    return {"input_ids": torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device),
            "attention_mask": torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)}


def visible_texts(growing, ended):
    """What a reader sees of a growing answer (each item of `growing` is the whole answer so far): cut at a stop
    marker, which ends the reading, and holding back a tail that may be the start of one; at the end the whole
    answer. `ended("marker" | "exhausted")` is called before the last text, so a reader that stops there has
    still seen why the answer ended. One home for ChatModel, BatchedChat and RemoteChat."""
    answer = ""
    for answer in growing:
        shortened = _cut_at_marker(answer)
        if shortened is not None:
            ended("marker")
            yield shortened
            return
        visible = _without_marker_start(answer)
        if visible:
            yield visible
    ended("exhausted")
    yield answer


def last_text(texts) -> str:
    """The last of a stream of growing texts, the stream read to its end ("" if it yielded none)."""
    last = collections.deque(texts, maxlen=1)
    return last[0] if last else ""


def _without_marker_start(text: str) -> str:
    """Hold back a tail that may be the start of a marker ("##"), so what was shown stays a prefix."""
    for marker in STOP_MARKERS:
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:n]):
                text = text[:-n]
                break
    return text


def _cut_at_marker(text: str) -> str | None:
    positions = [i for i in (text.find(m) for m in STOP_MARKERS) if i >= 0]
    return text[: min(positions)].rstrip() if positions else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer one question with a chat model.")
    parser.add_argument("question")
    parser.add_argument("--model", default=PROJECT_MODEL)
    parser.add_argument("--template", choices=list(TEMPLATES), default=None)
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_NEW_TOKENS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        chat = ChatModel.load(args.model, args.template)
        print(chat.answer(args.question, max_new_tokens=args.max_new_tokens))
    except (ModelError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
