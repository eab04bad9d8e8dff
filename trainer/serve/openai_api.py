"""OpenAI-compatible endpoints for a ChatModel, served by app.py beside the Gradio UI.

    GET  /v1/models
    POST /v1/chat/completions      {"model": ..., "messages": [...], "stream": false|true,
                                    "max_tokens": 256, "temperature": 0, "top_p": 1}

Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="unused")`.
A system message becomes the Alpaca instruction and the user's message its input (see
trainer/prompts.py); earlier turns are history, cut from the oldest when the context is full.
"""

from __future__ import annotations

import collections
import json
import time
import uuid

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from trainer.serve.inference import MAX_NEW_TOKENS, ChatModel, GenerationStats, InputError


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    frequency_penalty: float = 0.0  # accepted for compatibility; repetition_penalty below is what we apply
    repetition_penalty: float = Field(default=1.0, gt=0.0)


def router(chat: ChatModel) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/models")
    def models():
        return {"object": "list", "data": [{"id": chat.name, "object": "model", "created": 0, "owned_by": "alpaca-medis"}]}

    @api.post("/chat/completions")
    def completions(request: ChatRequest):
        messages = [m.model_dump() for m in request.messages]
        if not messages or messages[-1]["role"] != "user":
            return _error("The last message must have role 'user'.")
        unknown = {m["role"] for m in messages} - {"system", "user", "assistant"}
        if unknown:
            return _error(f"Unsupported role(s): {', '.join(sorted(unknown))}.")
        max_tokens = request.max_completion_tokens or request.max_tokens or 256
        if max_tokens > MAX_NEW_TOKENS:
            return _error(f"max_tokens {max_tokens} is above this server's limit of {MAX_NEW_TOKENS}.")
        kwargs = dict(max_new_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
                      repetition_penalty=request.repetition_penalty)
        stats = GenerationStats()
        answers = chat.stream(messages[-1]["content"], messages[:-1], stats=stats, **kwargs)
        try:
            first = next(answers, "")  # prompt errors surface here, before any response starts
        except InputError as e:
            return _error(str(e))
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            return StreamingResponse(_sse(chat, ident, created, first, answers, stats), media_type="text/event-stream")
        rest = collections.deque(answers, maxlen=1)  # reads the stream to its end
        text = rest[0] if rest else first
        return {
            "id": ident, "object": "chat.completion", "created": created, "model": chat.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _finish(stats.finish)}],
            "usage": {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
                      "total_tokens": stats.prompt_tokens + stats.new_tokens},
        }

    return api


def _error(message: str) -> JSONResponse:
    """OpenAI's error shape, so clients show the message."""
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=400)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _sse(chat: ChatModel, ident: str, created: int, first: str, answers, stats: GenerationStats):
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": chat.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    try:
        for text in _chain(first, answers):
            if len(text) > len(sent):
                yield chunk({"content": text[len(sent):]})
                sent = text
    finally:
        answers.close()  # a client that disconnects stops the generation
    yield chunk({}, _finish(stats.finish))
    yield "data: [DONE]\n\n"


def _chain(first: str, rest):
    yield first
    yield from rest
