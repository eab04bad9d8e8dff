"""Load a chat model and stream answers: the generation path behind app.py.

    python -m trainer.inference --model out "Apa gejala demam berdarah?"

The prompt is the model's own `chat_template` (training saves the Alpaca template there); a
model trained elsewhere can be given a template by name with `template=`.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass

import torch

from trainer.models import DEFAULT_MODEL, ModelError, load_model, load_tokenizer
from trainer.prompts import TEMPLATES, chat_template_for, get_template

# Markers a model may produce when it starts a new turn by itself; the answer ends there.
STOP_MARKERS = tuple(dict.fromkeys(m for t in TEMPLATES.values() for m in t.stop_markers))


@dataclass
class ChatModel:
    model: torch.nn.Module
    tokenizer: object
    name: str

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, template: str | None = None, device: str | None = None) -> "ChatModel":
        tokenizer = load_tokenizer(name)
        if template:
            tokenizer.chat_template = chat_template_for(tokenizer, get_template(template))
        elif not tokenizer.chat_template:
            raise ModelError(f"{name} has no chat_template; pass a template ({', '.join(TEMPLATES)}).")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp32 on CPU: bf16 is ~6x slower to the first token on CPUs without bf16 matmul units.
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = load_model(name, dtype=dtype).to(device).eval()
        return cls(model, tokenizer, name)

    def prompt(self, message: str, history: list[dict] | None = None) -> str:
        messages = [*(history or []), {"role": "user", "content": message}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def stream(self, message: str, history: list[dict] | None = None, max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0):
        """Yield the growing answer text. temperature 0 = greedy."""
        from transformers import TextIteratorStreamer

        text = self.prompt(message, history)
        # The template already holds any BOS text, so the tokenizer must not add another.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        kwargs = dict(
            **inputs, streamer=streamer, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
            eos_token_id=self.tokenizer.eos_token_id, stop_strings=list(STOP_MARKERS), tokenizer=self.tokenizer,
            **sampling,
        )
        errors = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except Exception as e:  # surfaced to the caller below, not lost in the thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        answer = ""
        for piece in streamer:
            answer += piece
            cut = _cut_at_marker(answer)
            if cut is not None:
                yield cut
                break
            yield answer
        thread.join()
        if errors:
            raise errors[0]

    def answer(self, message: str, history: list[dict] | None = None, **kwargs) -> str:
        text = ""
        for text in self.stream(message, history, **kwargs):
            pass
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
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(chat.answer(args.question, max_new_tokens=args.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
