"""Self-instruct generation of Alpaca records (Indonesian doctor-patient exchanges) through any
OpenAI-compatible chat server.

    python -m data_gen generate --base_url http://127.0.0.1:8000/v1 --model M --num_records 100 --out gen.jsonl
    OPENAI_API_KEY=sk-... python -m data_gen generate --base_url https://api.openai.com/v1 \
        --model gpt-4o-mini --num_records 5000 --out gen.jsonl --price_per_1k 0.00015,0.0006

stanford_alpaca's generate_instruction.py, rebuilt for chat models: each request shows a few sampled
examples (seed tasks from data/seed_tasks.jsonl, and records generated so far) and asks for a
batch of new records as a numbered list (JSON answers are understood too). Every candidate goes
through the filters below, each rejection counted by reason, then through a ROUGE-L near-duplicate
filter (threshold 0.7, as in stanford_alpaca) against the seeds and everything kept. The key is
instruction + "\\n" + input, not the instruction alone: in GenMedGPT every record shares one
instruction, so the patient's words are what tell records apart.

Kept records are appended to --out (JSON Lines) and flushed to disk after each answer, so a run
killed at any moment loses at most the answer being written. Rerunning the same command resumes:
the records already in --out count toward --num_records and seed the duplicate filter; an
incomplete last line left by a kill is dropped with a warning.

--workers N keeps N requests in flight, their answers still handled (filtered, deduplicated,
written) in request order. --batch_api asks for the records in one OpenAI Batch API job
(data_gen/batch_api.py) and makes any shortfall the normal way.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from data_gen.batch_api import MAX_REQUESTS, BatchJob, refuse_open_batch, state_path
from data_gen.client import Answer, ChatClient, ClientError, Usage, add_client_args, check_client_args, client_from_args, setup_logging
from data_gen.language import looks_like
from data_gen.output import JsonlOutput, OutputError, count_records
from data_gen.parallel import run_ordered
from data_gen.rouge import RougeDedup, tokenize
from trainer import ROOT
from trainer.records import DOCTOR_INSTRUCTION, FIELDS, DataError, load_records

logger = logging.getLogger(__name__)

SEED_TASKS = ROOT / "data" / "seed_tasks.jsonl"

NO_INPUT = {"id": "<kosong>", "en": "<noinput>"}
# What models write for "no input"; such an input becomes "".
NO_INPUT_MARKERS = {"", "<noinput>", "<no input>", "<kosong>", "<tidak ada>", "(kosong)", "kosong", "-", "tidak ada",
                    "none", "n/a", "no input", "<none>", "null", '""'}

PROMPT = {
    "id": """\
Anda membantu menyusun data latih untuk asisten kesehatan berbahasa Indonesia. Buatlah {n} contoh baru \
percakapan medis antara pasien dan dokter.

Ketentuan:
1. Setiap contoh terdiri atas Instruksi, Masukan, dan Keluaran, semuanya dalam bahasa Indonesia.
2. Sebagian besar contoh memakai Instruksi ini persis: "{instruction}" Masukannya adalah keluhan pasien \
dengan kata-katanya sendiri: gejala, sejak kapan, dan bila perlu usia atau riwayat penyakit. Keluarannya \
adalah jawaban dokter: kemungkinan diagnosis, pemeriksaan yang disarankan, pengobatan atau saran, dan \
kapan harus segera ke dokter atau IGD.
3. Sekitar satu dari lima contoh boleh berupa pertanyaan kesehatan umum langsung di Instruksi, dengan \
Masukan {no_input}.
4. Topik harus beragam: penyakit, bagian tubuh, usia (bayi sampai lansia), dan tingkat keparahan yang \
berbeda-beda. Jangan mengulang contoh di bawah.
5. Keluaran ditulis 50 sampai 150 kata, jelas, sopan, dan akurat secara medis.
6. Jangan membuat contoh yang memerlukan gambar, berkas, tautan, atau program komputer.

Tulis hasilnya sebagai daftar bernomor dengan format berikut, setiap contoh dipisahkan baris ###:
###
1. Instruksi: ...
Masukan: ...
Keluaran: ...
###
2. Instruksi: ...

