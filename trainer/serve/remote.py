"""A chat answered by an OpenAI-compatible inference server (vLLM, SGLang, TGI, llama.cpp, `transformers serve`):
what app.py serves with `--backend URL` instead of loading a model.

    python app.py --backend http://gpu-box:8000/v1 [--backend_model NAME]

RemoteChat has what app.py and openai_api.py use of a ChatModel (`name`, `base`, `settings`, `last`,
`stream()`), so the page and our own `/v1` API stay the same: they proxy to the server.

- The conversation goes to the server as chat messages and the server applies its own chat template:
  the remote model must carry the Alpaca one (a model pushed by `trainer.push` bundles it).
- The answer is cut where the model starts a new turn by itself, as ChatModel cuts it, and the stream is
  then closed: closing the response is what engines treat as a cancel. So does the stop button.
- repetition_penalty is not in OpenAI's API. It goes as the extra field vLLM and SGLang read; a server that
  refuses that field (`transformers serve` answers 422) gets it inside `generation_config`, the JSON of
  generate() settings transformers serve takes, from then on.
- Errors become messages for the user: BackendError (an InputError, so our /v1 answers 400 with the
  message) when the server is unreachable, too slow or refuses the request; BusyError when it answers 429.
- The API key comes from $BACKEND_API_KEY, else $OPENAI_API_KEY, else "unused" (servers without keys
  ignore it). It is never logged or shown, and the key a caller sent our /v1 (app.py --api_key) never goes to the
  server: each request here is made by this client, with its own key.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import time

import openai

from trainer.serve.inference import (
    DEFAULT_NEW_TOKENS,
    MAX_NEW_TOKENS,
    BusyError,
    GenerationStats,
    InputError,
    check_length,
    last_text,
    visible_texts,
)

logger = logging.getLogger(__name__)

API_KEY_VARIABLES = ("BACKEND_API_KEY", "OPENAI_API_KEY")
DEFAULT_RETRY_AFTER = 5.0  # seconds, when a 429 says no Retry-After


class BackendError(InputError):
    """The inference server did not answer: unreachable, too slow, or it refused the request. The message says
    which, for the user to read."""


def api_key_from_env() -> str:
    return next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), "unused")


class RemoteChat:
    """A chat model behind an OpenAI-compatible server; `stream()` as ChatModel.stream."""

    base: str | None = None  # never a LoRA adapter of ours: whatever the server runs is one model
    # The engine schedules and batches; the page forwards this many chats to it at once (app.py's queue).
    max_batch = 16

    def __init__(self, url: str, model: str, timeout: float = 120.0, connect_timeout: float = 10.0,
                 api_key: str | None = None):
        """`timeout`: the longest wait for the server's next bytes (the first text included); `connect_timeout`:
        for its connection. No retries: a refusal reaches the user at once."""
        self.url = url.rstrip("/")
        self.name = model
        self.settings = f"remote: {self.url}"
        self.timeout = timeout
        self.last = GenerationStats()
        # Extra request fields for every answer, like ChatModel.generate_options (e.g. a server's own settings).
        self.extra_body: dict = {}
        self.penalty_field = "repetition_penalty"  # "generation_config" once the server refused the first
        # Send repetition_penalty 1.0 too (trainer.evaluate): vLLM and transformers serve otherwise apply the model's
        # generation_config value, if it has one, which local greedy answers (1.0 passed to generate()) never do.
        self.send_neutral_penalty = False
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or api_key_from_env(), max_retries=0,
                                    timeout=openai.Timeout(timeout, connect=connect_timeout))

    def __repr__(self) -> str:  # the client, and its key, stay out of logs
        return f"RemoteChat({self.url!r}, {self.name!r})"

    @classmethod
    def connect(cls, url: str, model: str | None = None, **kwargs) -> RemoteChat:
        """The chat with `model`, else with the first model the server lists (its /v1/models, asked now)."""
        chat = cls(url, model or "", **kwargs)
        if not model:
            names = chat.models()
            if not names:
                raise BackendError(f"The inference server at {chat.url} lists no models; name one with --backend_model.")
            chat.name = names[0]
        return chat

    def models(self) -> list[str]:
        """The ids of the server's /v1/models."""
        with self._errors():
            return [m.id for m in self.client.models.list()]

    def stream(self, message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               stats: GenerationStats | None = None):
        """Yield the growing answer text, as ChatModel.stream. Closing the generator closes the HTTP stream,
        which stops the server's generation.

        `stats` (and `self.last`) get the server's token counts when it sends them (the usage chunk at the
        end of a stream read to its end); for an answer cut short, new_tokens counts the text chunks received
        (a token each on vLLM and transformers serve, unless the server fell behind and joined some) and
        prompt_tokens is 0: unknown. History is never cut here: a prompt too long for the server is its 400."""
        check_length(message)
        messages = [{"role": m["role"], "content": m["content"]} for m in history or []]
        messages.append({"role": "user", "content": message})
        max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS))
        started = time.perf_counter()
        response = self._open(messages, max_new_tokens, temperature, top_p, repetition_penalty)
        ending, finish_reason, usage, chunks, first = None, None, None, 0, None

        def growing():
            nonlocal finish_reason, usage, chunks, first
            answer = ""
            with self._errors():
                for chunk in response:
                    usage = chunk.usage or usage
                    for choice in (chunk.choices or [])[:1]:
                        finish_reason = choice.finish_reason or finish_reason
                        piece = choice.delta.content if choice.delta else None
                        if not piece:
                            continue
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - started
                        answer += piece
                        yield answer

        def ended(how: str) -> None:
            nonlocal ending
            ending = how

        try:
            # At a marker the model started a new turn: the answer ends, and the stream closes below.
            yield from visible_texts(growing(), ended)
        finally:
            # Reached on completion, on a marker, on an error, and when the reader closes us (stop button).
            response.close()
            finish = ("marker" if ending == "marker" else "stopped" if ending is None else
                      "length" if finish_reason == "length" else "eos")
            self.last = GenerationStats(
                prompt_tokens=usage.prompt_tokens if usage and ending == "exhausted" else 0,
                new_tokens=usage.completion_tokens if usage and ending == "exhausted" else chunks,
                finish=finish, seconds_to_first_token=first, seconds=time.perf_counter() - started)
            if stats is not None:
                stats.__dict__.update(self.last.__dict__)

    def answer(self, message: str, history: list[dict] | None = None, **kwargs) -> str:
        return last_text(self.stream(message, history, **kwargs))

    def _open(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
              repetition_penalty: float) -> openai.Stream:
        """The server's streamed answer, its response started (errors of the request are raised here)."""
        penalty = float(repetition_penalty) != 1.0 or self.send_neutral_penalty
        field = self.penalty_field  # as this request sends it: a concurrent request may switch it meanwhile
        with self._errors():
            try:
                return self._create(messages, max_new_tokens, temperature, top_p, repetition_penalty if penalty else None)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if not (penalty and field == "repetition_penalty" and "repetition_penalty" in _detail(e)):
                    raise
                logger.info("%s refuses a repetition_penalty field; sending it in generation_config", self.url)
                self.penalty_field = "generation_config"
                return self._create(messages, max_new_tokens, temperature, top_p, repetition_penalty)

    def _create(self, messages, max_new_tokens, temperature, top_p, repetition_penalty: float | None) -> openai.Stream:
        body = dict(self.extra_body)
        if repetition_penalty is not None and self.penalty_field == "repetition_penalty":
            body["repetition_penalty"] = repetition_penalty
        elif repetition_penalty is not None:
            settings = json.loads(body.get("generation_config") or "{}")
            body["generation_config"] = json.dumps({**settings, "repetition_penalty": repetition_penalty})
        return self.client.chat.completions.create(
            model=self.name, messages=messages, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            stream=True, stream_options={"include_usage": True}, extra_body=body or None)

    @contextlib.contextmanager
    def _errors(self):
        """The openai client's errors as messages for the user: BusyError for a 429, else BackendError."""
        server = f"The inference server at {self.url}"
        try:
            yield
        except openai.RateLimitError as e:
            raise BusyError(f"{server} is busy ({_detail(e)}). Retry in a few seconds.",
                            retry_after=_retry_after(e.response.headers)) from e
        except openai.APITimeoutError as e:
            raise BackendError(f"{server} did not answer within {self.timeout:g} s.") from e
        except openai.APIConnectionError as e:
            cause = f" ({e.__cause__})" if e.__cause__ and str(e.__cause__) else ""
            raise BackendError(f"{server} cannot be reached{cause}. Is it running, and is the URL right?") from e
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise BackendError(f"{server} refused our API key (HTTP {e.status_code}: {_detail(e)}); "
                               f"set {API_KEY_VARIABLES[0]}.") from e
        except openai.NotFoundError as e:
            raise BackendError(f"{server} has no model {self.name!r} or no OpenAI API at this URL, which usually "
                               f"ends in /v1 (HTTP 404: {_detail(e)}).") from e
        except openai.APIStatusError as e:
            raise BackendError(f"{server} refused the request (HTTP {e.status_code}): {_detail(e)}") from e
        except openai.APIError as e:  # an error event in the stream, or a reply that is not OpenAI's format
            raise BackendError(f"{server} failed while answering: {_detail(e)}") from e


def _detail(e: openai.APIError, limit: int = 500) -> str:
    """The server's own words in an error: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or a string."""
    body = e.body
    if isinstance(body, dict):
        body = next((body[k] for k in ("message", "detail", "error") if body.get(k)), body)
        if isinstance(body, dict) and body.get("message"):
            body = body["message"]
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False) if body else e.message
    return text[:limit]


def _retry_after(headers) -> float:
    """Seconds to wait, from Retry-After (seconds or an HTTP date) or retry-after-ms, else DEFAULT_RETRY_AFTER."""
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(headers.get("retry-after-ms")) / 1000)
    value = headers.get("retry-after")
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return DEFAULT_RETRY_AFTER
