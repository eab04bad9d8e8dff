"""Gradio chat demo + OpenAI-compatible API. Loading and generation live in trainer/serve/.

    python app.py [--model alpaca-medis-270m | smollm2-135m | out/ | out-lora/ | user/repo] [--template alpaca-id]
                  [--host 127.0.0.1] [--port 7860]
    python app.py --backend http://gpu-box:8000/v1     # the page and /v1 in front of an OpenAI-compatible engine

The model comes from --model, else $MODEL_ID, else `config.yaml` beside this file (a Space's
config), else the project's own alpaca-medis-270m (models/alpaca-medis-270m: a LoRA adapter on the
embedded Gemma 3 270M base). Chat from code with gradio_client
(`Client(url).predict(message, api_name="/chat")`) or any OpenAI client at `{url}/v1`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import gradio as gr
import yaml

from trainer.models import EMBEDDED, PROJECT_MODEL, ModelError
from trainer.prompts import TEMPLATES
from trainer.serve import zerogpu
from trainer.serve.batching import BatchedChat
from trainer.serve.defaults import DISCLAIMER, GENERATION, QUANTIZE_CHOICES
from trainer.serve.inference import MAX_NEW_TOKENS, BusyError, ChatModel, InputError
from trainer.serve.openai_api import router
from trainer.serve.redflags import strip_notice, with_notice

HERE = Path(__file__).parent
SAMPLE = HERE / "data" / "sample.jsonl"
DEFAULTS = {"model": PROJECT_MODEL, "template": None, **GENERATION, "trust_remote_code": False, "revision": None,
            "quantize": "auto"}


def load_config(path: Path = HERE / "config.yaml") -> dict:
    """Defaults, updated by a Space's config.yaml when there is one."""
    config = dict(DEFAULTS)
    if path.exists():
        config.update(yaml.safe_load(path.read_text()) or {})
    return config


def example_questions(n: int = 4) -> list[str]:
    """Patient questions from our own sample data (its empty-input records)."""
    records = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["instruction"] for r in records if not r["input"]][:n]


def model_line(chat: ChatModel) -> str:
    """The model the page serves, its base, and the base's license when it carries terms of its own."""
    line = f"Model: `{chat.name}`"
    if chat.base:
        spec = EMBEDDED.get(chat.base)
        line += f" (LoRA adapter on `{chat.base}`" + (f", {spec.hub_id}; {spec.license_name}" if spec else "") + ")"
    return line


def build_demo(chat: ChatModel, config: dict = DEFAULTS) -> gr.ChatInterface:
    def respond(message, history, max_new_tokens, temperature, top_p, repetition_penalty):
        turns = [{"role": m["role"], "content": strip_notice(m["content"]) if m["role"] == "assistant" else m["content"]}
                 for m in history if isinstance(m.get("content"), str)]
        try:
            # A red flag in the message puts the emergency notice above the answer, whatever the model says.
            yield from with_notice(message, chat.stream(message, turns, max_new_tokens=max_new_tokens,
                                                        temperature=temperature, top_p=top_p,
                                                        repetition_penalty=repetition_penalty))
        except (InputError, BusyError) as e:  # the message says what to do (shorten it, retry shortly)
            raise gr.Error(str(e)) from None
        except Exception as e:  # shown in the UI; the server keeps serving
            raise gr.Error(f"Generation failed: {type(e).__name__}: {e}") from None

    return gr.ChatInterface(
        zerogpu.gpu(respond, max_new_tokens_arg=2),
        title=f"alpaca-medis · {chat.name}",
        description=f"{DISCLAIMER}\n\n{model_line(chat)}",
        examples=[[q] for q in example_questions()],
        cache_examples=False,
        additional_inputs=[
            gr.Slider(1, MAX_NEW_TOKENS, value=config["max_new_tokens"], step=1, label="max_new_tokens"),
            gr.Slider(0.0, 1.5, value=config["temperature"], step=0.05, label="temperature (0 = greedy)"),
            gr.Slider(0.05, 1.0, value=config["top_p"], step=0.05, label="top_p"),
            gr.Slider(1.0, 2.0, value=config["repetition_penalty"], step=0.05, label="repetition_penalty"),
        ],
        additional_inputs_accordion=gr.Accordion("Pengaturan (generation settings)", open=False),
        textbox=gr.Textbox(placeholder="Tulis pertanyaan kesehatan Anda…", max_length=4000, submit_btn=True, stop_btn=True),
        api_name="chat",
    )


