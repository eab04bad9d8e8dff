"""A preference set from a model's own failures on its training split: the reference answer is chosen, the
model's answer rejected where it loops, never stops or leaves Indonesian (trainer/eval_report.py's checks).

    python -m trainer.preference_set --model models/alpaca-medis-270m --data_path ../shared/data/GenMedGPT-5k-id.json \
        --limit 1000 --out out/preferences/dpo.jsonl

Only training-split records are asked (the split trainer.train made, seed 42, --val_set_size as the model's
train_summary.json records), so the held-out split stays unseen by preference tuning too. Each record is asked
in both prompt shapes, greedy, as trainer.evaluate asks. Answers are appended to `<out>.answers.jsonl` as they
come, so an interrupted run resumes where it stopped; the preference file is rewritten from them at the end.
`--method kto` writes unpaired records instead: the rejected answers (label false) and the references (true).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from trainer import records as record_lib
from trainer.defaults import QUANTIZE_CHOICES
from trainer.eval_report import has_repetition, is_indonesian
from trainer.evaluate import greedy_answers, held_out_share, load_chat, select_records
from trainer.models import ModelError
from trainer.preferences import METHODS
from trainer.prompts import SHAPES, messages_for

logger = logging.getLogger(__name__)

CHUNK = 64  # answers generated between two appends to the answers file


def failures(answer: str, finish: str) -> list[str]:
    """Why an answer is rejected: it loops, it never stopped, it is not Indonesian (none: it is kept)."""
    reasons = []
    if has_repetition(answer):
        reasons.append("loops")
    if finish != "eos":
        reasons.append("no_stop")
    if not is_indonesian(answer):
        reasons.append("not_indonesian")
    return reasons


def preference_records(asked: list[dict], method: str) -> list[dict]:
    """DPO pairs (reference chosen, failed answer rejected) or KTO examples from the answered records."""
    out = []
    for row in asked:
        if not row["reasons"]:
            continue
        if method == "dpo":
            out.append({"messages": row["messages"], "chosen": row["reference"], "rejected": row["answer"],
                        "reasons": row["reasons"]})
        else:
            out.append({"messages": row["messages"], "completion": row["answer"], "label": False, "reasons": row["reasons"]})
            out.append({"messages": row["messages"], "completion": row["reference"], "label": True})
    return out


def read_answers(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the SFT model or adapter whose failures are collected")
    parser.add_argument("--data_path", required=True, help="the Alpaca records it was trained on")
    parser.add_argument("--val_set_size", type=float, default=None, help="as in training (default: the model's train_summary.json)")
    parser.add_argument("--limit", type=int, default=0, help="ask the first N training records (0 = all)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="prompt shapes, comma-separated (default %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="answer budget (default %(default)s, as the model's eval)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none")
    parser.add_argument("--template", default=None, help="for a model without a chat_template")
    parser.add_argument("--method", choices=METHODS, default="dpo", help="paired (dpo) or unpaired (kto) records")
    parser.add_argument("--out", required=True, help="the preference records (JSON Lines)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    shapes = [s for s in args.shapes.split(",") if s]
    if not shapes or any(s not in SHAPES for s in shapes):
        parser.error(f"--shapes {args.shapes!r}: choose from {', '.join(SHAPES)}")
    answers_path = args.out + ".answers.jsonl"
    try:
        share = held_out_share([args.model], args.data_path, args.val_set_size)
        records = select_records(args.data_path, "train", share, args.limit)
        todo = [(i, shape) for i in range(len(records)) for shape in shapes]
        done = {(row["record"], row["shape"]) for row in read_answers(answers_path)}
        todo = [key for key in todo if key not in done]
        logger.info("%d training records x %d shapes: %d answered already (%s), %d to ask",
                    len(records), len(shapes), len(done), answers_path, len(todo))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if todo:
            chat = load_chat(args.model, args.template, getattr(torch, args.dtype), args.quantize)
            logger.info("%s: %s", args.model, chat.settings)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            conversations = [messages_for(records[i], shape) for i, shape in chunk]
            answered = greedy_answers(chat, conversations, args.max_new_tokens, args.batch_size,
                                      f"answers {start + len(chunk)}/{len(todo)}")
            with open(answers_path, "a", encoding="utf-8") as f:
                for (i, shape), messages, (answer, finish) in zip(chunk, conversations, answered):
                    f.write(json.dumps({"record": i, "shape": shape, "messages": messages, "answer": answer, "finish": finish,
                                        "reference": records[i]["output"], "reasons": failures(answer, finish)},
                                       ensure_ascii=False) + "\n")
    except (record_lib.DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    asked = read_answers(answers_path)
    out = preference_records(asked, args.method)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    failed = [row for row in asked if row["reasons"]]
    by_reason = {r: sum(r in row["reasons"] for row in failed) for r in ("loops", "no_stop", "not_indonesian")}
    print(f"{len(asked)} answers, {len(failed)} rejected ({', '.join(f'{k} {v}' for k, v in by_reason.items())}): "
          f"{len(out)} {args.method} records in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
