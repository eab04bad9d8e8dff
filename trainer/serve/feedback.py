"""The page's ratings: one JSON Lines record per 👍/👎 (the schema is trainer/preferences.py's), appended to a
local file and, on a Space, pushed to a Hub dataset repo in the background.

    python app.py --feedback_file ratings.jsonl      # default: $ALPACA_MEDIS_HOME/feedback/ratings.jsonl
    FEEDBACK_REPO=user/alpaca-medis-feedback FEEDBACK_EVERY_MINUTES=5 python app.py

- A rating is acknowledged only after its line is on disk: one os.write of the whole line on an O_APPEND
  descriptor, under a lock, then os.fsync. A killed server loses no acknowledged rating, and concurrent raters
  never interleave lines.
- With FEEDBACK_REPO, huggingface_hub's CommitScheduler uploads the file every FEEDBACK_EVERY_MINUTES (default 5)
  with the token of the environment or the login cache. Each server run uploads to its own folder,
  `runs/<start time>-<random>/`, so a restarted Space (whose disk starts empty) never overwrites earlier
  ratings; a Space with persistent storage uploads its whole file again in each run's folder, so deduplicate on
  `id`. An unreachable Hub is logged and retried; ratings keep being written locally.
- A record holds what preference training needs and nothing about the rater: no IP address, cookie or session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from trainer.defaults import MAX_INPUT_CHARS
from trainer.models import home, is_adapter, resolve
from trainer.preferences import FEEDBACK_FIELDS, RATINGS
from trainer.prompts import ROLES
from trainer.serve.redflags import strip_notice

logger = logging.getLogger(__name__)

SETTINGS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")
MAX_CORRECTION_CHARS = MAX_INPUT_CHARS  # a correction is an answer: as long as a question may be


class FeedbackError(ValueError):
    """A rating that cannot be recorded; the message says what is wrong."""


def default_file() -> Path:
    return home() / "feedback" / "ratings.jsonl"


def text_of(content) -> str:
    """A chat message's text: a string, or the text parts of Gradio's list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def plain_messages(messages) -> list[dict]:
    """Chat messages as {"role", "content": text}, without the red-flag notice the page puts above answers."""
    turns = []
    for m in messages or []:
        text = text_of(m.get("content")) if isinstance(m, dict) else ""
        if text and m.get("role") in ROLES:
            turns.append({"role": m["role"], "content": strip_notice(text) if m["role"] == "assistant" else text})
    return turns


def rating_record(*, messages, answer, rating, correction, settings, model: str, revision: str | None) -> dict:
    """A FEEDBACK_FIELDS record, or FeedbackError naming every problem with the input."""
    problems = []
    if rating not in RATINGS:
        problems.append(f"rating must be one of {', '.join(RATINGS)}, not {rating!r}")
    answer = strip_notice(answer) if isinstance(answer, str) else ""
    if not answer.strip():
        problems.append("the answer is missing: rate an answer the model gave")
    if isinstance(messages, str):  # the API takes a lone question too
        messages = [{"role": "user", "content": messages}]
    turns = plain_messages(messages) if isinstance(messages, list) else []
    if not turns or turns[-1]["role"] != "user":
        problems.append("messages must be the conversation up to the answer, ending with the user's message")
    if correction is not None and not isinstance(correction, str):
        problems.append("the correction must be text or null")
    elif correction and len(correction) > MAX_CORRECTION_CHARS:
        problems.append(f"the correction has {len(correction)} characters; the limit is {MAX_CORRECTION_CHARS}")
    try:
        settings = {k: float(settings[k]) for k in SETTINGS}
        settings["max_new_tokens"] = int(settings["max_new_tokens"])
    except (KeyError, TypeError, ValueError):
        problems.append(f"settings must give {', '.join(SETTINGS)} as numbers")
    if problems:
        raise FeedbackError("; ".join(problems))
    record = {
        "id": uuid.uuid4().hex,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model,
        "revision": revision,
        "messages": turns,
        "answer": answer,
        "rating": rating,
        "correction": correction.strip() if correction and correction.strip() else None,
        "settings": settings,
    }
    assert tuple(record) == FEEDBACK_FIELDS
    return record


