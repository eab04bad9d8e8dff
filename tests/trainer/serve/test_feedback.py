"""trainer/serve/feedback.py: rating records in trainer/preferences.py's schema, appended whole and fsync'd, and
pushed by huggingface_hub's CommitScheduler to the Hub stand-in of tests/trainer/hub/test_push.py."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, free_port, wait_for
from trainer.preferences import FEEDBACK_FIELDS
from trainer.serve.feedback import FeedbackError, FeedbackStore, Ratings, plain_messages, rating_record, weights_revision
from trainer.serve.redflags import NOTICE

sys.path.insert(0, str(ROOT / "tests" / "trainer" / "hub"))
from test_push import TOKEN, serve_hub  # noqa: E402  the Hub stand-in

SETTINGS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}
FLAGGED = NOTICE.format(label="tanda stroke") + "\n\nSegera bawa ke rumah sakit."


class Named:  # what Ratings reads of a chat: its name (and, for a loaded model, a tokenizer)
    name = "some/model"


def record(**changes) -> dict:
    fields = dict(messages=[{"role": "user", "content": "Saya demam."}], answer="Minum air putih.", rating="like",
                  correction=None, settings=SETTINGS, model="m", revision="r")
    return rating_record(**{**fields, **changes})


def test_a_record_has_exactly_the_documented_fields():
    r = record(rating="dislike", correction="  Periksa ke dokter.  ")
    assert tuple(r) == FEEDBACK_FIELDS
    assert r["correction"] == "Periksa ke dokter." and r["rating"] == "dislike" and len(r["id"]) == 32
    assert r["time"].endswith("Z") and r["settings"] == SETTINGS and isinstance(r["settings"]["max_new_tokens"], int)
    assert record(correction="   ")["correction"] is None


def test_the_page_notice_is_not_part_of_the_conversation_or_the_answer():
    page = [{"role": "user", "content": [{"type": "text", "text": "Ayah saya bicaranya pelo."}]},
            {"role": "assistant", "content": [{"type": "text", "text": FLAGGED}]},
            {"role": "user", "content": "Lalu?"}]
    assert plain_messages(page) == [{"role": "user", "content": "Ayah saya bicaranya pelo."},
                                    {"role": "assistant", "content": "Segera bawa ke rumah sakit."},
                                    {"role": "user", "content": "Lalu?"}]
    assert record(messages=page, answer=FLAGGED)["answer"] == "Segera bawa ke rumah sakit."


@pytest.mark.parametrize("changes, message", [
    ({"rating": "meh"}, "rating must be one of like, dislike, not 'meh'"),
    ({"answer": ""}, "the answer is missing"),
    ({"answer": None}, "the answer is missing"),
    ({"messages": []}, "ending with the user's message"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "ending with the user's"),
    ({"correction": 3}, "the correction must be text or null"),
    ({"correction": "x" * 4001}, "the limit is 4000"),
    ({"settings": {"temperature": 0.0}}, "settings must give max_new_tokens"),
    ({"settings": None}, "settings must give"),
])
def test_bad_input_is_a_message(changes, message):
    with pytest.raises(FeedbackError, match=message):
        record(**changes)


def test_a_lone_question_is_the_conversation():
    assert record(messages="Saya batuk.")["messages"] == [{"role": "user", "content": "Saya batuk."}]


def test_the_revision_is_the_one_asked_for_else_a_hash_of_the_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    revision = weights_revision(str(tmp_path))
    assert revision == "sha256:" + hashlib.sha256(b"weights").hexdigest()[:12]
    assert Ratings(FeedbackStore(tmp_path / "r.jsonl"), Named(), "v1.0").revision() == "v1.0"
    assert Ratings(FeedbackStore(tmp_path / "r.jsonl"), Named()).revision() is None  # a --backend model
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter")
    assert weights_revision(str(adapter)) not in (None, revision)


def test_concurrent_appends_are_whole_lines(tmp_path):
    store = FeedbackStore(tmp_path / "feedback" / "ratings.jsonl")
    long = "panjang " * 2000  # 16 kB lines: larger than a pipe's atomic write, still never interleaved
    threads = [threading.Thread(target=lambda: [store.append(record(answer=long)) for _ in range(10)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = store.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80 and all(json.loads(line)["answer"] == long for line in lines)
    assert store.path.stat().st_mode & 0o777 == 0o600  # health questions: readable by the server's user only


def scheduled_store(tmp_path: Path, url: str, every_minutes: float = 10.0) -> FeedbackStore:
    from huggingface_hub import HfApi

    return FeedbackStore(tmp_path / "feedback" / "ratings.jsonl", "me/medis-feedback", every_minutes,
                         api=HfApi(endpoint=url, token=TOKEN))


@pytest.fixture
def online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (conftest.py); these tests reach the stand-in (or nothing) over HTTP."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_the_scheduler_pushes_the_file_to_a_dataset_repo(tmp_path, online):
    with serve_hub() as hub:
        store = scheduled_store(tmp_path, hub.url)
        (store.path.parent / "notes.txt").write_text("not a rating")  # in the folder, never uploaded
        wait_for(lambda: store.scheduler is not None, seconds=30)
        store.append(record(rating="dislike", correction="Ke dokter."))
        store.scheduler.trigger().result()
        files = hub.files("me/medis-feedback", "dataset")
        assert list(files) == [f"runs/{store.run}/ratings.jsonl"]
        assert json.loads(files[f"runs/{store.run}/ratings.jsonl"])["correction"] == "Ke dokter."
        store.append(record())
        store.scheduler.trigger().result()
        assert len(hub.files("me/medis-feedback", "dataset")[f"runs/{store.run}/ratings.jsonl"].splitlines()) == 2
        assert hub.repos[("dataset", "me/medis-feedback")]["private"] and hub.unhandled == []
        store.scheduler.stop()


def test_an_unreachable_hub_is_logged_and_ratings_stay_local(tmp_path, caplog, online):
    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.ERROR, logger="trainer.serve.feedback"):
        store = scheduled_store(tmp_path, dead)
        store.append(record())
        wait_for(lambda: "cannot reach the dataset me/medis-feedback (ConnectError" in caplog.text, seconds=30)
    assert store.scheduler is None and len(store.path.read_text().splitlines()) == 1
    assert TOKEN not in caplog.text
