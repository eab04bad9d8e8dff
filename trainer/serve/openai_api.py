"""OpenAI-compatible endpoints for a ChatModel, served by app.py beside the Gradio UI.

    GET  /v1/models
    POST /v1/chat/completions      {"model": ..., "messages": [...], "stream": false|true,
                                    "max_tokens": 256, "temperature": 0, "top_p": 1}

Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused")`.
A system message becomes the Alpaca instruction and the user's message its input (see
trainer/prompts.py); earlier turns are history, cut from the oldest when the context is full.

With API keys (`router(chat, access)`, access.py) every route wants `Authorization: Bearer KEY`, the
OpenAI client's `api_key`, and with several keys each key may have `access.max_waiting_per_key` requests
waiting or being answered at once: one client cannot fill the queue that all share.

Every refused request gets OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`:
401 (`invalid_api_key`) for a missing or wrong key, checked before the body is read; 400 for a request
that cannot be served as sent (broken JSON, wrong types, values out of range, a message over
MAX_INPUT_CHARS, ...), 413 for a body over MAX_BODY_BYTES, 429 with `Retry-After` when the model's slots
and queue are full (BusyError) or the key has its share waiting, and 500 with a generic message, never a
traceback, for a failure of the server itself (the traceback goes to the log). Content may be a string or
OpenAI's list of text parts; unknown fields are ignored, as OpenAI clients send many.

The errors need nothing from the app: `router(chat, access)` is all app.py includes. /chat/completions reads
and validates its body itself instead of letting FastAPI do it, so FastAPI's own 422 `{"detail": ...}`
never occurs there, whatever the app's exception handlers are.

Waiting for the model (its lock, or a slot) happens on threads of this router's own pool, so requests
that wait can never take every thread from those that stream (Starlette's shared pool has 40).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import time
import uuid
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from trainer.serve.access import OPEN, Access, APIKeys, bearer
from trainer.serve.inference import (
    DEFAULT_NEW_TOKENS,
    MAX_INPUT_CHARS,
    MAX_NEW_TOKENS,
    BusyError,
    ChatModel,
    GenerationStats,
    InputError,
    last_text,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = DEFAULT_NEW_TOKENS  # max_tokens when a request names none
MAX_BODY_BYTES = 4 * 1024 * 1024  # far above any conversation the model's context can hold
# History is cut from the oldest to this many messages and to this many characters per context token
# before the prompt is built: more would never fit the context, and building the prompt tokenizes the
# whole history once per dropped turn, so an endless history would cost seconds of CPU.
MAX_HISTORY_MESSAGES = 64
HISTORY_CHARS_PER_TOKEN = 16
WAITING_THREADS = 64  # requests waiting for the model at once on threads; more wait without one

# Control characters are stripped from every message rather than refused: text pasted from PDFs or
# terminals carries stray ones (form feeds, escape sequences) that the user never sees and the model
# never met in training, so refusing would fail an honest question over an invisible character, and
# keeping them would only feed the model noise (and put raw escape sequences in logs). Tab, newline and
# carriage return stay. Lone UTF-16 surrogates (a JSON "\\ud800" escape) go too: no tokenizer can
# encode them.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
               dict: "an object", type(None): "null"}


class Message(BaseModel):
    role: str
    content: Any  # a string, a list of text parts or null; checked by _text() to name what is wrong


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """The fields we read; None means the default, as OpenAI clients send null for unset values."""

    model_config = ConfigDict(allow_inf_nan=False)  # unknown fields are ignored (pydantic's default)

    model: str | None = None  # any name is accepted: there is one model
    messages: list[Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Accepted for compatibility; repetition_penalty below is what we apply.
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)


class APIError(Exception):
    """A request refused with OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _server_error() -> APIError:
    return APIError("The server failed while answering; the error is in its log. Retry, or report it if it persists.",
                    status=500, type="server_error")


def router(chat: ChatModel, access: Access = OPEN) -> APIRouter:
    api = APIRouter(prefix="/v1")
    waiting = anyio.CapacityLimiter(WAITING_THREADS)
    shares = _Shares(access.max_waiting_per_key)

    @api.get("/models")
    def models(request: Request):
        try:
            _caller(access.keys, request)
        except APIError as e:
            return e.response()
        return {"object": "list", "data": [{"id": chat.name, "object": "model", "created": 0, "owned_by": "alpaca-medis"}]}

    @api.post("/chat/completions")
    async def completions(request: Request):
        release, streaming = _nothing, False
        try:
            release = shares.take(_caller(access.keys, request))
            response = await _complete(chat, request, waiting, release)
            streaming = isinstance(response, StreamingResponse)  # the stream gives its share back when it ends
            return response
        except APIError as e:
            return e.response()
        except Exception:
            logger.exception("/v1/chat/completions failed")
            return _server_error().response()
        finally:
            if not streaming:
                release()

    return api