def build_app(chat: ChatModel, config: dict = DEFAULTS):
    """One FastAPI server: the Gradio UI at / and the OpenAI-compatible API at /v1."""
    from fastapi import FastAPI

    app = FastAPI(title="alpaca-medis")
    app.include_router(router(chat))
    # As many page requests at once as the model batches (1 for a plain ChatModel, which answers one at a time).
    demo = build_demo(chat, config).queue(default_concurrency_limit=getattr(chat, "max_batch", 1), max_size=32)
    return gr.mount_gradio_app(app, demo, path="/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"default: $MODEL_ID, config.yaml, or {PROJECT_MODEL}")
    parser.add_argument("--template", choices=list(TEMPLATES), default=None, help="override the model's chat_template")
    # Hugging Face Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the demo stays on loopback.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="answer through this OpenAI-compatible server (vLLM, transformers serve, ...) instead of "
                             "loading a model, e.g. http://gpu-box:8000/v1; key from $BACKEND_API_KEY or $OPENAI_API_KEY")
    parser.add_argument("--max_batch", type=int, default=int(os.environ.get("MAX_BATCH", "8")),
                        help="answers generated together (1 = one at a time); more wait, up to --max_waiting")
    parser.add_argument("--max_waiting", type=int, default=32, help="requests waiting beyond that are refused (HTTP 429)")
    parser.add_argument("--backend_model", default=None, metavar="NAME", help="the --backend model (default: the first it lists)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="int8 weights (README, The demo): int8 = every linear layer and the head (3x fp32's decode speed), "
                             "head = the output head only (keeps the model's answers), none; auto = head where bf16 is fast, "
                             "int8 where it is not, none where int8 is not faster (timed at load) or on CUDA. "
                             "Default: $QUANTIZE, config.yaml, or auto")
    args = parser.parse_args()
    if zerogpu.available():
        import spaces  # noqa: F401  before the model loads: ZeroGPU places it on its (lent) GPU
    config = load_config()
    model = args.model or os.environ.get("MODEL_ID") or config["model"]
    try:
        if args.backend:  # the server answers; this one serves the page and /v1 in front of it
            from trainer.serve.remote import RemoteChat

            chat = RemoteChat.connect(args.backend, args.backend_model)
            model = chat.name
        else:
            quantize = args.quantize or os.environ.get("QUANTIZE") or config["quantize"]
            chat = ChatModel.load(model, args.template or config["template"], trust_remote_code=config["trust_remote_code"],
                                  revision=config["revision"], quantize=quantize)
            if not zerogpu.available() and args.max_batch > 1:  # ZeroGPU runs each answer in its own GPU call
                chat = BatchedChat(chat, max_batch=args.max_batch, max_waiting=args.max_waiting)
    except (ModelError, InputError) as e:  # InputError: remote.BackendError, the backend unreachable or refusing
        raise SystemExit(f"error: {e}") from None
    if zerogpu.available():
        # ZeroGPU lends its GPU to Gradio requests only, so the page runs as Gradio launches it and the
        # /v1 API (whose calls carry no visitor quota) is not served.
        print(f"alpaca-medis: {model} ({chat.settings}) on ZeroGPU; chat on http://{args.host}:{args.port}")
        build_demo(chat, config).queue(max_size=32).launch(server_name=args.host, server_port=args.port)
        return
    import uvicorn

    print(f"alpaca-medis: {model} ({chat.settings}), chat on http://{args.host}:{args.port}  "
          f"(OpenAI API: http://{args.host}:{args.port}/v1)")
    uvicorn.run(build_app(chat, config), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
