"""Load a chat model and stream answers: the generation path behind app.py and its OpenAI API.

    python -m trainer.inference --model out "Apa gejala demam berdarah?"

The prompt is the model's own `chat_template` (training saves the Alpaca template there); a
model trained elsewhere can be given a template by name with `template=`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from trainer.models import DEFAULT_MODEL, ModelError, load_model, load_tokenizer
from trainer.prompts import TEMPLATES, chat_template_for, get_template

# Markers a model may produce when it starts a new turn by itself; the answer ends there.
STOP_MARKERS = tuple(dict.fromkeys(m for t in TEMPLATES.values() for m in t.stop_markers))
MAX_INPUT_CHARS = 4000  # one message; longer input is refused with a message, not truncated silently
MAX_NEW_TOKENS = 1024


class InputError(ValueError):
    """A request the model cannot serve as asked; the message says why, for the user to read."""


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


@dataclass
class ChatModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    last: GenerationStats = field(default_factory=GenerationStats)
    # One generation at a time: the UI queue and the OpenAI endpoint share one model.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, template: str | None = None, device: str | None = None,
             trust_remote_code: bool = False, revision: str | None = None) -> "ChatModel":
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
        if template:
            tokenizer.chat_template = chat_template_for(tokenizer, get_template(template))
        elif not tokenizer.chat_template:
            raise ModelError(f"{name} has no chat_template; pass a template ({', '.join(TEMPLATES)}).")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp32 on CPU: bf16 is ~6x slower to the first token on CPUs without bf16 matmul units.
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = load_model(name, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision).to(device).eval()
        return cls(model, tokenizer, name)

    @property
    def context_length(self) -> int:
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)

    def prompt(self, message: str, history: list[dict] | None = None, max_new_tokens: int = 256) -> tuple[str, int, int]:
        """(prompt text, its token count, history turns dropped) so that prompt + answer fit the context.

        The oldest user/assistant turns go first; a system message stays."""
        if len(message) > MAX_INPUT_CHARS:
            raise InputError(f"The message has {len(message)} characters; the limit is {MAX_INPUT_CHARS}. Shorten it.")
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

    def stream(self, message: str, history: list[dict] | None = None, max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0):
        """Yield the growing answer text. temperature 0 = greedy. Closing the generator stops generation."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        # Bounded by the server limit and by half the context, so a prompt always has room.
        max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS, self.context_length // 2))
        text, prompt_tokens, dropped = self.prompt(message, history, max_new_tokens)
        # The template already holds any BOS text, so the tokenizer must not add another.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs = dict(
            **inputs, streamer=streamer, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
            pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, stop_strings=list(STOP_MARKERS),
            tokenizer=self.tokenizer, stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), **sampling,
        )
        outcome: dict = {}

        def run():
            try:
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(**kwargs)
            except Exception as e:  # surfaced to the caller below, not lost in the thread
                outcome["error"] = e
                streamer.end()

        stats = GenerationStats(prompt_tokens=prompt_tokens, history_turns_dropped=dropped)
        with self.lock:
            start = time.perf_counter()
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            answer, cut, exhausted = "", False, False
            try:
                for piece in streamer:
                    if stats.seconds_to_first_token is None:
                        stats.seconds_to_first_token = time.perf_counter() - start
                    answer += piece
                    shortened = _cut_at_marker(answer)
                    if shortened is not None:
                        answer, cut = shortened, True
                        yield answer
                        break
                    visible = _without_marker_start(answer)
                    if visible:
                        yield visible
                else:
                    exhausted = True
                    yield answer
            finally:
                # Reached on completion, on a marker, and when the reader closes us (stop button).
                user_stopped = not cut and not exhausted
                stop.set()
                thread.join()
                ids = outcome.get("ids")
                stats.new_tokens = 0 if ids is None else int(ids.shape[1] - inputs["input_ids"].shape[1])
                last = None if ids is None or stats.new_tokens == 0 else int(ids[0, -1])
                stats.finish = ("marker" if cut else "stopped" if user_stopped else
                                "eos" if last == self.tokenizer.eos_token_id else "length")
                stats.seconds = time.perf_counter() - start
                self.last = stats
        if "error" in outcome:
            raise outcome["error"]

    def answer(self, message: str, history: list[dict] | None = None, **kwargs) -> str:
        text = ""
        for text in self.stream(message, history, **kwargs):
            pass
        return text


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer one question with a chat model.")
    parser.add_argument("question")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--template", choices=list(TEMPLATES), default=None)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        chat = ChatModel.load(args.model, args.template)
        print(chat.answer(args.question, max_new_tokens=args.max_new_tokens))
    except (ModelError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