def _caller(keys: APIKeys | None, request: Request) -> int | None:
    """The index of the request's API key, which names its client (None without keys), or APIError 401."""
    if keys is None:
        return None
    key = bearer(request.headers.get("authorization"))
    index = keys.match(key) if key else None
    if index is None:  # the key given is never repeated: it may be someone's real key sent to the wrong server
        message = "Incorrect API key provided." if key else "Missing API key."
        raise APIError(f"{message} Send this server's key as `Authorization: Bearer KEY` (the OpenAI client's api_key).",
                       status=401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return index


def _nothing() -> None:
    pass


class _Shares:
    """Requests of each API key waiting for the model or being answered: at most `limit` each, so that one client
    cannot take every waiting place the server has. Touched on the event loop only, so without a lock."""

    def __init__(self, limit: int | None):
        self.limit, self.taken = limit, collections.Counter()

    def take(self, key: int | None):
        """A function that gives the place back (once, however often it is called), or APIError 429."""
        if self.limit is None or key is None:
            return _nothing
        if self.taken[key] >= self.limit:
            raise _busy(BusyError(f"This API key has {self.limit} requests waiting or being answered already, the most "
                                  "one key may have. Retry when one of them has finished."))
        self.taken[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.taken[key] -= 1

        return release


class _SharedStream(StreamingResponse):
    """A stream that gives its key's share back however it ends: read to its end, cut by the client, or never started
    at all (a client gone before the first byte: the body's own `finally` then never runs)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _busy(error: BusyError) -> APIError:
    seconds = max(1, math.ceil(error.retry_after))
    return APIError(str(error), status=429, type="rate_limit_exceeded", code="rate_limit_exceeded",
                    headers={"Retry-After": str(seconds)})


async def _complete(chat: ChatModel, request: Request, waiting: anyio.CapacityLimiter, release):
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise APIError(f"The request body must be a JSON object, not {_json_type(body)}.")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        raise _invalid(e) from None
    if req.n not in (None, 1):
        raise APIError(f"n={req.n} is not supported: this server returns one choice.", param="n")
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    if max_tokens > MAX_NEW_TOKENS:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise APIError(f"max_tokens {max_tokens} is above this server's limit of {MAX_NEW_TOKENS}.", param=param,
                       code="integer_above_max_value")
    message, history = _conversation(req.messages, getattr(chat, "context_length", 4096))
    kwargs = dict(max_new_tokens=max_tokens, temperature=_or(req.temperature, 0.0), top_p=_or(req.top_p, 1.0),
                  repetition_penalty=_or(req.repetition_penalty, 1.0))
    stats = GenerationStats()
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if req.stream:
        def start():
            answers = chat.stream(message, history, stats=stats, **kwargs)
            return answers, next(answers, "")  # prompt errors and BusyError surface here, before any response

        answers, first = await _generating(waiting, start)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _SharedStream(_sse(chat.name, ident, created, first, answers, stats, include_usage, release), release,
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def whole():
        return last_text(chat.stream(message, history, stats=stats, **kwargs))

    text = await _generating(waiting, whole)
    return {
        "id": ident, "object": "chat.completion", "created": created, "model": chat.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _finish(stats.finish)}],
        "usage": _usage(stats),
    }


async def _generating(waiting: anyio.CapacityLimiter, fn):
    """fn() on a thread of `waiting`, with the model's refusals turned into API errors."""
    try:
        return await anyio.to_thread.run_sync(fn, limiter=waiting)
    except InputError as e:
        raise APIError(str(e)) from None
    except BusyError as e:
        raise _busy(e) from None
    except Exception as e:
        # A chat template's raise_exception() (e.g. "roles must alternate") refuses the conversation's shape:
        # jinja2's plain TemplateError, not a subclass, which would be a broken template, the server's fault.
        if type(e).__name__ == "TemplateError" and type(e).__module__.startswith("jinja2"):
            raise APIError(f"This model's chat template cannot format the conversation: {e}", param="messages") from None
        raise


async def _read_json(request: Request):
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError("The client disconnected before sending the whole body.") from None
    # Any content type is read as JSON: `curl -d` sends JSON labelled as a form.
    try:
        return json.loads(b"".join(chunks))
    except RecursionError:
        raise APIError("The request body is not valid JSON: it is nested too deeply.") from None
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for bytes that are no UTF-8/16/32
        raise APIError(f"The request body is not valid JSON: {e}.") from None


def _too_large() -> APIError:
    return APIError(f"The request body is larger than this server's limit of {MAX_BODY_BYTES} bytes.", status=413,
                    code="request_too_large")


def _invalid(error: ValidationError) -> APIError:
    """The first problem pydantic found, in OpenAI's words, naming the parameter."""
    problems = error.errors(include_url=False)
    first = problems[0]
    param = _param(first["loc"])
    if first["type"] == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    else:
        message = f"Invalid '{param}': {first['msg']}."
        code = "invalid_type" if first["type"].endswith(("_type", "_parsing")) else "invalid_value"
    if len(problems) > 1:
        message += f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} in the request.)"
    return APIError(message, param=param, code=code)


