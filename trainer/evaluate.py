"""Compare models on held-out Alpaca records: loss on learned tokens, and scored greedy answers, in
both prompt shapes (`input`: GenMedGPT's, `empty`: the demo's; see trainer.prompts.SHAPES).

    python -m trainer.evaluate --model gemma3-270m --model alpaca-medis-270m --template alpaca-id \
        --data_path ../shared/data/GenMedGPT-5k-id.json --limit 200 --output_dir eval

The records are the validation split training used (same --val_set_size, seed 42), so a model
trained with `trainer.train` never saw them. For each model and prompt shape:
- loss and perplexity on the learned tokens only (the answer and its EOS, as in training), with the
  prompt rendered by the model's own chat_template (`--template` for a model without one);
- a greedy answer per record through the same chat template (batches of --batch_size, left-padded),
  scored against the reference with ROUGE-L F (data_gen/rouge.py) and chrF (sacrebleu); its length in
  words, whether it stopped on EOS, whether it is Indonesian (data_gen's language check) and whether
  it loops (a word 4-gram three times or more).
With --questions (the project's question set, data/eval/questions.jsonl), every model also answers
what users ask, in both prompt shapes, scored by trainer/eval_conditions.py: right condition named,
emergency care advised for red flags, no advice that delays it, Indonesian, stops, length:

    python -m trainer.evaluate --model gemma3-270m --model models/alpaca-medis-270m --template alpaca-id \
        --questions data/eval/questions.jsonl --output_dir eval

`--ask QUESTION` (repeatable) has every model answer a question that is in no data file as the page would;
`--previous OLD/eval.json` copies the models an earlier run measured on the same data and settings.
Writes `eval.json` and `eval.md` (the comparison tables and side-by-side samples) to --output_dir.

Through an inference engine: with `--backend URL` any OpenAI-compatible server (vLLM or SGLang on GPUs, `transformers
serve`) generates the answers, through the client `app.py --backend` uses (trainer/serve/remote.py), --concurrency
requests in flight, plain greedy as local answers are, and they are scored exactly as local ones. The model evaluated is
the served one (`--backend_model`, else the first the server lists), named by its served id in eval.json, which records
the URL under "backend". The server applies its own chat template. The loss needs the weights here: `--model LOCAL`
(at most one with --backend: the served model's local copy, prompts rendered by its chat template or --template)
measures it; without it the loss is not measured (null in eval.json, a note in eval.md):

    python -m trainer.evaluate --backend http://gpu-box:8000/v1 --model out/alpaca-medis-270m \
        --data_path ../shared/data/GenMedGPT-5k-id.json --limit 200 --concurrency 32 --output_dir eval
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch

from data_gen.cards import CardError, load_cards
from trainer import batches as batch_lib
from trainer import eval_conditions
from trainer import records as record_lib
from trainer.defaults import GENERATION, QUANTIZE_CHOICES
from trainer.eval_report import answer_metrics, comparison_table
from trainer.hw import on_torch_thread
from trainer.models import ModelError
from trainer.prompts import SHAPES, messages_for
from trainer.run_summary import RunSummary, SummaryError
from trainer.serve.inference import GREEDY, BusyError, ChatModel, GenerationStats, InputError
from trainer.serve.remote import BackendError, RemoteChat

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8  # --backend requests in flight: enough for an engine to batch, few enough not to be refused


def encode(tokenizer, record: dict, shape: str = "input") -> tuple[list[int], list[int]]:
    """(input ids, labels) with the prompt masked, encoded as training encodes (batches.tokenize_records), the
    prompt rendered by the model's own chat_template in `shape`; nothing truncated."""
    conversation = {"messages": [*messages_for(record, shape), {"role": "assistant", "content": record["output"]}]}
    (example,), _ = batch_lib.tokenize_records([conversation], tokenizer, None, max_length=None)
    return example["input_ids"], example["labels"]


@torch.no_grad()
def learned_token_loss(model, tokenizer, records: list[dict], shape: str = "input") -> tuple[float, int]:
    """Mean cross-entropy over every learned token of the records (token-weighted), and their count."""
    collate = batch_lib.DataCollator(tokenizer.eos_token_id)  # one record per batch: nothing is padded
    total, count = 0.0, 0
    model.eval()
    for record in records:
        ids, labels = encode(tokenizer, record, shape)
        batch = {k: v.to(model.device) for k, v in collate([{"input_ids": ids, "labels": labels}]).items()}
        loss, n = batch_lib.learned_loss_sum(model, batch)
        total += float(loss)
        count += n
    return total / max(count, 1), count


