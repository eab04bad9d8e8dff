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

One client may be used from many threads (--workers): its counts are locked, and a 429 or a
Retry-After pauses every request of the client at once (`RateGate`) instead of each thread retrying
on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import openai

logger = logging.getLogger(__name__)

PLACEHOLDER_KEY = "unused"
MAX_DELAY = 60.0  # seconds; a single backoff wait never exceeds this, nor does an honoured Retry-After
BATCH_PRICE_FACTOR = 0.5  # the Batch API bills its tokens at half the synchronous price
T = TypeVar("T")


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
    batch_requests: int = 0  # answers read from a Batch API output file, also counted in `requests`
    batch_prompt_tokens: int = 0  # their tokens, also counted in prompt_tokens / completion_tokens
    batch_completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        if self.price_per_1k is None:
            return None
        prompt, completion = self.price_per_1k
        full = self.prompt_tokens * prompt + self.completion_tokens * completion
        batch = self.batch_prompt_tokens * prompt + self.batch_completion_tokens * completion
        return (full - batch * (1 - BATCH_PRICE_FACTOR)) / 1000

    def summary(self) -> str:
        through_batch = f" ({self.batch_requests} through the Batch API)" if self.batch_requests else ""
        line = (f"requests {self.requests}{through_batch} | retries {self.retries} | tokens {self.tokens:,} "
                f"(prompt {self.prompt_tokens:,}, completion {self.completion_tokens:,})")
        if self.unreported:
            line += f" | {self.unreported} answer(s) without usage"
        if self.cost is not None:
            line += f" | estimated cost ${self.cost:.4f}"
            if self.batch_requests:
                line += f" (Batch API tokens at {BATCH_PRICE_FACTOR:.0%})"
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


class RateGate:
    """One pause shared by every thread of a client. A 429 (or any answer with Retry-After) closes the
    gate for the backoff delay, or the Retry-After when longer; nobody sends until it reopens. Then one
    request goes first (a probe) and the others wait for its outcome, so N workers never hit a rate
    limit together again (no thundering herd). Each pause doubles the delay until a request succeeds.

    A 429 for a request sent before the current pause began does not start another pause: it only
    stretches the current one to its Retry-After."""

    def __init__(self, retry_delay: float, jitter: random.Random):
        self.retry_delay, self._jitter = retry_delay, jitter
        self._cond = threading.Condition()
        self._until = 0.0  # time.monotonic() when the pause ends
        self._level = 0  # pauses since the last success: the backoff exponent
        self._epoch = 0  # counts pauses; a ticket carries the epoch its request was sent in
        self._probe_due = False  # a pause ended: the next request is a probe
        self._probing = False  # a probe is in flight; the others wait for it

    def enter(self) -> tuple[int, bool]:
        """Wait until a request may go out; returns its ticket (epoch, is it the probe)."""
        with self._cond:
            while True:
                wait = self._until - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                elif self._probing:
                    self._cond.wait()
                else:
                    probe, self._probe_due = self._probe_due, False
                    self._probing = probe
                    return self._epoch, probe

    def succeeded(self, ticket: tuple[int, bool]) -> None:
        with self._cond:
            if ticket[0] == self._epoch:
                self._level = 0
            self._release(ticket)

    def failed(self, ticket: tuple[int, bool]) -> None:
        """Any other failure: a probe that failed so hands the probing to the next request."""
        with self._cond:
            if ticket[1]:
                self._probe_due = True
            self._release(ticket)

    def pause(self, ticket: tuple[int, bool], retry_after: float | None) -> float:
        """The server said slow down; returns the pause this started (0 when the current one covers it)."""
        with self._cond:
            started = 0.0
            wait = min(MAX_DELAY, retry_after) if retry_after is not None else 0.0
            if ticket[0] == self._epoch:
                started = max(wait, min(MAX_DELAY, self.retry_delay * 2**self._level) * self._jitter.uniform(0.5, 1.5))
                wait = started
                self._epoch += 1
                self._level += 1
                self._probe_due = True
            self._until = max(self._until, time.monotonic() + wait)
            self._release(ticket)
            return started

    def _release(self, ticket: tuple[int, bool]) -> None:
        if ticket[1]:
            self._probing = False
        self._cond.notify_all()


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
        self.api = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)
        self._jitter = random.Random()  # not the data RNG: jitter must not change which examples are sampled
        self._lock = threading.Lock()  # usage counts, updated from worker threads
        self.gate = RateGate(self.retry_delay, self._jitter)

    def request_body(self, prompt: str) -> dict:
        """The chat completion request for one user message: sent as is, or as a Batch API line's body."""
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": self.temperature,
                "top_p": self.top_p, "max_tokens": self.max_tokens}

    def complete(self, prompt: str) -> Answer:
        """One chat completion (one user message), retried on transient errors; raises ClientError when
        it fails for good."""
        body = self.request_body(prompt)
        try:
            reply = self.call(lambda: self.api.chat.completions.create(**body))
        except openai.OpenAIError as e:  # e.g. a 200 whose body is not a chat completion
            raise ClientError(f"{self.base_url} answered something that is not a chat completion: {e}") from None
        return self.account(_as_dict(reply))

    def call(self, request: Callable[[], T], what: str | None = None) -> T:
        """`request()` (one API call through self.api) with our retries: transient errors are retried
        up to max_retries times, 429 / Retry-After through the shared gate. `what` names the call in
        errors (default: chat completions)."""
        for attempt in range(self.max_retries + 1):
            ticket = self.gate.enter()
            self._count(attempts=1)
            try:
                result = request()
            except (openai.APIStatusError, openai.APIConnectionError) as e:  # timeouts are connection errors
                self._retry_or_raise(e, ticket, attempt, what)
                continue
            except BaseException:
                self.gate.failed(ticket)
                raise
            self.gate.succeeded(ticket)
            return result
        raise AssertionError("unreachable")

    def _retry_or_raise(self, error: Exception, ticket: tuple[int, bool], attempt: int, what: str | None) -> None:
        retry_after = _retry_after(error)
        slow_down = getattr(error, "status_code", None) == 429 or retry_after is not None
        if slow_down:
            paused = self.gate.pause(ticket, retry_after)
        else:
            self.gate.failed(ticket)
        if not _transient(error):
            raise ClientError(_describe(error, self, what)) from None
        if attempt == self.max_retries:
            raise ClientError(f"{_describe(error, self, what)}; gave up after {attempt + 1} attempts "
                              f"(1 + --max_retries {self.max_retries})") from None
        self._count(retries=1)
        if slow_down:  # the gate holds this thread and every other one
            if paused:
                logger.warning("%s; every request waits %.1f s, then retry %d/%d", _describe(error, self, what),
                               paused, attempt + 1, self.max_retries)
            return
        delay = self._delay(attempt)
        logger.warning("%s; retry %d/%d in %.1f s", _describe(error, self, what), attempt + 1, self.max_retries, delay)
        time.sleep(delay)

    def _delay(self, attempt: int) -> float:
        # Exponential backoff with jitter (0.5x-1.5x), so parallel clients do not retry in lockstep.
        return min(MAX_DELAY, self.retry_delay * 2**attempt) * self._jitter.uniform(0.5, 1.5)

    def _count(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self.usage, name, getattr(self.usage, name) + n)

    def account(self, reply: dict, batch: bool = False) -> Answer:
        """Count a chat completion (a reply, or a Batch API output line's body) and return its answer."""
        usage = reply.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        counts = {"requests": 1, "prompt_tokens": prompt, "completion_tokens": completion, "unreported": int(not usage)}
        if batch:
            counts.update(batch_requests=1, batch_prompt_tokens=prompt, batch_completion_tokens=completion)
        self._count(**counts)
        choices = reply.get("choices") or []
        message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
        if not message:
            return Answer("", None)
        return Answer(message.get("content") or "", choices[0].get("finish_reason"))


