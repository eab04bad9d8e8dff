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

--workers N keeps N requests in flight; translations are still written in source order (a request
that finishes early waits for the ones before it), so a kill leaves an unbroken run of records.
--batch_api sends the requests as OpenAI Batch API jobs instead (data_gen/batch_api.py); records the
batch could not translate go through the normal path (--batch_failed retry) or are listed (list).

Rerunning the same command resumes: source indices already in --out are skipped (an incomplete last
line left by a kill is dropped with a warning). Records that a rerun fills in after later ones were
written are put back in place: at the end of a run --out is sorted by source_index.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_gen.batch_api import MAX_REQUESTS, BatchJob, refuse_open_batch, state_path
from data_gen.client import Answer, ChatClient, Usage, add_client_args, check_client_args, setup_logging
from data_gen.generate import parse_json_objects, run_resumable
from data_gen.language import looks_like
from data_gen.output import JsonlOutput, OutputError
from data_gen.parallel import run_ordered
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
    batches: list = field(default_factory=list)  # one summary line per Batch API batch collected

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
            *self.batches,
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


@dataclass
class ChunkResult:
    """What one request's records came to, after their individual retries."""
    translated: dict[int, dict]  # source index -> output record
    first_failures: dict[int, str]  # source index -> reason, on the first attempt
    failed: dict[int, str] = field(default_factory=dict)  # still failing after the retries
    retries: int = 0


def check_answer(answer: Answer, batch: list[tuple[int, dict]]) -> tuple[dict[int, dict], dict[int, str]]:
    """The translations one answer holds for `batch`: ({source index: record}, {source index: reason})."""
    answers = parse_answer(answer.text, batch)
    if not answers:
        logger.warning("the answer for source records %s holds no JSON records; it starts: %r",
                       ", ".join(str(i) for i, _ in batch), answer.text[:200])
    good, failed = {}, {}
    for index, source in batch:
        if index not in answers:
            failed[index] = ("unparsable" if not answers else "truncated" if answer.finish_reason == "length"
                             else "missing")
            continue
        record, reason = check_translation(source, answers[index])
        if record is None:
            failed[index] = reason
        else:
            good[index] = {**record, "source_index": index}
    return good, failed


def request_translations(batch: list[tuple[int, dict]], client: ChatClient) -> tuple[dict[int, dict], dict[int, str]]:
    return check_answer(client.complete(build_prompt(batch)), batch)


def translate_chunk(batch: list[tuple[int, dict]], client: ChatClient, record_retries: int) -> ChunkResult:
    """One request for `batch`, then one request per failed record, up to record_retries each. Runs on
    a worker thread, so it writes nothing: write_chunk does, in order."""
    good, failed = request_translations(batch, client)
    result = ChunkResult(good, failed)
    sources = dict(batch)
    for index, reason in failed.items():
        for _ in range(record_retries):
            result.retries += 1
            again_good, again = request_translations([(index, sources[index])], client)
            good.update(again_good)
            if not again:
                break
            reason = again[index]
        else:
            result.failed[index] = reason
            logger.warning("source record %d not translated (%s) after %d individual retries", index, reason,
                           record_retries)
    return result


def write_chunk(result: ChunkResult, out: JsonlOutput, progress: Progress, bar, usage: Usage) -> None:
    """Append one request's translations in source order, and count the rest."""
    out.append_many([result.translated[index] for index in sorted(result.translated)])
    progress.translated += len(result.translated)
    progress.first_failures.update(result.first_failures.values())
    progress.individual_retries += result.retries
    progress.failed.update(result.failed)
    bar.update(len(result.translated) + len(result.failed))
    bar.set_postfix_str(f"failed {len(progress.failed)} | retried {progress.individual_retries} | "
                        f"tokens {usage.tokens:,}", refresh=True)


def translate_by_requests(todo: list[tuple[int, dict]], args: argparse.Namespace, client: ChatClient,
                          out: JsonlOutput, progress: Progress, bar) -> None:
    """--batch_size records per request, --workers requests at once, written in source order."""
    chunks = iter([todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)])
    run_ordered(lambda: next(chunks, None), lambda chunk: translate_chunk(chunk, client, args.record_retries),
                lambda _, result: write_chunk(result, out, progress, bar, client.usage), args.workers)