def weights_revision(name: str) -> str | None:
    """What identifies a model's weights when no revision was asked for: the commit of a Hub snapshot, else a
    short sha256 of the weights files (an adapter's own, for a LoRA folder). ~1 s per GB."""
    try:
        path = Path(resolve(name))
    except Exception:  # the model loaded, so this is a Hub id: its snapshot folder is named by its commit
        path = None
    if path is None or not path.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        return Path(cached).parent.name if isinstance(cached, str) else None
    pattern = "adapter_model.*" if is_adapter(str(path)) else "*.safetensors"
    files = sorted(path.glob(pattern)) or sorted(path.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:12]


def model_revision(chat, configured: str | None = None) -> str | None:
    """The revision a rating names: the one asked for (config.yaml's `revision:`), else weights_revision. A
    --backend RemoteChat's weights are the server's: None."""
    if configured:
        return configured
    if not hasattr(chat, "tokenizer"):  # RemoteChat
        return None
    return weights_revision(chat.name)


class FeedbackStore:
    """Appends records to `path`; with `repo_id`, a CommitScheduler pushes the file's folder (this file only)."""

    def __init__(self, path: str | Path | None = None, repo_id: str | None = None, every_minutes: float = 5.0,
                 api=None):
        self.path = Path(path or default_file()).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repo_id, self.every_minutes, self.api = repo_id, every_minutes, api
        self.scheduler = None
        self._lock = threading.Lock()
        if repo_id:
            self.run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
            threading.Thread(target=self._connect, name="feedback-hub", daemon=True).start()

    @classmethod
    def from_env(cls, path: str | Path | None = None) -> FeedbackStore:
        return cls(path, os.environ.get("FEEDBACK_REPO") or None, float(os.environ.get("FEEDBACK_EVERY_MINUTES") or 5))

    @property
    def lock(self) -> threading.Lock:
        # The scheduler's lock once it runs (its docs: append under it), so it never reads a file mid-write.
        return self.scheduler.lock if self.scheduler else self._lock

    def append(self, record: dict) -> None:
        """The record as one line, on disk (fsync'd) when this returns."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with self.lock:  # one write of the whole line: lines never interleave, the scheduler never reads half
                written = os.write(fd, line)
            if written != len(line):  # a full disk; the partial line is cut off by the next reader
                raise OSError(f"only {written} of {len(line)} bytes written to {self.path}")
            # Outside the lock: raters that wrote meanwhile share this flush (ext4 commits them together).
            os.fsync(fd)
        finally:
            os.close(fd)

    def _connect(self) -> None:
        """Start the CommitScheduler, retrying every interval while the Hub is unreachable."""
        from huggingface_hub import CommitScheduler

        while True:
            try:
                self.scheduler = CommitScheduler(
                    repo_id=self.repo_id, repo_type="dataset", folder_path=self.path.parent, every=self.every_minutes,
                    path_in_repo=f"runs/{self.run}", allow_patterns=[self.path.name], private=True, hf_api=self.api)
                logger.info("feedback: %s is pushed to the dataset %s every %g min", self.path, self.repo_id,
                            self.every_minutes)
                return
            except Exception as e:  # the token never shows: huggingface_hub's errors carry none
                logger.error("feedback: cannot reach the dataset %s (%s: %s); ratings stay in %s, retrying in %g min",
                             self.repo_id, type(e).__name__, e, self.path, self.every_minutes)
                time.sleep(self.every_minutes * 60)


class Ratings:
    """The page's ratings of one model: validated, stamped with the model's name and revision, stored."""

    def __init__(self, store: FeedbackStore, chat, configured_revision: str | None = None):
        self.store, self.chat, self.configured_revision = store, chat, configured_revision
        self._revision, self._revision_lock = None, threading.Lock()
        # Hash the weights now, in the background, so the first rating does not wait for it.
        threading.Thread(target=self.revision, name="feedback-revision", daemon=True).start()

    def revision(self) -> str | None:
        with self._revision_lock:  # hashed once, not once per rater arriving before it is done
            if self._revision is None:
                self._revision = (model_revision(self.chat, self.configured_revision),)
        return self._revision[0]

    def rate(self, messages, answer, rating, correction, settings) -> dict:
        """The stored record (on disk when this returns), or FeedbackError."""
        record = rating_record(messages=messages, answer=answer, rating=rating, correction=correction, settings=settings,
                               model=self.chat.name, revision=self.revision())
        self.store.append(record)
        return record
