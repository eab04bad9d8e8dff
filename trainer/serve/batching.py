"""Concurrent chats share forward passes: requests that wait together are answered by one batched generate().

    chat = BatchedChat.load("alpaca-medis-270m")   # up to MAX_BATCH answers together, MAX_WAITING more waiting
    for text in chat.stream("Saya demam tiga hari.", stats=stats): ...      # from many threads at once

A worker takes up to `max_batch` waiting requests with the same generation settings, left-pads their prompts
and runs one `generate()` on TORCH_THREAD. Every row streams to its own reader; a row stops on its own EOS, its
own `max_new_tokens`, a stop marker, or when its reader closes the stream (the stop button, a client that
disconnects): a per-row stopping criterion, so the other rows go on. Requests arriving meanwhile wait for the
next batch; beyond `max_waiting` of them a request is refused with `BusyError` (HTTP 429 on /v1).

Why not transformers' continuous batching (`init_continuous_batching`): it admits requests between steps, but
has no per-request repetition penalty (the page's default is 1.1) and runs its own thread beside TORCH_THREAD
(a second OpenMP team, which slows both on a small CPU). Batches that form while one runs give the
throughput on the machines this demo targets; BENCHMARKS.md ("Serving") has the numbers.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from trainer.hw import on_torch_thread
from trainer.serve.inference import (
    DEFAULT_NEW_TOKENS,
    BusyError,
    ChatModel,
    GenerationStats,
    last_text,
    left_padded,
    sampling_options,
    visible_texts,
)

logger = logging.getLogger(__name__)

MAX_BATCH = 8  # answers generated together
MAX_WAITING = 32  # requests waiting beyond the running batch; more are refused (BusyError, HTTP 429)
_END = None  # queued after a row's last token


@dataclass
class _Request:
    prompt: str
    prompt_tokens: int
    history_turns_dropped: int
    max_new_tokens: int
    settings: tuple  # (temperature, top_p, repetition_penalty, min_new_tokens): one batch shares them
    tokens: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)  # its row has ended (or it never ran)
    new_tokens: int = 0
    generated: list[int] = field(default_factory=list)  # its tokens so far: a paused row resumes from them
    eos: bool = False
    error: Exception | None = None  # generate() failed for the batch
    ending: str | None = None  # "marker" or "exhausted" once the reader has seen the end; None if it left
    seconds_to_first_text: float | None = None
    created: float = field(default_factory=time.perf_counter)


class _Rows:
    """Streamer and stopping criterion of one batched generate(): routes each step's tokens to the rows' readers.
    `pause_after(steps)` ends the whole generate() between two steps without ending its rows: the worker then
    resumes them, together with requests that arrived meanwhile, in the next batch."""

    def __init__(self, requests: list[_Request], eos_token_id: int, pause: threading.Event, min_steps: int):
        self.requests, self.eos = requests, eos_token_id
        self.ended = [False] * len(requests)
        self.ending = [False] * len(requests)  # stopped by the criterion: ends after this step's token
        self.prompt_seen = False
        self.pause, self.min_steps, self.steps = pause, min_steps, 0
        self.paused = False

    # BaseStreamer interface: generate() calls put() with the prompt first, then with each step's tokens.
    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for i, token in enumerate(value.view(-1).tolist()):
            if self.ended[i]:
                continue  # a finished row is padded from here on
            request = self.requests[i]
            request.new_tokens += 1
            if token == self.eos:
                request.eos = True
                self._end(i)
                continue
            request.generated.append(token)
            request.tokens.put(token)
            if self.ending[i]:
                self._end(i)

    def unfinished(self) -> list[_Request]:
        return [r for r, ended in zip(self.requests, self.ended) if not ended]

    def end(self) -> None:
        if not self.paused:
            for i in range(len(self.requests)):
                self._end(i)

    def _end(self, i: int) -> None:
        if not self.ended[i]:
            self.ended[i] = True
            self.requests[i].tokens.put(_END)
            self.requests[i].done.set()

    # StoppingCriteria interface: True for the rows that are finished. generate() asks it after appending a step's
    # tokens and before streaming them, so a row that stops here still gets this step's token.
    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.steps += 1
        stop = []
        for i, request in enumerate(self.requests):
            # This step's token is not counted yet (it is streamed after this call).
            if request.cancelled.is_set() or request.new_tokens + 1 >= request.max_new_tokens:
                self.ending[i] = True
            stop.append(self.ended[i] or self.ending[i])
        if self.pause.is_set() and self.steps >= self.min_steps and not all(stop):
            self.paused = True  # every row stops here; the unfinished ones are resumed, not ended
            stop = [True] * len(stop)
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


class BatchedChat:
    """A ChatModel served to many readers at once (same `stream` interface, one batched generate() per batch)."""

    def __init__(self, chat: ChatModel, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING, start: bool = True):
        self.chat, self.max_batch, self.max_waiting = chat, max(1, max_batch), max(0, max_waiting)
        self.name, self.base = chat.name, chat.base
        self.settings = f"{chat.settings}, batches of up to {self.max_batch}"
        self.last = GenerationStats()
        self.waiting: collections.deque[_Request] = collections.deque()
        self.running = 0
        self.cond = threading.Condition()
        self.closed = False
        # A running batch with free rows pauses for newcomers after this many steps (each pause recomputes the
        # paused rows' prompts and answers so far in one batched prefill, far cheaper per token than decoding).
        self.min_steps_before_pause = 4
        self.gather_seconds = 0.02
        self.batch_sizes: list[int] = []  # one entry per generate() call
        self.pause = threading.Event()  # set when requests wait while a batch with free rows runs
        self.worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start answering (tests start late to see several waiting requests form one batch)."""
        self.worker.start()

    @classmethod
    def load(cls, name: str, template: str | None = None, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING, **kwargs) -> BatchedChat:
        return cls(ChatModel.load(name, template, **kwargs), max_batch, max_waiting)

    def __getattr__(self, attr):  # model, tokenizer, prompt, context_length, ...: the wrapped ChatModel's
        if attr == "chat":  # not set yet (during __init__): no recursion
            raise AttributeError(attr)
        return getattr(self.chat, attr)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.worker.join(timeout=30)

    # ------------------------------------------------------------------------------------- readers

    def stream(self, message: str, history: list[dict] | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               stats: GenerationStats | None = None, min_new_tokens: int = 0):
        """Yield the growing answer text, as ChatModel.stream does; raises BusyError when the queue is full."""
        max_new_tokens = self.chat.bounded_new_tokens(max_new_tokens)
        text, prompt_tokens, dropped = self.chat.prompt(message, history, max_new_tokens)
        settings = (float(temperature), float(top_p) if temperature > 0 else 1.0, float(repetition_penalty),
                    min(int(min_new_tokens), max_new_tokens))
        request = _Request(text, prompt_tokens, dropped, max_new_tokens, settings)
        self._admit(request)
        try:
            yield from visible_texts(self._growing(request), lambda ending: setattr(request, "ending", ending))
        finally:
            request.cancelled.set()  # its row stops within a step; a request still waiting is skipped
            self._withdraw(request)
            request.done.wait()
            result = GenerationStats(
                prompt_tokens=prompt_tokens, new_tokens=request.new_tokens, history_turns_dropped=dropped,
                finish=("marker" if request.ending == "marker" else "stopped" if request.ending is None else
                        "eos" if request.eos else "length"),
                seconds_to_first_token=request.seconds_to_first_text, seconds=time.perf_counter() - request.created)
            self.last = result
            if stats is not None:
                stats.__dict__.update(result.__dict__)
        if request.error is not None:
            raise request.error

    def _admit(self, request: _Request) -> None:
        with self.cond:
            if self.closed:
                raise BusyError("The server is shutting down. Retry in a moment.")
            if len(self.waiting) >= self.max_waiting:
                raise BusyError(f"The server is busy: {self.running} answers are being written and {len(self.waiting)} "
                                "more are waiting. Retry in a few seconds.")
            self.waiting.append(request)
            if 0 < self.running < self.max_batch:
                self.pause.set()
            self.cond.notify_all()

    def _withdraw(self, request: _Request) -> None:
        with self.cond:
            if request in self.waiting:
                self.waiting.remove(request)
                request.done.set()

    def answer(self, message: str, history: list[dict] | None = None, **kwargs) -> str:
        return last_text(self.stream(message, history, **kwargs))

    def _growing(self, request: _Request):
        """The row's whole answer so far, decoded after each token. A token that ends inside a character waits for
        the rest; at the very end the answer is shown as it is, as ChatModel shows it."""
        ids, held = [], None
        while (token := request.tokens.get()) is not _END:
            ids.append(token)
            answer = self.chat.tokenizer.decode(ids, skip_special_tokens=True)
            if answer.endswith("\ufffd"):
                held = answer
                continue
            held = None
            if request.seconds_to_first_text is None:
                request.seconds_to_first_text = time.perf_counter() - request.created
            yield answer
        if held is not None:
            yield held

    # --------------------------------------------------------------------------------------- worker

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.closed:
                    self.cond.wait()
                if self.closed:
                    for request in self.waiting:
                        request.done.set()
                        request.tokens.put(_END)
                    return
                # Requests sent together are answered together: gather while they keep arriving (a short while).
                deadline = time.perf_counter() + 5 * self.gather_seconds
                while len(self.waiting) < self.max_batch and time.perf_counter() < deadline:
                    seen = len(self.waiting)
                    self.cond.wait(self.gather_seconds)
                    if len(self.waiting) == seen:
                        break
                batch = self._next_batch()
                self.running = len(batch)
                self.batch_sizes.append(len(batch))
                self.pause.clear()
            resumed = []
            try:
                resumed = on_torch_thread(self._generate, batch)
            except Exception as e:  # every reader of the batch learns it; the worker serves the next batch
                logger.exception("batched generation failed")
                for request in batch:
                    request.error = e
            finally:
                with self.cond:
                    self.running = 0
                    self.waiting.extendleft(reversed(resumed))  # first in the next batch, in their order
                for request in batch:
                    if request not in resumed:
                        request.tokens.put(_END)
                        request.done.set()

    def _next_batch(self) -> list[_Request]:
        """The oldest waiting request and up to max_batch - 1 more with its settings, oldest first."""
        if not self.waiting:
            return []
        settings = self.waiting[0].settings
        batch = [r for r in self.waiting if r.settings == settings and not r.cancelled.is_set()][: self.max_batch]
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.done.set()
        for request in batch:
            self.waiting.remove(request)
        return batch

    def _generate(self, batch: list[_Request]) -> list[_Request]:
        """One generate() over `batch`; returns the rows paused before their end, to resume."""
        if not batch:
            return []
        from transformers import StoppingCriteriaList

        tokenizer, model = self.chat.tokenizer, self.chat.model
        pad = self.chat._pad_token_id
        # A resumed row continues from its prompt and the tokens it has made, recomputed in this batch's prefill.
        encoded = [e + r.generated for e, r in zip(tokenizer([r.prompt for r in batch], add_special_tokens=False)["input_ids"], batch)]
        rows = _Rows(batch, tokenizer.eos_token_id, self.pause, self.min_steps_before_pause)
        temperature, top_p, repetition_penalty, min_new_tokens = batch[0].settings
        with torch.inference_mode():
            model.generate(**left_padded(encoded, pad, model.device),
                           max_new_tokens=max(r.max_new_tokens - r.new_tokens for r in batch), min_new_tokens=min_new_tokens,
                           repetition_penalty=repetition_penalty, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                           streamer=rows, stopping_criteria=StoppingCriteriaList([rows]), **sampling_options(temperature, top_p),
                           **self.chat.generate_options)
        return rows.unfinished() if rows.paused else []