def _param(loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _text(content, param: str) -> str:
    """A message's content as plain text: a string, or OpenAI's list of parts of which only text ones are served."""
    if content is None:  # an assistant message that only called tools
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(f"Invalid '{param}': expected a string or a list of text parts, got {_json_type(content)}.",
                       param=param, code="invalid_type")
    texts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise APIError(f"Invalid '{where}': expected an object like {{\"type\": \"text\", \"text\": \"...\"}}, "
                           f"got {_json_type(part)}.", param=where, code="invalid_type")
        if part.get("type") != "text":
            raise APIError(f"Invalid '{where}': content parts of type {part.get('type')!r} are not supported; "
                           "this model reads text parts only.", param=where, code="invalid_value")
        if not isinstance(part.get("text"), str):
            raise APIError(f"Invalid '{where}.text': expected a string, got {_json_type(part.get('text'))}.",
                           param=f"{where}.text", code="invalid_type")
        texts.append(part["text"])
    return "\n".join(texts)


def _conversation(messages: list[Message], context_length: int) -> tuple[str, list[dict]]:
    """(the last user message, the history before it) as ChatModel.stream takes them, or an APIError.

    Leading system messages become one; history beyond what a prompt could hold is dropped."""
    if not messages:
        raise APIError("'messages' is empty: send at least one message with role 'user'.", param="messages")
    unknown = sorted({m.role for m in messages} - set(_ROLES))
    if unknown:
        raise APIError(f"Unsupported role(s): {', '.join(map(repr, unknown))}. Use 'system', 'user' or 'assistant'.",
                       param="messages", code="invalid_value")
    if _ROLES[messages[-1].role] != "user":
        raise APIError("The last message must have role 'user'.", param="messages")
    system, turns = [], []
    for i, m in enumerate(messages):
        role, param = _ROLES[m.role], f"messages[{i}].content"
        text = _CONTROL.sub("", _text(m.content, param))
        if role != "assistant" and len(text) > MAX_INPUT_CHARS:
            raise APIError(f"The message at '{param}' has {len(text)} characters; the limit is {MAX_INPUT_CHARS}. "
                           "Shorten it.", param=param, code="string_above_max_length")
        if role == "system":
            if turns:
                raise APIError(f"A system message must come before the conversation; messages[{i}] follows it.",
                               param=f"messages[{i}]")
            system.append(text)
        else:
            turns.append({"role": role, "content": text})
    message, turns = turns[-1]["content"], _recent(turns[:-1], HISTORY_CHARS_PER_TOKEN * context_length)
    return message, ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + turns


def _recent(turns: list[dict], max_chars: int) -> list[dict]:
    """The latest turns within MAX_HISTORY_MESSAGES and max_chars, starting with a user message."""
    kept, chars = 0, 0
    for turn in reversed(turns[-MAX_HISTORY_MESSAGES:]):
        chars += len(turn["content"])
        if chars > max_chars:
            break
        kept += 1
    recent = turns[len(turns) - kept:]
    while recent and recent[0]["role"] != "user":
        recent = recent[1:]
    return recent


def _or(value, default):
    return default if value is None else value


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


async def _sse(model: str, ident: str, created: int, first: str, answers, stats: GenerationStats, include_usage: bool,
               release):
    def event(body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> str:
        return event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        sent, text = "", first
        while text is not None:
            if len(text) > len(sent):
                yield chunk({"content": text[len(sent):]})
                sent = text
            text = await anyio.to_thread.run_sync(next, answers, None)
    except Exception:
        # The status line is sent already: the error goes in the stream, where OpenAI clients raise it.
        logger.exception("/v1/chat/completions failed while streaming")
        error = _server_error()
        yield event({"error": {"message": error.message, "type": error.type, "param": None, "code": None}})
        return
    finally:
        # A client that disconnects stops the generation, which frees the model for the next request.
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(answers.close)
        finally:
            release()  # the key's share
    yield chunk({}, _finish(stats.finish))
    if include_usage:
        yield event({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": _usage(stats)})
    yield "data: [DONE]\n\n"
