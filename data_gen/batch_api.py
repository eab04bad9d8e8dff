"""OpenAI's Batch API for generate and translate (--batch_api): half the price, answered within 24 h.

    job = BatchJob(client, out_path, identity={"command": "translate", ...}, poll_interval=30)
    if job.state is None:                       # no batch open for this --out: make one
        job.start({custom_id: (prompt, covers), ...})
    results = job.run()                         # upload, create, poll, download -> answers and errors
    ...write results.answers to --out...
    job.finish()                                # the batch is in --out: forget it

A batch is billed once it exists, so a rerun must never make a second one for the same requests.
What the job knows lives in OUT.batch.json (next to --out), replaced atomically after each step; a
kill at any moment leaves one of these states, and a rerun of the same command continues from it:

  state                          a rerun
  (no file)                      builds the requests and starts over: nothing was sent
  nonce, covers                  uploads OUT.batch.input.jsonl, unless a file named
  (+ the input file)               alpaca-medis-NONCE.jsonl is already on the server (a kill after
                                   files.create, before its id was saved): that one is used
  + input_file_id                creates the batch, unless one with metadata alpaca_medis_nonce=NONCE
                                   exists (a kill after batches.create, before its id was saved)
  + batch_id                     polls that batch, downloads its results, writes what --out lacks
  (file removed)                 the batch is in --out; nothing left to collect

The same look-up guards our own retries: a create that timed out may still have happened, so a retry
looks before it sends again. `covers` says what each request is for (translate: its source indices),
so results are matched by custom_id, never by position. Requests the batch did not answer (an error
line, expired or cancelled before their turn) come back in `errors` with a short reason.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen.client import Answer, ChatClient, ClientError
from data_gen.output import OutputError, write_atomic

logger = logging.getLogger(__name__)

STATE_SUFFIX = ".batch.json"
INPUT_SUFFIX = ".batch.input.jsonl"
STATE_VERSION = 1
ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # OpenAI's limit per batch; larger jobs run as several batches, one after another
NAME_PREFIX = "alpaca-medis-"
METADATA_KEY = "alpaca_medis_nonce"
WHAT = "Batch API"  # names these calls in errors
TERMINAL = ("completed", "failed", "expired", "cancelled")
LOOKBACK = 600  # seconds: batches listed newest first; older than the state (less this slack) cannot be ours


def state_path(out: Path) -> Path:
    return Path(str(out) + STATE_SUFFIX)


def refuse_open_batch(out: Path) -> None:
    """Without --batch_api, a run must not request what an open batch covers: that would pay twice."""
    path = state_path(out)
    if path.exists():
        raise OutputError(f"{path}: a Batch API batch for {out} is open. Rerun with --batch_api to collect it; or, "
                          f"to give it up, cancel it on the server and delete {path}.")


@dataclass
class BatchResults:
    batch_id: str
    status: str
    covers: dict[str, Any]  # custom_id -> what the request is for
    answers: dict[str, Answer]  # custom_id -> the model's answer
    errors: dict[str, str]  # custom_id -> why it has none

    def summary(self) -> str:
        line = (f"Batch API {self.batch_id}: {self.status}; {len(self.covers)} requests, {len(self.answers)} answered, "
                f"{len(self.errors)} not")
        if self.errors:
            line += " (" + ", ".join(f"{why} {n}" for why, n in Counter(self.errors.values()).most_common()) + ")"
        return line


class BatchJob:
    """The one batch open for an output file: start it, run it to its end, finish it."""

    def __init__(self, client: ChatClient, out: Path, identity: dict, poll_interval: float, progress: bool = True):
        self.client, self.poll_interval, self.progress = client, poll_interval, progress
        self.path, self.input_path = state_path(out), Path(str(out) + INPUT_SUFFIX)
        self.identity = {"base_url": client.base_url.rstrip("/"), "model": client.model, **identity}
        self.state = self._load()

    def _load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_VERSION or not isinstance(state.get("covers"), dict):
                raise ValueError("unknown layout")
        except (ValueError, AttributeError) as e:
            raise OutputError(f"{self.path}: not a Batch API state file of this tool ({e}). If no batch is open for "
                              "this --out, delete it.") from None
        if state.get("identity") != self.identity:
            raise OutputError(f"{self.path}: its batch was made with {state.get('identity')}, this run has "
                              f"{self.identity}. Rerun with those flags to collect it, or cancel it on the server "
                              f"and delete {self.path}.")
        return state

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.state, ensure_ascii=False, indent=1))

    def start(self, requests: dict[str, tuple[str, Any]]) -> None:
        """Save the requests (custom_id -> (prompt, covers)) and what a rerun needs before sending anything."""
        lines = ({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": self.client.request_body(prompt)}
                 for cid, (prompt, _) in requests.items())
        write_atomic(self.input_path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        self.state = {"version": STATE_VERSION, "identity": self.identity, "nonce": uuid.uuid4().hex,
                      "created_at": int(time.time()), "covers": {cid: covers for cid, (_, covers) in requests.items()},
                      "input_file_id": None, "batch_id": None}
        self._save()

    def run(self) -> BatchResults:
        self._upload()
        self._create()
        return self._collect(self._wait())

    def finish(self) -> None:
        """The results are in --out: forget the batch."""
        self.path.unlink(missing_ok=True)
        self.input_path.unlink(missing_ok=True)
        self.state = None

    # -------------------------------------------------------------------------------- the steps

    def _upload(self) -> None:
        if self.state["input_file_id"]:
            return
        name = f"{NAME_PREFIX}{self.state['nonce']}.jsonl"
        if not self.input_path.exists() and self._find_upload(name) is None:
            raise OutputError(f"{self.input_path} is missing and was never uploaded. Delete {self.path} and rerun "
                              "to build the batch again.")

        def upload():
            return self.client.api.files.create(file=(name, self.input_path.read_bytes(), "application/jsonl"),
                                                purpose="batch")
        self.state["input_file_id"] = self._once("upload_sent", lambda: self._find_upload(name), upload).id
        self._save()
        logger.info("uploaded %d requests as %s", len(self.state["covers"]), self.state["input_file_id"])

    def _create(self) -> None:
        if self.state["batch_id"]:
            return

        def create():
            return self.client.api.batches.create(input_file_id=self.state["input_file_id"], endpoint=ENDPOINT,
                                                  completion_window="24h", metadata={METADATA_KEY: self.state["nonce"]})
        self.state["batch_id"] = self._once("create_sent", self._find_batch, create).id
        self._save()
        self.input_path.unlink(missing_ok=True)  # on the server now
        logger.info("batch %s created; %s keeps its id, so a rerun collects it instead of paying again",
                    self.state["batch_id"], self.path)

    def _once(self, flag: str, find, send):
        """send() with our retries, but in effect at most once: after a first attempt (in this run or a
        killed one) may have reached the server, every further attempt looks for its result first."""
        def attempt():
            if self.state.get(flag):
                found = find()
                if found is not None:
                    return found
            else:
                self.state[flag] = True
                self._save()
            return send()
        return self.client.call(attempt, WHAT)

    def _find_upload(self, name: str):
        try:
            files = self.client.call(lambda: self.client.api.files.list(purpose="batch"), WHAT)
        except ClientError as e:  # a server that cannot list files: at worst a second copy is stored
            logger.warning("cannot look for an earlier upload (%s); uploading", e)
            return None
        return next((f for f in files if f.filename == name), None)

    def _find_batch(self):
        oldest = self.state["created_at"] - LOOKBACK
        for batch in self.client.call(lambda: self.client.api.batches.list(limit=100), WHAT):
            if (batch.metadata or {}).get(METADATA_KEY) == self.state["nonce"]:
                return batch
            if batch.created_at < oldest:
                break
        return None

    def _wait(self):
        from tqdm import tqdm

        batch_id, status = self.state["batch_id"], None
        with tqdm(total=len(self.state["covers"]), unit="req", desc="batch", dynamic_ncols=True,
                  disable=not self.progress) as bar:
            while True:
                batch = self.client.call(lambda: self.client.api.batches.retrieve(batch_id), WHAT)
                counts = batch.request_counts
                if counts is not None:
                    bar.update(counts.completed + counts.failed - bar.n)
                if batch.status != status:
                    status = batch.status
                    bar.set_postfix_str(status)
                    logger.info("batch %s: %s", batch_id, status)
                if status in TERMINAL:
                    return batch
                time.sleep(self.poll_interval)

    def _collect(self, batch) -> BatchResults:
        if batch.status == "failed":  # the input was refused: nothing ran, nothing is billed
            errors = "; ".join(e.message or e.code or "?" for e in (batch.errors.data or [])) if batch.errors else ""
            self.finish()
            raise ClientError(f"batch {batch.id} failed: {errors or 'no reason given'}. Nothing in it was answered or "
                              f"billed; {self.path} is removed, so a rerun makes a new batch")
        covers = self.state["covers"]
        answers, errors = {}, {}
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            cid, response = line.get("custom_id"), line.get("response") or {}
            if cid not in covers or cid in answers:
                continue
            if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                answers[cid] = self.client.account(response["body"], batch=True)
                errors.pop(cid, None)
            else:
                errors[cid] = _reason(line)
        for cid in covers:
            if cid not in answers and cid not in errors:
                errors[cid] = "missing" if batch.status == "completed" else batch.status
        return BatchResults(batch.id, batch.status, covers, answers, errors)

    def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        text = self.client.call(lambda: self.client.api.files.content(file_id), WHAT).text
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                if line.strip():
                    logger.warning("%s, line %d: not JSON; its request counts as unanswered", file_id, number)
        return [line for line in lines if isinstance(line, dict)]


def _reason(line: dict) -> str:
    """A short, countable reason for an error line: the error code, or the HTTP status."""
    error = line.get("error")
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        return str(error.get("code") or error.get("message"))
    status = (line.get("response") or {}).get("status_code")
    return f"HTTP {status}" if status else "error"
