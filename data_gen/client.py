"""A thin wrapper over the `openai` (>=1.0) client for any OpenAI-compatible chat server.

    client = ChatClient(base_url="http://127.0.0.1:7860/v1", model="smollm2-135m")
    answer = client.complete("Tulis tiga contoh ...")      # -> Answer(text, finish_reason)
    print(client.usage.summary())

Used by `python -m data_gen generate` and `python -m data_gen translate`, which share the flags added
by `add_client_args`. The API key comes from $OPENAI_API_KEY; servers that need none (local ones,
our own app.py) get the placeholder "unused".

Retries are ours, not the openai client's (it is built with max_retries=0), so the count is exact:
429 (rate limit), 5xx, timeouts (ours and HTTP 408) and dropped connections are retried up to
--max_retries times with exponential backoff and jitter (a server's Retry-After is honoured when it
is longer); anything else (400, 401, 404, ...) is not transient and fails at once. Either way the caller gets a `ClientError`
whose message says what happened; generate/translate add how many records were written and how to
resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from dataclasses import dataclass, field

import openai

logger = logging.getLogger(__name__)

PLACEHOLDER_KEY = "unused"
MAX_DELAY = 60.0  # seconds; a single backoff wait never exceeds this, nor does an honoured Retry-After


class ClientError(Exception):
    """A request that failed for good (not transient, or retries exhausted); the message says why."""


@dataclass
class Answer:
    text: str
    finish_reason: str | None  # "length" means the server cut the answer at max_tokens


@dataclass
class Usage:
    requests: int = 0  # answered requests
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unreported: int = 0  # answers without a `usage` object (some servers omit it)
    price_per_1k: tuple[float, float] | None = None  # (prompt, completion) per 1,000 tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        if self.price_per_1k is None:
            return None
        return (self.prompt_tokens * self.price_per_1k[0] + self.completion_tokens * self.price_per_1k[1]) / 1000

    def summary(self) -> str:
        line = (f"requests {self.requests} | retries {self.retries} | tokens {self.tokens:,} "
                f"(prompt {self.prompt_tokens:,}, completion {self.completion_tokens:,})")
        if self.unreported:
            line += f" | {self.unreported} answer(s) without usage"
        if self.cost is not None:
            line += f" | estimated cost ${self.cost:.4f}"
        return line


def parse_price(value: str) -> tuple[float, float]:
    """'0.002' (one price for all tokens) or '0.0005,0.0015' (prompt, completion), per 1,000 tokens."""
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or any(p < 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give PRICE or PROMPT_PRICE,COMPLETION_PRICE per 1,000 tokens, e.g. 0.002 or 0.0005,0.0015")
    return (parts[0], parts[-1])


@dataclass
class ChatClient:
    base_url: str
    model: str
    api_key: str | None = None  # default: $OPENAI_API_KEY, else the placeholder
    max_retries: int = 5
    retry_delay: float = 1.0  # first backoff in seconds; doubles per retry
    timeout: float = 120.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 3072
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self):
        key = self.api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_KEY
        # max_retries=0: the openai client would otherwise retry 429/5xx itself, invisibly to our counts.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)
        self._jitter = random.Random()  # not the data RNG: jitter must not change which examples are sampled

    def complete(self, prompt: str) -> Answer:
        """One chat completion (one user message), retried on transient errors; raises ClientError when
        it fails for good."""
        messages = [{"role": "user", "content": prompt}]
        for attempt in range(self.max_retries + 1):
            self.usage.attempts += 1
            try:
                reply = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, top_p=self.top_p,
                    max_tokens=self.max_tokens,
                )
            except (openai.APIStatusError, openai.APIConnectionError) as e:  # timeouts are connection errors
                if not _transient(e):
                    raise ClientError(_describe(e, self)) from None
                if attempt == self.max_retries:
                    raise ClientError(f"{_describe(e, self)}; gave up after {attempt + 1} attempts "
                                      f"(1 + --max_retries {self.max_retries})") from None
                delay = self._delay(attempt, e)
                logger.warning("%s; retry %d/%d in %.1f s", _describe(e, self), attempt + 1, self.max_retries, delay)
                self.usage.retries += 1
                time.sleep(delay)
                continue
            except openai.OpenAIError as e:  # e.g. a 200 whose body is not a chat completion
                raise ClientError(f"{self.base_url} answered something that is not a chat completion: {e}") from None
            return self._account(reply)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, error: Exception) -> float:
        # Exponential backoff with jitter (0.5x-1.5x), so parallel clients do not retry in lockstep.
        delay = min(MAX_DELAY, self.retry_delay * 2**attempt) * self._jitter.uniform(0.5, 1.5)
        response = getattr(error, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            delay = max(delay, min(MAX_DELAY, float(retry_after)))
        except (TypeError, ValueError):
            pass  # absent, or an HTTP date: keep our own backoff
        return delay

    def _account(self, reply) -> Answer:
        self.usage.requests += 1
        usage = getattr(reply, "usage", None)
        if usage is None:
            self.usage.unreported += 1
        else:
            self.usage.prompt_tokens += usage.prompt_tokens or 0
            self.usage.completion_tokens += usage.completion_tokens or 0
        choices = getattr(reply, "choices", None) or []
        if not choices or choices[0].message is None:
            return Answer("", None)
        return Answer(choices[0].message.content or "", choices[0].finish_reason)


def _transient(error: Exception) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code in (408, 429) or error.status_code >= 500)


def _describe(error: Exception, client: ChatClient) -> str:
    if isinstance(error, openai.APITimeoutError):
        return f"no answer from {client.base_url} within --timeout {client.timeout:g} s"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot connect to {client.base_url} ({error.__cause__ or error})"
    status = getattr(error, "status_code", None)
    message = _server_message(error)
    hint = {
        401: " Set OPENAI_API_KEY to a valid key for this server.",
        403: " Check that OPENAI_API_KEY may use this model.",
        404: f" Check --base_url (it usually ends in /v1) and --model {client.model!r}.",
    }.get(status, "")
    return f"HTTP {status} from {client.base_url}: {message}.{hint}"


def _server_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).rstrip(".")
        if isinstance(inner, str):
            return inner.rstrip(".")
    return str(getattr(error, "message", error)).rstrip(".")


def setup_logging() -> None:
    """Our warnings and info lines; not one line per HTTP request from the HTTP client."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "openai", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def add_client_args(parser: argparse.ArgumentParser, max_tokens: int, temperature: float) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--base_url", required=True, help="the server's OpenAI-compatible API, e.g. http://127.0.0.1:7860/v1 "
                       "(our app.py) or https://api.openai.com/v1. The key is $OPENAI_API_KEY (unset: the placeholder 'unused')")
    group.add_argument("--model", required=True, help="model name the server knows, e.g. gpt-4o-mini")
    group.add_argument("--max_tokens", type=int, default=max_tokens, help="max completion tokens per request (default %(default)s)")
    group.add_argument("--temperature", type=float, default=temperature, help="sampling temperature (default %(default)s)")
    group.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (default %(default)s)")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default %(default)s)")
    group.add_argument("--max_retries", type=int, default=5, help="retries per request on 429, 5xx, timeouts and "
                       "dropped connections, with exponential backoff (default %(default)s)")
    group.add_argument("--retry_delay", type=float, default=1.0, help="first backoff in seconds, doubled per retry, "
                       "+-50%% jitter, at most 60 s (default %(default)s)")
    group.add_argument("--price_per_1k", type=parse_price, default=None, metavar="PRICE[,COMPLETION_PRICE]",
                       help="USD per 1,000 tokens, to estimate the cost: one price, or prompt,completion prices")


def client_from_args(args: argparse.Namespace) -> ChatClient:
    return ChatClient(base_url=args.base_url, model=args.model, max_retries=args.max_retries, retry_delay=args.retry_delay,
                      timeout=args.timeout, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                      usage=Usage(price_per_1k=args.price_per_1k))


def check_client_args(args: argparse.Namespace) -> list[str]:
    """Problems with the server flags, each naming the flag and the fix."""
    problems = []
    if args.max_retries < 0:
        problems.append("--max_retries must be 0 or more.")
    if args.retry_delay < 0:
        problems.append("--retry_delay must be 0 or more seconds.")
    if args.timeout <= 0:
        problems.append("--timeout must be more than 0 seconds.")
    if args.max_tokens < 1:
        problems.append("--max_tokens must be at least 1.")
    return problems
