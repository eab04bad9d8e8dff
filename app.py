"""Gradio chat demo + OpenAI-compatible API. Loading and generation live in trainer/serve/.

    python app.py [--model alpaca-medis-270m | smollm2-135m | out/ | out-lora/ | user/repo] [--template alpaca-id]
                  [--host 127.0.0.1] [--port 7860]
    python app.py --backend http://gpu-box:8000/v1     # the page and /v1 in front of an OpenAI-compatible engine
    python app.py --host 0.0.0.0 --api_key_file keys.txt --auth_file logins.txt   # for a team: a key for /v1, a login

The model comes from --model, else $MODEL_ID, else `config.yaml` beside this file (a Space's
config), else the project's own alpaca-medis-270m (models/alpaca-medis-270m: a LoRA adapter on the
embedded Gemma 3 270M base). Chat from code with gradio_client
(`Client(url).predict(message, api_name="/ask")`; `/chat` keeps a conversation), any OpenAI client at
`{url}/v1`, or an MCP client at `{url}/gradio_api/mcp/sse` (the tool `ask_health_question`). 👍/👎 in the
page (or `/rate`) append ratings to --feedback_file, and push them to $FEEDBACK_REPO on a Space
(trainer/serve/feedback.py). --api_key puts /v1 behind a key, --auth the page, its API and MCP server behind a
login (trainer/serve/access.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import gradio as gr
import yaml

from trainer.defaults import DISCLAIMER, GENERATION, MAX_INPUT_CHARS, QUANTIZE_CHOICES
from trainer.models import EMBEDDED, PROJECT_MODEL, ModelError
from trainer.prompts import TEMPLATES
from trainer.serve import zerogpu
from trainer.serve.access import OPEN, Access, AccessError
from trainer.serve.batching import MAX_BATCH, MAX_WAITING, BatchedChat
from trainer.serve.feedback import (
    MAX_CORRECTION_CHARS,
    SETTINGS,
    FeedbackError,
    FeedbackStore,
    Ratings,
    plain_messages,
    text_of,
)
from trainer.serve.inference import MAX_NEW_TOKENS, BusyError, ChatModel, InputError, last_text
from trainer.serve.openai_api import router
from trainer.serve.redflags import with_notice

HERE = Path(__file__).parent
SAMPLE = HERE / "data" / "sample.jsonl"
logger = logging.getLogger(__name__)
DEFAULTS = {"model": PROJECT_MODEL, "template": None, **GENERATION, "trust_remote_code": False, "revision": None,
            "quantize": "auto"}
# Requests waiting in the page's queue, questions and ratings alike (Gradio has one size for all): MAX_WAITING
# questions, and as much room again for a burst of ratings, which pass through the queue too (50 at once from one
# client reach ~35 waiting).
QUEUE_SIZE = 2 * MAX_WAITING
RATINGS_NOTE = ("*👍/👎 disimpan untuk memperbaiki model: percakapan sampai jawaban itu, jawabannya, penilaian, koreksi, "
                "pengaturan, nama model dan waktu; tanpa alamat IP, cookie atau sesi. (Ratings are stored to improve "
                "the model: the conversation up to the answer, the answer, the rating, the correction, the settings, "
                "the model and the time; no IP address, cookie or session.)*")


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


def mcp_available() -> bool:
    """Whether the `mcp` package (gradio[mcp]) is installed; without it the page runs without its MCP server."""
    return importlib.util.find_spec("mcp") is not None


def build_demo(chat: ChatModel, config: dict = DEFAULTS, ratings: Ratings | None = None, login: bool = False) -> gr.ChatInterface:
    def respond(message, history, max_new_tokens, temperature, top_p, repetition_penalty):
        try:
            # A red flag in the message puts the emergency notice above the answer, whatever the model says.
            yield from with_notice(message, chat.stream(message, plain_messages(history), max_new_tokens=max_new_tokens,
                                                        temperature=temperature, top_p=top_p,
                                                        repetition_penalty=repetition_penalty))
        except (InputError, BusyError) as e:  # the message says what to do (shorten it, retry shortly)
            raise gr.Error(str(e)) from None
        except Exception as e:  # shown in the UI; the server keeps serving
            raise gr.Error(f"Generation failed: {type(e).__name__}: {e}") from None

    def ask_health_question(message: str, max_new_tokens: int = config["max_new_tokens"],
                            temperature: float = config["temperature"], top_p: float = config["top_p"],
                            repetition_penalty: float = config["repetition_penalty"]) -> str:
        """Answer a health question in Indonesian with alpaca-medis, a small language model fine-tuned on
        Indonesian doctor-patient conversations. NOT medical advice: its answers are short, often incomplete and
        may be wrong; it cannot examine anyone. When the question describes a red flag (chest pain, signs of a
        stroke, trouble breathing, heavy bleeding, thoughts of suicide, ...) the answer starts with a notice to go
        to the emergency room (IGD) or call an ambulance (119 or 112): pass that on first. Each call is a new
        conversation: put everything that matters into the question.

        Args:
            message: the question, in Indonesian (up to MAX_INPUT_CHARS characters), e.g. "Anak saya demam 3 hari, kapan harus ke dokter?"
            max_new_tokens: the longest answer, in tokens (about 3/4 of a word each)
            temperature: 0 answers greedily (the same answer every time); higher samples more varied answers
            top_p: nucleus sampling: only the most likely tokens covering this probability are sampled
            repetition_penalty: above 1 discourages repeating words (1.1 keeps the small model from looping)
        """
        return last_text(respond(message, [], max_new_tokens, temperature, top_p, repetition_penalty))

    ask_health_question.__doc__ = ask_health_question.__doc__.replace("MAX_INPUT_CHARS", str(MAX_INPUT_CHARS))

    sliders = [
        gr.Slider(1, MAX_NEW_TOKENS, value=config["max_new_tokens"], step=1, label="max_new_tokens"),
        gr.Slider(0.0, 1.5, value=config["temperature"], step=0.05, label="temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=config["top_p"], step=0.05, label="top_p"),
        gr.Slider(1.0, 2.0, value=config["repetition_penalty"], step=0.05, label="repetition_penalty"),
    ]
    demo = gr.ChatInterface(
        zerogpu.gpu(respond, max_new_tokens_arg=2),
        title=f"alpaca-medis · {chat.name}",
        description=f"{DISCLAIMER}\n\n{model_line(chat)}",
        examples=[[q] for q in example_questions()],
        cache_examples=False,
        additional_inputs=sliders,
        additional_inputs_accordion=gr.Accordion("Pengaturan (generation settings)", open=False),
        textbox=gr.Textbox(placeholder="Tulis pertanyaan kesehatan Anda…", max_length=MAX_INPUT_CHARS, submit_btn=True, stop_btn=True),
        chatbot=gr.Chatbot(feedback_options=("Like", "Dislike") if ratings else None, scale=1),
        # /chat keeps a conversation per client session: callable, but undocumented, so that it is no MCP tool
        # (Gradio's MCP server shares one session between all tool calls); /ask is the tool.
        api_name="chat",
        api_visibility="undocumented",
    )
    with demo:
        # Behind a login /ask runs outside the queue: Gradio's MCP server calls a queued tool through an HTTP client of
        # its own, which cannot log in, and an unqueued one directly. The model's own limits still hold (--max_waiting).
        gr.api(zerogpu.gpu(ask_health_question, max_new_tokens_arg=1), api_name="ask", queue=not login)
        if ratings:
            add_ratings(demo, sliders, ratings, config)
    return demo


def add_ratings(demo: gr.ChatInterface, sliders: list, ratings: Ratings, config: dict) -> None:
    """👍/👎 on each answer, an optional correction sent with it, and the /rate API endpoint."""
    correction = gr.Textbox(label="Koreksi (opsional) · correction (optional)", lines=2, max_lines=8,
                            max_length=MAX_CORRECTION_CHARS, placeholder="Jawaban yang lebih tepat: tulis dulu, lalu "
                            "tekan 👎 (atau 👍) pada jawabannya. · The better answer: write it, then rate the answer.")
    status = gr.Markdown(RATINGS_NOTE)

    def rate(messages, answer, rating, text, settings) -> dict:
        try:
            return ratings.rate(messages, answer, rating, text, settings)
        except FeedbackError as e:  # the caller's mistake: a message for them, no traceback in the log
            raise gr.Error(str(e), print_exception=False) from None
        except OSError as e:
            logger.exception("feedback: a rating was not stored")
            raise gr.Error(f"Penilaian tidak tersimpan (rating not saved): {type(e).__name__}. Coba lagi.") from None

    def rate_in_page(value: list, text: str, max_new_tokens, temperature, top_p, repetition_penalty, like: gr.LikeData):
        if like.liked not in (True, False):  # a thumb clicked off: the rating already stored stays
            return gr.skip(), gr.skip()
        index = like.index if isinstance(like.index, int) else like.index[0]
        settings = dict(zip(SETTINGS, (max_new_tokens, temperature, top_p, repetition_penalty)))
        answer = text_of(value[index]["content"]) if 0 <= index < len(value) else ""
        record = rate(value[:index], answer, "like" if like.liked else "dislike", text, settings)
        saved = ("👍" if like.liked else "👎") + (" + koreksi (correction)" if record["correction"] else "")
        return "", f"✓ Penilaian tersimpan · rating saved: {saved}\n\n{RATINGS_NOTE}"

    def rate_answer(messages: list | str, answer: str, rating: str, correction: str | None = None,
                    settings: dict | None = None) -> str:
        """Rate an answer of this model: messages = the conversation up to the answer (or the question alone),
        rating = "like" or "dislike", correction = a better answer or null, settings = the generation settings
        (default: the page's). Returns the rating's id once it is stored."""
        return rate(messages, answer, rating, correction, settings or {k: config[k] for k in SETTINGS})["id"]

    # No concurrency limit: a rating never waits for an answer slot (the chat's limit is the model's batch) nor
    # sits in the queue beside waiting questions; each is a millisecond append, serialized by the store's lock.
    demo.chatbot.like(rate_in_page, [demo.chatbot, correction, *sliders], [correction, status],
                      api_visibility="private", concurrency_limit=None)
    # Undocumented: callable with gradio_client (api_name="/rate"), and not an MCP tool (only /ask is one).
    gr.api(rate_answer, api_name="rate", api_visibility="undocumented", concurrency_limit=None)


def build_app(chat: ChatModel, config: dict = DEFAULTS, ratings: Ratings | None = None, access: Access = OPEN):
    """One FastAPI server: the Gradio UI at / (its MCP server at /gradio_api/mcp/sse) and the OpenAI API at /v1,
    each open or behind `access`'s login and keys."""
    from fastapi import FastAPI

    # FastAPI's own /docs, /redoc and /openapi.json describe /v1 to whoever asks: not to strangers when the server
    # has keys or logins.
    private = access.keys is not None or access.logins is not None
    app = FastAPI(title="alpaca-medis", **(dict(docs_url=None, redoc_url=None, openapi_url=None) if private else {}))
    if access.api_served:
        app.include_router(router(chat, access))
    # As many page requests at once as the model batches (1 for a plain ChatModel, which answers one at a time).
    demo = build_demo(chat, config, ratings, login=bool(access.logins)).queue(
        default_concurrency_limit=getattr(chat, "max_batch", 1), max_size=QUEUE_SIZE)
    app = gr.mount_gradio_app(app, demo, path="/", mcp_server=mcp_available(), **access.gradio_kwargs())
    if demo.mcp_error:
        logger.warning("%s; the page runs without it", demo.mcp_error)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help=f"default: $MODEL_ID, config.yaml, or {PROJECT_MODEL}")
    parser.add_argument("--template", choices=list(TEMPLATES), default=None, help="override the model's chat_template")
    # Hugging Face Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the demo stays on loopback.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="answer through this OpenAI-compatible server (vLLM, transformers serve, ...) instead of "
                             "loading a model, e.g. http://gpu-box:8000/v1; key from $BACKEND_API_KEY or $OPENAI_API_KEY")
    parser.add_argument("--max_batch", type=int, default=int(os.environ.get("MAX_BATCH", MAX_BATCH)),
                        help="answers generated together (1 = one at a time); more wait, up to --max_waiting")
    parser.add_argument("--max_waiting", type=int, default=MAX_WAITING, help="requests waiting beyond that are refused (HTTP 429)")
    parser.add_argument("--backend_model", default=None, metavar="NAME", help="the --backend model (default: the first it lists)")
    parser.add_argument("--api_key", default=None, metavar="KEY",
                        help="/v1 wants `Authorization: Bearer KEY` (several keys comma-separated; default $API_KEY). "
                             "On a Space /v1 runs only with a key")
    parser.add_argument("--api_key_file", default=None, metavar="PATH", help="more keys, one per line")
    parser.add_argument("--auth", action="append", default=None, metavar="USER:PASSWORD",
                        help="the page, its Gradio API and MCP server want this login (repeatable; default $GRADIO_AUTH)")
    parser.add_argument("--auth_file", default=None, metavar="PATH", help="more logins, USER:PASSWORD one per line")
    parser.add_argument("--max_waiting_per_key", type=int, default=None,
                        help="with several keys, requests one key may have waiting or being answered; more get HTTP 429 "
                             "(default: a quarter of --max_waiting)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="int8 weights (README, The demo): int8 = every linear layer and the head (3x fp32's decode speed), "
                             "head = the output head only (keeps the model's answers), none; auto = head where bf16 is fast, "
                             "int8 where it is not, none where int8 is not faster (timed at load) or on CUDA. "
                             "Default: $QUANTIZE, config.yaml, or auto")
    parser.add_argument("--feedback_file", default=None, metavar="PATH",
                        help="where the page's 👍/👎 ratings are appended (JSON Lines, trainer/preferences.py); default "
                             "$ALPACA_MEDIS_HOME/feedback/ratings.jsonl. With $FEEDBACK_REPO (a Hub dataset) they are also "
                             "pushed there every $FEEDBACK_EVERY_MINUTES (5)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    try:
        access = Access.from_flags(args.api_key, args.api_key_file, args.auth, args.auth_file, args.max_waiting_per_key,
                                   max_waiting=args.max_waiting)
    except AccessError as e:
        raise SystemExit(f"error: {e}") from None
    args.api_key = args.auth = None  # the Namespace's repr would show them; `access` holds their digests
    if warning := access.warning(args.host, args.port):
        print(warning, file=sys.stderr, flush=True)
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
    store = FeedbackStore.from_env(args.feedback_file)
    ratings = Ratings(store, chat, config["revision"])
    where = f"ratings in {store.path}" + (f" (pushed to the dataset {store.repo_id})" if store.repo_id else "")
    if zerogpu.available():
        # ZeroGPU lends its GPU to Gradio requests only, so the page runs as Gradio launches it and the
        # /v1 API (whose calls carry no visitor quota) is not served.
        # MCP tool calls are Gradio requests too (gradio/mcp.py calls /ask through the queue, or directly behind a
        # login), so ZeroGPU serves them.
        print(f"alpaca-medis: {model} ({chat.settings}) on ZeroGPU; chat on http://{args.host}:{args.port}; {where}; "
              f"page: {'login' if access.logins else 'no login'}")
        build_demo(chat, config, ratings, login=bool(access.logins)).queue(max_size=QUEUE_SIZE).launch(
            server_name=args.host, server_port=args.port, mcp_server=mcp_available(), **access.gradio_kwargs())
        return
    import uvicorn

    url = f"http://{args.host}:{args.port}"
    links = [f"OpenAI API: {url}/v1"] * access.api_served + [f"MCP: {url}/gradio_api/mcp/sse"] * mcp_available()
    print(f"alpaca-medis: {model} ({chat.settings}), chat on {url}" + (f"  ({', '.join(links)})" if links else "")
          + f"; {where}; {access.describe()}", flush=True)
    uvicorn.run(build_app(chat, config, ratings, access), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