def greedy_answers(chat: ChatModel | RemoteChat, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
                   desc: str) -> list[tuple[str, str]]:
    """(answer, finish) per conversation, in order; batches of similar prompt length waste less padding. From a
    backend (RemoteChat): `batch_size` requests in flight instead, which the engine batches."""
    from tqdm.auto import tqdm

    if isinstance(chat, RemoteChat):
        return served_answers(chat, conversations, max_new_tokens, batch_size, desc)
    order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
    results: list = [None] * len(conversations)
    with tqdm(total=len(order), desc=desc, unit="answer", disable=None) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            try:
                answers = chat.answer_batch([conversations[i] for i in chunk], max_new_tokens)
            except InputError as e:
                raise ModelError(f"records {chunk}: {e}") from None
            for i, answer in zip(chunk, answers):
                results[i] = answer
            bar.update(len(chunk))
    return results


def served_answers(chat: RemoteChat, conversations: list[list[dict]], max_new_tokens: int, concurrency: int,
                   desc: str) -> list[tuple[str, str]]:
    """(answer, finish) per conversation, in order, each as ChatModel.answer_batch returns it: greedy (GREEDY), cut
    where the model starts a new turn (finish "marker"), else stripped; finish "eos" or "length" as RemoteChat maps the
    server's finish_reason. The first error ends the evaluation."""
    from tqdm.auto import tqdm

    def answer(i: int) -> tuple[str, str]:
        conversation, stats = conversations[i], GenerationStats()  # this request's finish; chat.last is any request's
        try:
            text = chat.answer(conversation[-1]["content"], conversation[:-1], max_new_tokens=max_new_tokens, stats=stats,
                               **GREEDY)
        except BackendError:
            raise
        except InputError as e:  # refused before it was sent, as answer_batch refuses it
            raise ModelError(f"record {i}: {e}") from None
        return (text if stats.finish == "marker" else text.strip()), stats.finish

    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(conversations), desc=desc, unit="answer", disable=None) as bar:
        futures = [pool.submit(answer, i) for i in range(len(conversations))]
        try:
            for done in as_completed(futures):
                done.result()
                bar.update(1)
        finally:  # after an error (or Ctrl-C) no new request starts; those in flight end on their own
            pool.shutdown(wait=False, cancel_futures=True)
        return [f.result() for f in futures]


def load_chat(name: str, template: str | None = None, dtype: torch.dtype = torch.float32, quantize: str = "none") -> ChatModel:
    # fp32 by default: losses and greedy answers stay comparable across machines (the app picks bf16
    # where a CPU runs it fast, which shifts both a little). int8 weights only when asked: they shift both too.
    try:
        return ChatModel.load(name, dtype=dtype, quantize=quantize)  # the model's own chat_template ...
    except ModelError:
        if not template:
            raise
        return ChatModel.load(name, template, dtype=dtype, quantize=quantize)  # ... or --template when it has none


def evaluate_questions(name: str, chat: ChatModel | RemoteChat, questions, cards, max_new_tokens: int, shapes=tuple(SHAPES),
                       batch_size: int = 16) -> dict:
    """{shape: metrics} of one model's greedy answers to the question set."""
    results = {}
    for shape in shapes:
        answered = greedy_answers(chat, [messages_for(q.record(), shape) for q in questions], max_new_tokens, batch_size,
                                  f"{os.path.basename(name.rstrip('/'))} questions ({shape})")
        m = results[shape] = eval_conditions.question_metrics([a for a, _ in answered], [f for _, f in answered],
                                                              questions, cards)
        logger.info("%s questions (%s): right condition %.0f%%, emergency advised %.0f%% of red flags, delays %.0f%%, "
                    "Indonesian %.0f%%, EOS %.0f%%, %.0f words", name, shape, 100 * m["right_condition_share"],
                    100 * m["emergency_share"], 100 * m["delays_share"], 100 * m["indonesian_share"],
                    100 * m["eos_share"], m["answer_words_mean"])
    return results