def _as_dict(reply) -> dict:
    if isinstance(reply, dict):
        return reply
    return reply.model_dump() if hasattr(reply, "model_dump") else {}


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None  # absent, or an HTTP date: our own backoff decides


def _transient(error: Exception) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code in (408, 429) or error.status_code >= 500)


def _describe(error: Exception, client: ChatClient, what: str | None = None) -> str:
    """What went wrong and the fix; `what` names a call other than chat completions (e.g. the Batch API)."""
    if isinstance(error, openai.APITimeoutError):
        return f"no answer from {client.base_url} within --timeout {client.timeout:g} s"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot connect to {client.base_url} ({error.__cause__ or error})"
    status = getattr(error, "status_code", None)
    message = _server_message(error)
    hint = {
        401: " Set OPENAI_API_KEY to a valid key for this server.",
        403: " Check that OPENAI_API_KEY may use this model.",
        404: (f" Check --base_url (it usually ends in /v1); the server may have no {what}: drop --batch_api."
              if what else f" Check --base_url (it usually ends in /v1) and --model {client.model!r}."),
    }.get(status, "")
    where = f"{client.base_url} ({what})" if what else client.base_url
    return f"HTTP {status} from {where}: {message}.{hint}"


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
    group.add_argument("--max_new_tokens", "--max_tokens", dest="max_tokens", metavar="MAX_NEW_TOKENS", type=int, default=max_tokens,
                       help="answer budget: max completion tokens per request, the API's max_tokens (default %(default)s)")
    group.add_argument("--temperature", type=float, default=temperature, help="sampling temperature (default %(default)s)")
    group.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (default %(default)s)")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default %(default)s)")
    group.add_argument("--max_retries", type=int, default=5, help="retries per request on 429, 5xx, timeouts and "
                       "dropped connections, with exponential backoff (default %(default)s)")
    group.add_argument("--retry_delay", type=float, default=1.0, help="first backoff in seconds, doubled per retry, "
                       "+-50%% jitter, at most 60 s (default %(default)s)")
    group.add_argument("--price_per_1k", type=parse_price, default=None, metavar="PRICE[,COMPLETION_PRICE]",
                       help="USD per 1,000 tokens, to estimate the cost: one price, or prompt,completion prices "
                       f"(Batch API tokens count at {BATCH_PRICE_FACTOR * 100:.0f}%% of it)")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--workers", type=int, default=1, help="requests in flight at once; records are still written "
                       "in order, and a 429 pauses them all (default %(default)s)")
    scale.add_argument("--batch_api", action="store_true", help="send the requests as an OpenAI Batch API job "
                       "(half the price, done within 24 h); its id is kept in OUT.batch.json so a rerun collects it "
                       "instead of paying again")
    scale.add_argument("--poll_interval", type=float, default=30.0, help="seconds between Batch API status checks "
                       "(default %(default)s)")
    scale.add_argument("--batch_failed", choices=("retry", "list"), default="retry", help="requests the batch could "
                       "not answer (errors, expired, unusable answers): 'retry' sends them through the normal path "
                       "with --workers (default), 'list' reports them and exits 3; a rerun puts them in a new batch")


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
        problems.append("--max_new_tokens must be at least 1.")
    if args.workers < 1:
        problems.append("--workers must be at least 1.")
    if args.poll_interval <= 0:
        problems.append("--poll_interval must be more than 0 seconds.")
    return problems
