"""Translate an Alpaca dataset (e.g. ChatDoctor's English GenMedGPT-5k) into Indonesian through any
OpenAI-compatible chat server, keeping each record aligned with its source.

    python -m data_gen translate --base_url http://127.0.0.1:8000/v1 --model M \
        --data_path ../shared/data/chatdoctor5k.json --out chatdoctor5k-id.jsonl --limit 100

Several records go in one request (--batch_size, default 5), as a JSON array with their indices;
the answer is expected as JSON too. Each output record is the translation plus `source_index`, its
position in --data_path. A translation is accepted only when every field that was sent comes back
as a non-empty string, differs from the English (an untranslated copy is caught), and looks
Indonesian (a stopword check). Records that fail are retried one per request, up to
--record_retries times; the ones still failing are listed in the summary (exit code 3), never
dropped silently, and a rerun tries them again.

GenMedGPT's constant instruction ("If you are a doctor, ...") is not sent: it becomes the exact
instruction of GenMedGPT-5k-id, so the whole output shares one instruction, as that dataset does.

Rerunning the same command resumes: source indices already in --out are skipped (an incomplete last
line left by a kill is dropped with a warning).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

from data_gen.client import ChatClient, add_client_args, check_client_args, setup_logging
from data_gen.generate import JsonlOutput, OutputError, parse_json_objects, run_resumable
from data_gen.language import looks_like
from data_gen.rouge import tokenize
from trainer.records import DOCTOR_INSTRUCTION, FIELDS, load_records

logger = logging.getLogger(__name__)

# Instructions with a fixed translation: not sent, and identical across the output.
KNOWN_INSTRUCTIONS = {DOCTOR_INSTRUCTION["en"]: DOCTOR_INSTRUCTION["id"]}
MIN_WORDS_FOR_COPY_CHECK = 3  # a one- or two-word field ("Pneumonia.") may rightly stay as it is

PROMPT = """\
Translate the text fields of each record below from English into natural, medically accurate \
Indonesian. The records are doctor-patient exchanges: keep the patient's voice in first person and \
address the patient as "Anda". Keep drug names and medical terms that Indonesian doctors use as they \
are; do not add, drop or summarize information. Keep every "index" unchanged.

Answer with only a JSON array, one object per record, in the same order and with the same keys \
({keys}), no explanations:

```json
{records}
```"""


@dataclass
class Progress:
    existing: int = 0  # source records already in --out
    translated: int = 0  # written by this run
    todo: int = 0
    source: str = ""
    individual_retries: int = 0
    first_failures: Counter = field(default_factory=Counter)  # reasons, on the batch attempt
    failed: dict = field(default_factory=dict)  # source index -> last reason, after all retries

    @property
    def written_now(self) -> int:
        return self.translated

    def summary(self, args: argparse.Namespace, client: ChatClient, stop: str) -> str:
        lines = [
            f"translate: {args.out}: {self.existing + self.translated} records ({self.existing} before this run, "
            f"{self.translated} translated now) of {self.todo + self.existing} selected from {self.source}; {stop}",
            f"failed on the first attempt {sum(self.first_failures.values())}"
            + (f" ({_reasons(self.first_failures)})" if self.first_failures else "")
            + f"; retried one by one {self.individual_retries} time(s)",
        ]
        if self.failed:
            shown = ", ".join(f"{i} ({reason})" for i, reason in sorted(self.failed.items())[:50])
            more = f", ... and {len(self.failed) - 50} more" if len(self.failed) > 50 else ""
            lines.append(f"NOT translated {len(self.failed)} (source index, reason): {shown}{more}")
        lines.append(client.usage.summary())
        return "\n".join(lines)


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common())


def fields_to_send(record: dict) -> list[str]:
    """The fields a translation must carry: the non-empty ones, less a known instruction."""
    return [k for k in FIELDS if record[k].strip() and not (k == "instruction" and record[k] in KNOWN_INSTRUCTIONS)]


def build_prompt(batch: list[tuple[int, dict]]) -> str:
    items = [{"index": i, **{k: r[k] for k in fields_to_send(r)}} for i, r in batch]
    keys = [k for k in ("index", *FIELDS) if any(k in item for item in items)]
    return PROMPT.format(keys=", ".join(f'"{k}"' for k in keys),
                         records=json.dumps(items, ensure_ascii=False, indent=1))


def check_translation(source: dict, answer: dict) -> tuple[dict | None, str | None]:
    """(Indonesian record, None), or (None, reason) when the answer for `source` is not a translation."""
    record = {}
    for k in FIELDS:
        if not source[k].strip():
            record[k] = ""  # nothing to translate: stays empty whatever came back
            continue
        if k == "instruction" and source[k] in KNOWN_INSTRUCTIONS:
            record[k] = KNOWN_INSTRUCTIONS[source[k]]
            continue
        value = answer.get(k)
        if value is None:
            return None, "missing_field"
        if not isinstance(value, str):
            return None, "non_string"
        if not value.strip():
            return None, "empty"
        if _same(value, source[k]) and len(tokenize(source[k])) >= MIN_WORDS_FOR_COPY_CHECK:
            return None, "untranslated"
        if not looks_like(value, "id"):
            return None, "not_indonesian"
        record[k] = value.strip()
    return record, None


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def parse_answer(text: str, batch: list[tuple[int, dict]]) -> dict[int, dict]:
    """Answer objects by source index. Objects without an index are matched by position, but only
    when none has one and their count equals the batch's (anything else could misalign records)."""
    objects = parse_json_objects(text, keys=("index", *FIELDS))
    by_index: dict[int, dict] = {}
    for obj in objects:
        index = obj.get("index")
        if isinstance(index, str) and index.strip().isdigit():
            index = int(index)
        if isinstance(index, int) and not isinstance(index, bool):
            by_index.setdefault(index, obj)
    if not by_index and len(objects) == len(batch):
        by_index = {i: obj for (i, _), obj in zip(batch, objects)}
    return by_index