def evaluate_model(name: str, records: list[dict], max_new_tokens: int, shapes=tuple(SHAPES), batch_size: int = 16,
                   chat: ChatModel | RemoteChat | None = None, loss_chat: ChatModel | None = None) -> dict:
    """{shape: metrics} for one model: the loss on `loss_chat`'s weights (None: not measured, null in eval.json), and
    the greedy answers of `chat`, a local model or a backend (None: the loss only, cheap: no generation)."""
    results = {}
    for shape in shapes:
        m = results[shape] = {"loss": None, "perplexity": None, "learned_tokens": None}
        if loss_chat is not None:
            # On the thread that generates: a second thread running torch ops slows both (trainer.hw.TORCH_THREAD).
            loss, learned = on_torch_thread(learned_token_loss, loss_chat.model, loss_chat.tokenizer, records, shape)
            m.update(loss=loss, perplexity=math.exp(loss), learned_tokens=learned)
        loss = "not measured" if m["loss"] is None else f"{m['loss']:.3f}"
        if chat is None:
            logger.info("%s (%s): loss %s (no answers generated)", name, shape, loss)
            continue
        answered = greedy_answers(chat, [messages_for(r, shape) for r in records], max_new_tokens, batch_size,
                                  f"{os.path.basename(name.rstrip('/'))} ({shape})")
        m.update(answer_metrics([a for a, _ in answered], [f for _, f in answered], [r["output"] for r in records]))
        logger.info("%s (%s): loss %s, ROUGE-L %.3f, chrF %.1f, EOS %.0f%%, Indonesian %.0f%%, repetition %.0f%%",
                    name, shape, loss, m["rouge_l"], m["chrf"], 100 * m["eos_share"], 100 * m["indonesian_share"],
                    100 * m["repetition_share"])
    return results


def select_records(data_path: str, split: str = "val", val_set_size: float = record_lib.VAL_SET_SIZE, limit: int = 0) -> list[dict]:
    """The records of a split exactly as trainer.train splits them (seed 42)."""
    records = record_lib.load_records(data_path).records
    train, val = record_lib.split_records(records, val_set_size)
    chosen = (val if split == "val" else train)[: limit or None]
    if not chosen:
        raise record_lib.DataError(f"The {split} split of {data_path} is empty (--val_set_size {val_set_size}).")
    return chosen


def held_out_share(models: list[str], data_path: str, val_set_size: float | None) -> float:
    """The validation share to evaluate on: as given, else the one a model folder's train_summary.json was
    trained with on this file (so the held-out records really were held out), else training's default."""
    for name in models:
        summary = RunSummary.read(name) if os.path.isdir(name) else None
        trained = summary.records.val_set_size if summary and summary.data_path else None
        if trained is None or os.path.basename(summary.data_path) != os.path.basename(data_path):
            continue
        if val_set_size is None:
            logger.info("--val_set_size %g, as %s was trained (train_summary.json)", trained, name)
            return trained
        if val_set_size != trained:
            logger.warning("--val_set_size %g, but %s held out %g of %s in training: part of the records evaluated "
                           "may have been trained on", val_set_size, name, trained, summary.data_path)
    return record_lib.VAL_SET_SIZE if val_set_size is None else val_set_size


def report_markdown(result: dict, samples: int = 3) -> str:
    lines = [comparison_table(result)] if result.get("models") else []
    shapes = result.get("shapes") or list(SHAPES)
    if result.get("questions"):
        lines += questions_markdown(result["questions"], shapes, samples)
    if result.get("unseen"):
        lines += ["", eval_conditions.unseen_markdown(result["unseen"])]
    if not result.get("models"):
        return "\n".join(lines) + "\n"
    for i, record in enumerate(result["samples"][:samples]):
        lines += ["", f"**Sample {i + 1}.** {record['input'] or record['instruction']}", "",
                  f"- reference: {record['output']}"]
        lines += [f"- `{name}` ({shape}): {m[shape]['answers'][i]}" for name, m in result["models"].items() for shape in shapes
                  if "answers" in m[shape]]
    return "\n".join(lines) + "\n"


class Previous:
    """Results of an earlier eval.json that may be reused: per model, its held-out-record metrics and its question-set
    metrics, each only when that part was measured on the same data and settings as this run."""

    def __init__(self, records: dict | None = None, questions: dict | None = None):
        self.records, self.questions = records or {}, questions or {}

    @classmethod
    def read(cls, path: str, args, shapes: list[str]) -> Previous:
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise record_lib.DataError(f"--previous {path}: cannot read it ({e}).") from None
        same = lambda a, b: os.path.basename(str(a)) == os.path.basename(str(b))  # noqa: E731
        records, questions = {}, {}
        local = not old.get("backend")  # an engine's answers are not those of a local model of the same name
        if (local and args.data_path and old.get("models") and same(old.get("data_path"), args.data_path)
                and old.get("split") == args.split and old.get("max_new_tokens") == args.max_new_tokens
                and old.get("dtype") == args.dtype and old.get("quantize", "none") == args.quantize
                and old.get("records") == args.limit):
            for name, by_shape in old["models"].items():
                answered = all("answers" in by_shape.get(s, {}) for s in shapes)
                if all(s in by_shape for s in shapes) and (answered or name in args.loss_only):
                    records[name] = {s: by_shape[s] for s in shapes}
        asked = old.get("questions") or {}
        if (local and args.questions and asked and same(asked.get("path"), args.questions) and old.get("dtype") == args.dtype
                and old.get("quantize", "none") == args.quantize and asked.get("max_new_tokens") == args.questions_max_new_tokens):
            questions = {n: {s: m[s] for s in shapes} for n, m in asked["models"].items() if all(s in m for s in shapes)}
        logger.info("--previous %s: reusing held-out results of %s and question results of %s", path,
                    sorted(records) or "none", sorted(questions) or "none")
        return cls(records, questions)