{examples}Sekarang tulis {n} contoh baru, mulai dari nomor 1.""",
    "en": """\
You are helping to build training data for a medical assistant. Write {n} new examples of medical \
conversations between a patient and a doctor.

Requirements:
1. Each example has an Instruction, an Input and an Output, all in English.
2. Most examples use exactly this Instruction: "{instruction}" The Input is the patient's complaint in \
their own words: symptoms, since when, and age or history where relevant. The Output is the doctor's \
answer: the likely diagnosis, suggested tests, treatment or advice, and when to see a doctor or go to \
the emergency room at once.
3. About one example in five may be a general health question asked directly in the Instruction, with \
the Input {no_input}.
4. Vary the topics: diseases, parts of the body, ages (infants to the elderly) and severity. Do not \
repeat the examples below.
5. Outputs are 50 to 150 words, clear, polite and medically accurate.
6. Do not write examples that need an image, a file, a link or a computer program.

Write them as a numbered list in this format, each example separated by a line ###:
###
1. Instruction: ...
Input: ...
Output: ...
###
2. Instruction: ...

{examples}Now write {n} new examples, starting at number 1.""",
}
EXAMPLES_HEADER = {"id": "Contoh yang sudah ada:\n", "en": "Existing examples:\n"}
LABEL_NAMES = {"id": ("Instruksi", "Masukan", "Keluaran"), "en": ("Instruction", "Input", "Output")}

# Field names (JSON keys and list labels) models use, in either language.
FIELD_ALIASES = {
    "instruction": "instruction", "instruksi": "instruction", "instructions": "instruction",
    "input": "input", "masukan": "input", "context": "input", "konteks": "input",
    "output": "output", "keluaran": "output", "tanggapan": "output", "response": "output", "respons": "output",
    "jawaban": "output", "answer": "output",
}

# stanford_alpaca's blacklist (tasks a text model cannot do), plus Indonesian equivalents; matched as
# whole words in the instruction and the input (where a patient may "attach a picture"). Left out on
# purpose: bare "program" ("program hamil", "program diet" are everyday medical Indonesian; only
# phrases about software are listed), and SA's "go to" and "draw", which patients and doctors say
# ("should I go to the ER", "draw blood").
BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "plot",
    "video", "audio", "music", "flowchart", "diagram", "write a program", "computer program", "code",
    "gambar", "gambarkan", "grafik", "berkas", "peta", "musik", "bagan", "kode", "tautan", "unggah", "lampiran",
    "terlampir", "program komputer", "tulis program", "buat program", "buatlah program",
)
_BLACKLIST_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.IGNORECASE)



# ------------------------------------------------------------------------------------------- parse


def parse_answer(text: str) -> tuple[list[dict], str]:
    """Candidate records in a model's answer, and the format found: "json", "numbered" or "none".

    Candidates keep their values as given (a number stays a number) so the filters can count them."""
    records = parse_json_objects(text)
    if records:
        return records, "json"
    records = parse_numbered(text)
    return records, ("numbered" if records else "none")


def parse_json_objects(text: str, keys: tuple[str, ...] = FIELDS) -> list[dict]:
    """Every JSON object in `text` that has one of `keys` (after FIELD_ALIASES): a JSON array, JSON
    Lines, objects inside ```json fences or prose, or wrapped as {"records": [...]}. Objects cut off
    at the end (an answer stopped at max_tokens) are simply not found."""
    decoder = json.JSONDecoder()
    found, pos = [], 0
    while (start := text.find("{", pos)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        record = _normalize_keys(obj) if isinstance(obj, dict) else None
        if record is not None and any(k in record for k in keys):
            found.append(record)
            pos = end
        else:
            pos = start + 1  # a wrapper object: look inside it
    return found


def _normalize_keys(obj: dict) -> dict:
    out = {}
    for key, value in obj.items():
        name = FIELD_ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        out.setdefault(name, value)
    return out


_LABEL_RE = re.compile(
    r"(?P<lead>^[ \t>*\-]*(?:#{1,6}[ \t]*)?(?:\d{1,3}[ \t]*[.):][ \t]*)?|[ \t]+)"
    r"[*_]{0,2}(?P<label>" + "|".join(sorted(FIELD_ALIASES, key=len, reverse=True)) + r")[*_]{0,2}[ \t]*:[*_]{0,2}",
    re.IGNORECASE | re.MULTILINE,
)


def parse_numbered(text: str) -> list[dict]:
    """Records in stanford_alpaca's list style, with English or Indonesian labels:

        ###
        1. Instruction: ...          1. Instruksi: ...
        1. Input: ...     or         Masukan: <kosong>
        1. Output: ...               Keluaran: ...

    Labels count at the start of a line (after a number, ###, a bullet or **bold**), or inside a line
    when capitalized ("1. Instruction: ... Input: ... Output: ..."). A value runs to the next label."""
    labels = []
    for m in _LABEL_RE.finditer(text):
        inline = not m.group("lead").strip() and m.start() > 0 and text[m.start() - 1] != "\n"
        if inline and not m.group("label")[0].isupper():
            continue  # "... berikan masukan: ..." inside a sentence is not a label
        labels.append(m)
    records: list[dict] = []
    current: dict | None = None
    for i, m in enumerate(labels):
        name = FIELD_ALIASES[m.group("label").lower()]
        end = labels[i + 1].start() if i + 1 < len(labels) else len(text)
        value = _clean_value(text[m.end():end])
        if current is None or name == "instruction" or name in current:
            current = {}
            records.append(current)
        current[name] = value
    return records


def _clean_value(value: str) -> str:
    # A ### line ends an item: what follows it (the next number, closing prose) is not this value.
    value = re.split(r"\n[ \t]*#{3,}[ \t]*(?:\n|$)", value)[0].strip()
    value = re.sub(r"\s*#{3,}$", "", value)
    value = re.sub(r"^\*\*|\*\*$", "", value).strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip()
    return value


# ------------------------------------------------------------------------------------------ filter


@dataclass
class Limits:
    min_instruction_words: int = 3
    max_instruction_words: int = 150
    max_input_words: int = 300
    min_output_words: int = 5
    max_output_words: int = 400


def check_record(candidate: dict, limits: Limits, language: str) -> tuple[dict | None, str | None]:
    """(Alpaca record, None) when the candidate passes every filter, else (None, reason)."""
    if "instruction" not in candidate or "output" not in candidate:
        return None, "missing_field"
    value = candidate.get("input")
    if value is None or (isinstance(value, str) and value.strip().lower() in NO_INPUT_MARKERS):
        candidate = {**candidate, "input": ""}
    if not all(isinstance(candidate[k], str) for k in FIELDS):
        return None, "non_string"
    record = {k: candidate[k].strip() for k in FIELDS}
    if not record["instruction"]:
        return None, "empty_instruction"
    if not record["output"]:
        return None, "empty_output"
    words = {k: len(tokenize(record[k])) for k in FIELDS}
    if words["instruction"] < limits.min_instruction_words or words["output"] < limits.min_output_words:
        return None, "too_short"
    if (words["instruction"] > limits.max_instruction_words or words["input"] > limits.max_input_words
            or words["output"] > limits.max_output_words):
        return None, "too_long"
    if _BLACKLIST_RE.search(record["instruction"]) or _BLACKLIST_RE.search(record["input"]):
        return None, "blacklist"
    if not all(looks_like(record[k], language) for k in FIELDS):
        return None, "language"
    return record, None


def dedup_key(record: dict, mode: str = "instruction_input") -> str:
    if mode == "input":
        return record["input"] or record["instruction"]
    return record["instruction"] + "\n" + record["input"]


# ------------------------------------------------------------------------------------------ generate


@dataclass
class Progress:
    existing: int = 0  # records in --out before this run
    kept: int = 0  # written by this run
    candidates: int = 0  # records parsed from answers and checked: kept + rejected
    rejected: Counter = field(default_factory=Counter)  # by reason
    answers: Counter = field(default_factory=Counter)  # by format: numbered, json, unparsable
    batches: list = field(default_factory=list)  # one summary line per Batch API batch collected

    @property
    def written_now(self) -> int:
        return self.kept

    def rejected_text(self, top: int | None = None) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in self.rejected.most_common(top)) or "none"

    def summary(self, args: argparse.Namespace, client: ChatClient, stop: str) -> str:
        return "\n".join([
            f"generate: {args.out}: {self.existing + self.kept} records ({self.existing} before this run, "
            f"{self.kept} kept now); {stop}",
            f"answers {sum(self.answers.values())}: " + (", ".join(f"{k} {v}" for k, v in self.answers.most_common()) or "none"),
            f"candidates {self.candidates}: kept {self.kept}, rejected {sum(self.rejected.values())} ({self.rejected_text()})",
            *self.batches,
            client.usage.summary(),
        ])


def build_prompt(examples: list[dict], n: int, language: str) -> str:
    names = LABEL_NAMES[language]
    shown = ""
    if examples:
        shown = EXAMPLES_HEADER[language] + "".join(
            f"###\n{i}. {names[0]}: {r['instruction']}\n{names[1]}: {r['input'] or NO_INPUT[language]}\n{names[2]}: {r['output']}\n"
            for i, r in enumerate(examples, 1)
        ) + "###\n\n"
    return PROMPT[language].format(n=n, instruction=DOCTOR_INSTRUCTION[language], no_input=NO_INPUT[language],
                                   examples=shown)


def pick_examples(rng: random.Random, seeds: list[dict], generated: list[dict], k: int) -> list[dict]:
    """k examples: one in three from the records generated so far (once there are some), the rest
    seeds, so the model sees its own style without drifting away from the hand-written ones."""
    n_generated = min(len(generated), k // 3)
    picked = rng.sample(generated, n_generated) + rng.sample(seeds, min(k - n_generated, len(seeds)))
    rng.shuffle(picked)
    return picked


@dataclass
class Generation:
    """What a generate run works with: the examples it may show, the duplicate filter, --out's records."""
    args: argparse.Namespace
    seeds: list[dict]
    generated: list[dict]  # the records in --out, in file order
    dedup: RougeDedup
    limits: Limits
    rng: random.Random  # picks the examples; seeded by the run's starting point
    usage: Usage  # the client's counts, for the progress bar
    idle: int = 0  # answers in a row that kept nothing

    @property
    def short(self) -> int:
        return self.args.num_records - len(self.generated)


def start_generation(args: argparse.Namespace, client: ChatClient, out: JsonlOutput, progress: Progress) -> Generation:
    seeds = load_records(args.seed_tasks).records
    existing = load_records(str(out.path)).records if out.path.stat().st_size else []
    progress.existing = len(existing)
    dedup = RougeDedup(args.rouge_threshold)
    for record in seeds + existing:
        dedup.add(dedup_key(record, args.dedup_key))
    limits = Limits(args.min_instruction_words, args.max_instruction_words, args.max_input_words,
                    args.min_output_words, args.max_output_words)
    # Seeded by the run's starting point too, so a resumed run does not replay the first run's picks.
    rng = random.Random(f"{args.seed}:{len(existing)}")
    return Generation(args, seeds, list(existing), dedup, limits, rng, client.usage)


def next_prompt(gen: Generation, visible: int) -> str:
    """A request showing examples from the seeds and the first `visible` records of --out."""
    examples = pick_examples(gen.rng, gen.seeds, gen.generated[:visible], gen.args.num_prompt_examples)
    return build_prompt(examples, gen.args.batch_size, gen.args.language)


def keep_answer(gen: Generation, answer: Answer, out: JsonlOutput, progress: Progress, bar) -> int:
    """Check each candidate of one answer and append the ones kept, until --num_records; returns how many."""
    candidates, fmt = parse_answer(answer.text)
    progress.answers["unparsable" if fmt == "none" else fmt] += 1
    if fmt == "none":
        logger.warning("answer %d: no records found (neither JSON nor a numbered list); it starts: %r",
                       sum(progress.answers.values()), answer.text[:200])
    kept: list[dict] = []
    for i, candidate in enumerate(candidates):
        if gen.short <= 0:
            break
        progress.candidates += 1
        if fmt == "numbered" and answer.finish_reason == "length" and i == len(candidates) - 1:
            progress.rejected["truncated"] += 1  # cut off at max_tokens: its output may be incomplete
            continue
        record, reason = check_record(candidate, gen.limits, gen.args.language)
        if record is not None and not gen.dedup.add(dedup_key(record, gen.args.dedup_key)):
            record, reason = None, "duplicate"
        if record is None:
            progress.rejected[reason] += 1
            continue
        gen.generated.append(record)
        kept.append(record)
    out.append_many(kept)
    progress.kept += len(kept)
    bar.update(len(kept))
    bar.set_postfix_str(f"kept {progress.kept} | rejected {sum(progress.rejected.values())} "
                        f"({progress.rejected_text(3)}) | unparsable {progress.answers['unparsable']} | "
                        f"tokens {gen.usage.tokens:,}", refresh=True)
    return len(kept)


def generate_by_requests(gen: Generation, client: ChatClient, out: JsonlOutput, progress: Progress, bar) -> str:
    """Requests until --num_records are in --out, --workers at once, answers handled in request order.

    Request k shows examples from the records written up to answer k - lag (lag = 2 x workers - 1, so
    1 without workers: every record so far), which makes the prompts independent of which answer
    came back first. No request is sent that --num_records could not need if all its records were kept."""
    args = gen.args
    lag = 2 * args.workers - 1
    visible: list[int] = []  # visible[k]: records in --out after answer k was handled
    start, sent = len(gen.generated), 0

    def next_request() -> str | None:
        nonlocal sent
        in_flight = sent - len(visible)
        if (args.max_requests and sent >= args.max_requests) or gen.short <= in_flight * args.batch_size:
            return None
        sent += 1
        return next_prompt(gen, visible[sent - 1 - lag] if sent - 1 >= lag else start)

    def handle(_, answer: Answer) -> bool:
        kept = keep_answer(gen, answer, out, progress, bar)
        visible.append(len(gen.generated))
        gen.idle = 0 if kept else gen.idle + 1
        if args.patience and gen.idle >= args.patience:
            raise Stalled(f"{gen.idle} answers in a row kept no record (--patience {args.patience}); rejected: "
                          f"{progress.rejected_text()}. Check the model's answers (warnings above) or the filters")
        return gen.short <= 0

    run_ordered(next_request, client.complete, handle, args.workers, ahead=lag)
    return f"reached --num_records {args.num_records}" if gen.short <= 0 else f"stopped at --max_requests {args.max_requests}"


def generate_by_batch(gen: Generation, client: ChatClient, out: JsonlOutput, progress: Progress, bar) -> None:
    """One Batch API batch asking for what --out lacks (or the batch an earlier run left open). Its
    prompts show examples from the records in --out when it was made; its answers are handled in
    request order, like the normal path's. Records already written by a killed run that got this far
    are rejected as duplicates, never written twice."""
    args = gen.args
    job = BatchJob(client, out.path, {"command": "generate"}, args.poll_interval, progress=not args.no_progress)
    if job.state is None:
        n = min(-(-gen.short // args.batch_size), args.max_requests or MAX_REQUESTS, MAX_REQUESTS)
        job.start({str(k): (next_prompt(gen, len(gen.generated)), None) for k in range(n)})
    results = job.run()
    kept = sum(keep_answer(gen, results.answers[cid], out, progress, bar)
               for cid in sorted(results.answers, key=int) if gen.short > 0)
    progress.batches.append(f"{results.summary()}; records kept {kept}")
    job.finish()


def generate(args: argparse.Namespace, client: ChatClient, out: JsonlOutput, progress: Progress) -> tuple[str, int]:
    """Request batches until --num_records are in --out; returns (why it stopped, exit code)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if not args.batch_api:
        refuse_open_batch(out.path)
    gen = start_generation(args, client, out, progress)
    if gen.short <= 0 and not (args.batch_api and state_path(out.path).exists()):
        return f"already done (--num_records {args.num_records})", 0
    with logging_redirect_tqdm(), tqdm(total=args.num_records, initial=len(gen.generated), unit="rec",
                                       dynamic_ncols=True, disable=args.no_progress) as bar:
        if args.batch_api:
            generate_by_batch(gen, client, out, progress, bar)
            if gen.short > 0 and args.batch_failed == "list":
                return (f"{gen.short} record(s) short of --num_records {args.num_records} after the batch "
                        "(--batch_failed list); rerun to ask a new batch for them", 3)
        return generate_by_requests(gen, client, out, progress, bar), 0


class Stalled(Exception):
    """The model keeps answering with nothing usable."""


# --------------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m data_gen generate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON Lines file to append to; rerun the same command to resume")
    parser.add_argument("--num_records", type=int, required=True, help="target number of records in --out")
    parser.add_argument("--language", choices=("id", "en"), default="id", help="language of the prompt and the "
                        "records; the language filter checks it (default %(default)s)")
    parser.add_argument("--seed_tasks", default=str(SEED_TASKS), help="Alpaca records shown as examples and seeding "
                        "the duplicate filter (default: data/seed_tasks.jsonl, Indonesian)")
    parser.add_argument("--batch_size", type=int, default=20, help="records asked for per request (default %(default)s)")
    parser.add_argument("--num_prompt_examples", type=int, default=3, help="examples shown per request, one in three "
                        "from the generated records once there are some (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="seed for sampling the examples (default %(default)s)")
    parser.add_argument("--rouge_threshold", type=float, default=0.7, help="reject a record whose ROUGE-L F against "
                        "a seed or a kept record is at least this (default %(default)s)")
    parser.add_argument("--dedup_key", choices=("instruction_input", "input"), default="instruction_input",
                        help="text compared by ROUGE-L: instruction + newline + input (default), or the input alone "
                        "(the instruction when the input is empty)")
    parser.add_argument("--max_requests", type=int, default=0, help="stop after this many answered requests (0 = no limit)")
    parser.add_argument("--patience", type=int, default=20, help="give up after this many answers in a row that "
                        "kept nothing (0 = never) (default %(default)s)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    limits = parser.add_argument_group("filters (lengths in words)")
    for name, default in vars(Limits()).items():
        limits.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    add_client_args(parser, max_tokens=3072, temperature=1.0)
    return parser


def check_args(args: argparse.Namespace) -> list[str]:
    problems = check_client_args(args)
    if args.num_records < 1:
        problems.append("--num_records must be at least 1.")
    if args.batch_size < 1:
        problems.append("--batch_size must be at least 1.")
    if args.num_prompt_examples < 0:
        problems.append("--num_prompt_examples must be 0 or more.")
    if not 0 < args.rouge_threshold <= 1:
        problems.append("--rouge_threshold must be in (0, 1]; 0.7 is stanford_alpaca's.")
    if args.max_requests < 0 or args.patience < 0:
        problems.append("--max_requests and --patience must be 0 (no limit) or more.")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    problems = check_args(args)
    if problems:
        print("error: " + "\n  ".join(problems), file=sys.stderr)
        return 2
    return run_resumable(args, generate, Progress())


def run_resumable(args: argparse.Namespace, job, progress) -> int:
    """Open --out, run `job(args, client, out, progress) -> (stop reason, exit code)`, print the
    summary. Failures become one message (no traceback) that says how many records are in --out and
    how to resume. Shared with translate.

    Exit codes: 0 done, 1 the server failed for good or the model stalled (resumable), 2 bad input
    or output file, 3 finished with records that could not be made (translate; or a batch left some
    out, with --batch_failed list), 130 interrupted."""

    client = client_from_args(args)
    try:
        out = JsonlOutput(args.out)
    except (OutputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        stop, code = job(args, client, out, progress)
    except (ClientError, Stalled, KeyboardInterrupt) as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        print(progress.summary(args, client, "interrupted" if interrupted else "stopped early"))
        print(f"error: {'interrupted' if interrupted else e}.\n{out.path} holds {count_records(out.path)} record(s), "
              f"{progress.written_now} written by this run. Rerun the same command to resume: finished records "
              "are kept and not requested again.", file=sys.stderr)
        return 130 if interrupted else 1
    except (DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        out.close()
    print(progress.summary(args, client, stop))
    return code


if __name__ == "__main__":
    sys.exit(main())