def translate_batch(batch: list[tuple[int, dict]], client: ChatClient, out: JsonlOutput, progress: Progress) -> dict[int, str]:
    """One request; writes the good translations; returns {source index: reason} for the rest."""
    answer = client.complete(build_prompt(batch))
    answers = parse_answer(answer.text, batch)
    if not answers:
        logger.warning("answer %d: no JSON records found; it starts: %r", client.usage.requests, answer.text[:200])
    failed = {}
    for index, source in batch:
        if index not in answers:
            failed[index] = ("unparsable" if not answers else "truncated" if answer.finish_reason == "length"
                             else "missing")
            continue
        record, reason = check_translation(source, answers[index])
        if record is None:
            failed[index] = reason
            continue
        out.append({**record, "source_index": index})
        progress.translated += 1
    return failed


def translate(args: argparse.Namespace, client: ChatClient, out: JsonlOutput, progress: Progress) -> tuple[str, int]:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm


    source = load_records(args.data_path).records  # strict: a skipped record would shift every index
    progress.source = args.data_path
    done = existing_indices(out)
    end = len(source) if not args.limit else min(len(source), args.start + args.limit)
    selected = range(args.start, end)
    todo = [(i, source[i]) for i in selected if i not in done]
    progress.existing = len(selected) - len(todo)
    progress.todo = len(todo)
    if not todo:
        return "nothing left to translate", 0
    with logging_redirect_tqdm(), tqdm(total=len(selected), initial=progress.existing, unit="rec", dynamic_ncols=True,
                                       disable=args.no_progress) as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            before = progress.translated
            failed = translate_batch(batch, client, out, progress)
            progress.first_failures.update(failed.values())
            for index, reason in failed.items():
                for _ in range(args.record_retries):
                    progress.individual_retries += 1
                    again = translate_batch([(index, source[index])], client, out, progress)
                    if not again:
                        break
                    reason = again[index]
                else:
                    progress.failed[index] = reason
                    logger.warning("source record %d not translated (%s) after %d individual retries",
                                   index, reason, args.record_retries)
            bar.update(progress.translated - before + sum(1 for i, _ in batch if i in progress.failed))
            bar.set_postfix_str(f"failed {len(progress.failed)} | retried {progress.individual_retries} | "
                                f"tokens {client.usage.tokens:,}", refresh=True)
    if progress.failed:
        print(f"error: {len(progress.failed)} record(s) could not be translated (listed in the summary below). "
              "Rerun the same command to try them again.", file=sys.stderr)
        return "finished with failures", 3
    return "finished", 0


def existing_indices(out: JsonlOutput) -> set[int]:
    """Source indices already in --out; every line must be a translation this tool wrote."""
    done = set()
    for lineno, obj in out.lines():
        index = obj.get("source_index") if isinstance(obj, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not all(isinstance(obj.get(k), str) for k in FIELDS):
            raise OutputError(f"{out.path}, line {lineno}: not a translated record (Alpaca fields and an integer "
                              "source_index). Pass a new --out, or the output of an earlier translate run.")
        done.add(index)
    return done


def build_parser(prog: str = "python -m data_gen translate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True, help="English Alpaca records: JSON array or JSON Lines")
    parser.add_argument("--out", required=True, help="JSON Lines of translations with source_index; rerun to resume")
    parser.add_argument("--start", type=int, default=0, help="first source index to translate (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="translate at most this many source records from "
                        "--start (0 = to the end)")
    parser.add_argument("--batch_size", type=int, default=5, help="records per request (default %(default)s)")
    parser.add_argument("--record_retries", type=int, default=2, help="requests per failed record, one record each, "
                        "before it is reported as not translated (default %(default)s)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_client_args(parser, max_tokens=4096, temperature=0.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    problems = check_client_args(args)
    if args.start < 0 or args.limit < 0:
        problems.append("--start and --limit must be 0 or more.")
    if args.batch_size < 1:
        problems.append("--batch_size must be at least 1.")
    if args.record_retries < 0:
        problems.append("--record_retries must be 0 or more.")
    if problems:
        print("error: " + "\n  ".join(problems), file=sys.stderr)
        return 2
    return run_resumable(args, translate, Progress())


if __name__ == "__main__":
    sys.exit(main())