def questions_markdown(asked: dict, shapes, samples: int = 3) -> list[str]:
    lines = ["", eval_conditions.questions_intro(asked), "", eval_conditions.questions_table(asked)]
    for i, q in enumerate(asked["items"][:samples]):
        lines += ["", f"**Question {q['id']}** ({q['condition']}{', red flag' if q['red_flag'] else ''}). {q['question']}", ""]
        lines += [f"- `{name}` ({shape}): {m[shape]['answers'][i]}" for name, m in asked["models"].items() for shape in shapes]
    return lines


LOSS_NOT_MEASURED = ("loss and perplexity not measured: the answers came from an inference server, and the loss needs "
                     "the model's weights here (give its local copy with --model).")


def backend_problems(args) -> list[str]:
    """What is wrong with how --backend combines with the other flags (every problem, each naming its fix); fills in
    the default --concurrency."""
    problems = []
    if not (args.model or args.backend):
        problems.append("Give --model (a model to load here) or --backend URL (a served model).")
    if not args.backend:
        if args.concurrency is not None:
            problems.append("--concurrency is for --backend; a local model generates --batch_size answers together.")
        return problems
    if len(args.model) > 1:
        problems.append("--backend evaluates the served model: give at most one --model, its local copy for the loss "
                        "(evaluate other models in another run).")
    if args.loss_only:
        problems.append("--loss_only measures a local model without answers; with --backend, drop it (or --backend).")
    if args.previous:
        problems.append("--previous copies models a local run measured; with --backend, measure again (drop --previous).")
    if args.concurrency is None:
        args.concurrency = DEFAULT_CONCURRENCY
    elif args.concurrency < 1:
        problems.append(f"--concurrency {args.concurrency}: give 1 or more requests in flight.")
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="repeat to compare models (name, folder or Hub id); with --backend at most one: the served "
                             "model's local copy, for the loss")
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="generate the answers on this OpenAI-compatible server (vLLM, SGLang, transformers serve, ...) "
                             "as app.py --backend does, e.g. http://gpu-box:8000/v1; key from $BACKEND_API_KEY or "
                             "$OPENAI_API_KEY. The loss is measured only with --model")
    parser.add_argument("--backend_model", default=None, metavar="NAME", help="the --backend model (default: the first it lists)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help=f"with --backend: requests in flight, which the engine batches (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--data_path", default=None, help="held-out Alpaca records (the split training held out)")
    parser.add_argument("--questions", default=None, help="the project's question set (data/eval/questions.jsonl): "
                        "answers scored for the right condition and emergency advice")
    parser.add_argument("--questions_max_new_tokens", type=int, default=160,
                        help="answer budget for --questions (default %(default)s)")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--val_set_size", type=float, default=None,
                        help="as in training; default: what a model folder's train_summary.json records, "
                             f"else training's default ({record_lib.VAL_SET_SIZE})")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N records of the split (0 = all)")
    parser.add_argument("--max_new_tokens", type=int, default=GENERATION["max_new_tokens"])
    parser.add_argument("--template", default=None, help="for models without a chat_template")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="prompt shapes, comma-separated (default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=16, help="answers a local model generates together (default %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="float32 compares across machines; bfloat16 is the demo's dtype where the CPU runs it fast, "
                             "and there about twice as fast")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="int8 weights, as the page serves them where they are faster (trainer/serve/quantize.py): "
                             "batches of answers decode several times faster on a CPU; the rest runs in --dtype")
    parser.add_argument("--loss_only", action="append", default=[],
                        help="a --model to measure by loss only, without generating answers (repeatable)")
    parser.add_argument("--ask", action="append", default=[], metavar="QUESTION",
                        help="a question in no data file, answered by every model as the page answers it (its default "
                             "generation settings; repeatable): side-by-side samples for eval.md and the model card")
    parser.add_argument("--previous", default=None, metavar="EVAL_JSON",
                        help="an earlier eval.json: models it measured on the same records and settings are copied from it "
                             "instead of being measured again (each model and part is checked to match)")
    parser.add_argument("--output_dir", "--out", dest="output_dir", default="eval", help="folder for eval.json and eval.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        parser.error(f"--shapes {args.shapes!r}: choose from {', '.join(SHAPES)}")
    if not (args.data_path or args.questions):
        parser.error("give --data_path (held-out records), --questions (the question set), or both")
    problems = backend_problems(args)
    if problems:
        parser.error(" ".join(problems))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    models, asked, unseen = {}, {}, {}
    try:
        # First (it asks the server for its models), so that a server that is down ends the run before anything loads.
        served = RemoteChat.connect(args.backend, args.backend_model) if args.backend else None
        if served:
            served.send_neutral_penalty = True  # GREEDY's repetition_penalty 1.0, whatever the model's generation_config says
            if args.backend_model and args.backend_model not in (listed := served.models()):
                # Some engines answer for any name (SGLang, llama.cpp); where the name matters, every answer will fail.
                logger.warning("%s lists %s, not %s", served.url, ", ".join(listed) or "no models", args.backend_model)
            logger.info("answers from %s at %s, %d requests in flight; loss %s", served.name, served.url, args.concurrency,
                        f"on {args.model[0]}" if args.model else "not measured (no --model)")
        if args.questions:
            cards = load_cards()
            questions = eval_conditions.load_questions(args.questions, cards)
        if args.data_path:
            # A served folder (transformers serve names a model by its path) has a train_summary.json to read too.
            val_set_size = held_out_share([*args.model, *([served.name] if served else [])], args.data_path, args.val_set_size)
            chosen = select_records(args.data_path, args.split, val_set_size, args.limit)
        previous = Previous.read(args.previous, args, shapes) if args.previous else Previous()
        for name in [served.name] if served else args.model:
            done_records, done_questions = previous.records.get(name), previous.questions.get(name)
            if done_records is not None:
                models[name] = done_records
            if done_questions is not None:
                asked[name] = done_questions
            need_records = args.data_path and done_records is None
            need_questions = args.questions and done_questions is None
            if not (need_records or need_questions or args.ask):
                logger.info("%s: copied from %s", name, args.previous)
                continue
            # The answers come from the server or the local model; the loss from the local model, if there is one.
            local = (args.model[0] if args.model else None) if served else name
            loss_chat = load_chat(local, args.template, getattr(torch, args.dtype), args.quantize) if local else None
            chat, together = (served, args.concurrency) if served else (loss_chat, args.batch_size)
            if need_records:
                models[name] = evaluate_model(name, chosen, args.max_new_tokens, shapes, together,
                                              chat=None if name in args.loss_only else chat, loss_chat=loss_chat)
            if need_questions:
                asked[name] = evaluate_questions(name, chat, questions, cards, args.questions_max_new_tokens, shapes, together)
            if args.ask:  # as the page answers: its generation defaults, the demo's empty-input prompt
                unseen[name] = [chat.answer(q, **GENERATION) for q in args.ask]  # generates on the torch thread itself
            del chat, loss_chat
    except (record_lib.DataError, ModelError, SummaryError, CardError, eval_conditions.QuestionError, InputError) as e:
        # InputError: also remote.BackendError, a server that is down, refuses the request or lacks the model
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BusyError as e:  # the server's 429
        print(f"error: {e} Or lower --concurrency.", file=sys.stderr)
        return 2
    result = {"dtype": args.dtype, "quantize": args.quantize, "shapes": shapes}
    if served:
        result["backend"] = {"url": served.url, "model": served.name, "concurrency": args.concurrency,
                             "loss_from": args.model[0] if args.model else None}
        if args.data_path and not args.model:
            result["backend"]["note"] = LOSS_NOT_MEASURED
            logger.info("%s", LOSS_NOT_MEASURED)
    if args.data_path:
        result.update({"data_path": args.data_path, "split": args.split, "records": len(chosen),
                       "max_new_tokens": args.max_new_tokens, "models": models, "samples": chosen[:5]})
    if args.questions:
        result["questions"] = {"path": args.questions, "count": len(questions),
                               "conditions": len({q.condition for q in questions}),
                               "red_flag_questions": sum(q.red_flag for q in questions),
                               "max_new_tokens": args.questions_max_new_tokens,
                               "items": [vars(q) for q in questions], "models": asked}
    if args.ask:
        result["unseen"] = {"settings": GENERATION, "questions": args.ask, "models": unseen}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=2)
    markdown = report_markdown(result)
    with open(os.path.join(args.output_dir, "eval.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
