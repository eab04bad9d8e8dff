"""Preference records and the page's ratings. Pure Python (no torch): data_gen and the page import it.

A rating from the page (`app.py`, one JSON Lines record each, `trainer/serve/feedback.py` writes them):

    {"id": "…", "time": "2026-12-05T13:40:00Z", "model": "alpaca-medis-270m", "revision": "…",
     "messages": [{"role": "user", "content": "…"}, …],      # the conversation up to the answer
     "answer": "…", "rating": "like" | "dislike", "correction": "…" | null,
     "settings": {"max_new_tokens": 200, "temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}}

Preference records `trainer.train --method dpo|kto` reads (TRL's formats, a prompt as a string or as chat
messages ending on a user turn):

    dpo: {"prompt" | "messages", "chosen": "…", "rejected": "…"}
    kto: {"prompt" | "messages", "completion": "…", "label": true | false}
"""

from __future__ import annotations

from trainer.prompts import conversation_messages, conversation_shape

FEEDBACK_FIELDS = ("id", "time", "model", "revision", "messages", "answer", "rating", "correction", "settings")
RATINGS = ("like", "dislike")
METHODS = ("dpo", "kto")
# The fields each preference method needs besides its prompt ("prompt" or "messages").
PREFERENCE_FIELDS = {"dpo": ("chosen", "rejected"), "kto": ("completion", "label")}


# ------------------------------------------------------------------------------- ratings -> preferences


def rating_problem(obj: object) -> str | None:
    """Why a parsed object is not a rating the page writes (naming the field or turn), or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [k for k in ("messages", "answer", "rating") if k not in obj]
    if missing:
        return f"missing field {', '.join(repr(k) for k in missing)} (a rating has {', '.join(FEEDBACK_FIELDS)})"
    if obj["rating"] not in RATINGS:
        return f"rating {obj['rating']!r} is unknown; use one of {', '.join(RATINGS)}"
    for k in ("answer", "correction"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            return f"field {k!r} is {type(obj[k]).__name__}, not a string"
    if not obj["answer"].strip():
        return "empty answer: nothing was rated"
    messages, reason = conversation_messages(obj["messages"])
    return reason or conversation_shape(messages, ends_with="user")


def _prompt(rating: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in rating["messages"]]


def _correction(rating: dict) -> str:
    return (rating.get("correction") or "").strip()


def kto_records(rating: dict) -> list[dict]:
    """A rating as KTO records: the rated answer labelled like/dislike, and a dislike's correction labelled good."""
    out = [{"messages": _prompt(rating), "completion": rating["answer"], "label": rating["rating"] == "like"}]
    if rating["rating"] == "dislike" and _correction(rating):
        out.append({"messages": _prompt(rating), "completion": rating["correction"], "label": True})
    return out


def dpo_record(rating: dict) -> dict | None:
    """A disliked answer with its correction as a DPO pair (correction chosen, answer rejected); None for any other
    rating: a like, or a dislike without a correction, has no pair."""
    if rating["rating"] != "dislike" or not _correction(rating):
        return None
    return {"messages": _prompt(rating), "chosen": rating["correction"], "rejected": rating["answer"]}

# ------------------------------------------------------------------------------- preference records


def prompt_messages(record: dict) -> list[dict]:
    """The conversation a preference record answers: its `messages`, or its `prompt` as one user turn."""
    if "messages" in record:
        return record["messages"]
    return [{"role": "user", "content": record["prompt"]}]


def _answer_text(value) -> str | None:
    """An answer as a string; TRL's conversational form (a list holding one assistant message) is accepted too."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    return value if isinstance(value, str) and value.strip() else None


def validate_preference(obj: object, method: str) -> tuple[dict | None, str | None]:
    """(normalized record, None) or (None, why it is invalid) for one DPO or KTO record."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if ("prompt" in obj) == ("messages" in obj):
        return None, "give the prompt as `prompt` (a string) or `messages` (chat turns ending on the user), exactly one"
    out: dict = {}
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            return None, "`prompt` must be a non-empty string"
        out["prompt"] = obj["prompt"]
    else:
        messages, reason = conversation_messages(obj["messages"])
        reason = reason or conversation_shape(messages, ends_with="user")
        if reason:
            return None, reason
        out["messages"] = messages
    missing = [k for k in PREFERENCE_FIELDS[method] if k not in obj]
    if missing:
        other = next(m for m in METHODS if m != method)
        hint = f" (this looks like {other} data: pass --method {other})" if all(k in obj for k in PREFERENCE_FIELDS[other]) else ""
        return None, f"missing field {', '.join(repr(k) for k in missing)} for --method {method}{hint}"
    if method == "dpo":
        for k in ("chosen", "rejected"):
            out[k] = _answer_text(obj[k])
            if out[k] is None:
                return None, f"`{k}` must be a non-empty string"
        if out["chosen"] == out["rejected"]:
            return None, "`chosen` and `rejected` are the same answer: nothing to prefer"
    else:
        out["completion"] = _answer_text(obj["completion"])
        if out["completion"] is None:
            return None, "`completion` must be a non-empty string"
        if not isinstance(obj["label"], bool):
            return None, f"`label` must be true (desirable) or false (undesirable), not {obj['label']!r}"
        out["label"] = obj["label"]
    return out, None