def translate_by_batch(todo: list[tuple[int, dict]], source: list[dict], args: argparse.Namespace, client: ChatClient,
                       out: JsonlOutput, progress: Progress, bar) -> list[tuple[int, dict]]:
    """Translate `todo` through Batch API batches, collecting the one left open by an earlier run
    first. Returns the records no batch translated, for the normal path; with --batch_failed list
    they are reported as failed instead, and a rerun puts them in a new batch."""
    job = BatchJob(client, out.path, {"command": "translate", "data_path": str(Path(args.data_path).resolve())},
                   args.poll_interval, progress=not args.no_progress)
    done, unanswered = existing_indices(out), {}
    selected = {i for i, _ in todo}
    while job.state is not None or (left := [(i, r) for i, r in todo if i not in done and i not in unanswered]):
        if job.state is None:
            job.start(batch_requests(left, args.batch_size))
        results = job.run()
        good, failed = batch_translations(results.covers, results.answers, results.errors, source, done, job)
        out.append_many([good[index] for index in sorted(good)])
        done.update(good)
        unanswered.update(failed)
        progress.translated += len(good)
        bar.update(len(selected.intersection(good)))
        progress.batches.append(f"{results.summary()}; records translated {len(good)}, not {len(failed)}"
                                + (f" ({_reasons(Counter(failed.values()))})" if failed else ""))
        job.finish()
    retry = [(i, source[i]) for i in sorted(unanswered) if i in selected]
    if args.batch_failed == "list":
        progress.failed.update((i, unanswered[i]) for i, _ in retry)
        bar.update(len(retry))
        return []
    return retry


def batch_requests(todo: list[tuple[int, dict]], batch_size: int) -> dict[str, tuple[str, list[int]]]:
    """custom_id -> (prompt, source indices), for at most one batch's worth of requests."""
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)][:MAX_REQUESTS]
    return {str(k): (build_prompt(chunk), [i for i, _ in chunk]) for k, chunk in enumerate(chunks)}


def batch_translations(covers: dict[str, list[int]], answers: dict[str, Answer], errors: dict[str, str],
                       source: list[dict], done: set[int], job: BatchJob) -> tuple[dict[int, dict], dict[int, str]]:
    """The translations a batch's answers hold for records not yet in --out, and why the others have none."""
    good, failed = {}, {}
    for cid, indices in covers.items():
        if any(not 0 <= i < len(source) for i in indices):
            raise OutputError(f"{job.path} covers source indices up to {max(indices)}, but --data_path has "
                              f"{len(source)} records: the file changed since the batch was made. Cancel the batch "
                              f"on the server and delete {job.path}.")
        batch = [(i, source[i]) for i in indices if i not in done]
        if cid in answers:
            chunk_good, chunk_failed = check_answer(answers[cid], batch)
        else:
            chunk_good, chunk_failed = {}, {i: errors[cid] for i, _ in batch}
        good.update(chunk_good)
        failed.update(chunk_failed)
    return good, failed


def translate(args: argparse.Namespace, client: ChatClient, out: JsonlOutput, progress: Progress) -> tuple[str, int]:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    source = load_records(args.data_path).records  # strict: a skipped record would shift every index
    progress.source = args.data_path
    if not args.batch_api:
        refuse_open_batch(out.path)
    todo = select_todo(args, source, out, progress)
    if not todo and not (args.batch_api and state_path(out.path).exists()):
        return "nothing left to translate", 0
    with logging_redirect_tqdm(), tqdm(total=progress.existing + progress.todo, initial=progress.existing, unit="rec",
                                       dynamic_ncols=True, disable=args.no_progress) as bar:
        if args.batch_api:
            todo = translate_by_batch(todo, source, args, client, out, progress, bar)
        translate_by_requests(todo, args, client, out, progress, bar)
    sort_by_source_index(out)
    if progress.failed:
        print(f"error: {len(progress.failed)} record(s) could not be translated (listed in the summary below). "
              "Rerun the same command to try them again.", file=sys.stderr)
        return "finished with failures", 3
    return "finished", 0


def select_todo(args: argparse.Namespace, source: list[dict], out: JsonlOutput, progress: Progress) -> list[tuple[int, dict]]:
    """(source index, record) for the selected records not yet in --out."""
    done = existing_indices(out)
    end = len(source) if not args.limit else min(len(source), args.start + args.limit)
    selected = range(args.start, end)
    todo = [(i, source[i]) for i in selected if i not in done]
    progress.existing = len(selected) - len(todo)
    progress.todo = len(todo)
    return todo


def sort_by_source_index(out: JsonlOutput) -> None:
    """Put records a rerun filled in (appended after later ones) back in source order, atomically."""
    rows = [obj for _, obj in out.lines()]
    if all(a["source_index"] < b["source_index"] for a, b in zip(rows, rows[1:])):
        return
    out.rewrite(sorted(rows, key=lambda r: r["source_index"]))
    logger.info("%s: sorted by source_index (records filled in after later ones were put in place)", out.path)


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
