"""Gradio chat demo. Loading and generation live in trainer/inference.py; this file is the UI.

    python app.py [--model smollm2-135m | out/ | user/repo] [--host 127.0.0.1] [--port 7860]

The model can also be set with the MODEL_ID environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import gradio as gr

from trainer.inference import ChatModel
from trainer.models import DEFAULT_MODEL, ModelError
from trainer.prompts import TEMPLATES

DISCLAIMER = (
    "**Bukan pengganti dokter.** Jawaban dibuat oleh model bahasa dan bisa salah. "
    "Untuk keadaan darurat atau keluhan serius, segera hubungi tenaga kesehatan. "
    "*(Not a substitute for a doctor.)*"
)
SAMPLE = Path(__file__).parent / "data" / "sample.jsonl"


def example_questions(n: int = 4) -> list[str]:
    """Patient questions from our own sample data (its empty-input records)."""
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["instruction"] for r in records if not r["input"]][:n]


def build_demo(chat: ChatModel) -> gr.ChatInterface:
    def respond(message, history, max_new_tokens, temperature):
        turns = [{"role": m["role"], "content": m["content"]} for m in history if isinstance(m.get("content"), str)]
        yield from chat.stream(message, turns, max_new_tokens=int(max_new_tokens), temperature=float(temperature))

    return gr.ChatInterface(
        respond,
        title="alpaca-medis",
        description=f"Model: `{chat.name}`\n\n{DISCLAIMER}",
        examples=[[q] for q in example_questions()],
        additional_inputs=[
            gr.Slider(16, 512, value=256, step=16, label="max_new_tokens"),
            gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)"),
        ],
        api_name="chat",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL_ID", DEFAULT_MODEL))
    parser.add_argument("--template", choices=list(TEMPLATES), default=None, help="override the model's chat_template")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    try:
        chat = ChatModel.load(args.model, args.template)
    except ModelError as e:
        raise SystemExit(f"error: {e}") from None
    build_demo(chat).queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
