"""Compare models on held-out Alpaca records: loss on learned tokens, and scored generated answers.

    python -m trainer.evaluate --model smollm2-135m --model out-lora \
        --data_path ../shared/data/GenMedGPT-5k-id.json --limit 50 --out eval

The records are the validation split training used (same --val_set_size, seed 42), so a model
trained with `trainer.train` never saw them. For each model:
- loss and perplexity on the learned tokens only (the answer and its EOS, as in training), with
  the prompt rendered by the model's own chat_template (instruction as the system message, input
  as the user's: the with-input Alpaca prompt for our checkpoints, ChatML for the untouched base);
- a greedy answer per record through the same chat template, scored against the reference output
  with ROUGE-L F (data_gen/rouge.py) and chrF (sacrebleu); its length in words and whether it
  stopped on EOS.
Writes `eval.json` and `eval.md` (a table comparing the models and side-by-side samples) to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

import torch

from trainer import data as data_lib
from trainer.inference import ChatModel, InputError, on_torch_thread
from trainer.models import ModelError

logger = logging.getLogger("trainer.evaluate")


def messages_for(record: dict) -> list[dict]:
    """A record as chat messages: the instruction is the system message when there is an input."""
    if record["input"]:
        return [{"role": "system", "content": record["instruction"]}, {"role": "user", "content": record["input"]}]
    return [{"role": "user", "content": record["instruction"]}]


def encode(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(input ids, labels) with the prompt masked, prompt and answer encoded separately as in training."""
    prompt = tokenizer.apply_chat_template(messages_for(record), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the template holds any BOS
    answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [data_lib.IGNORE_INDEX] * len(prompt_ids) + answer_ids


@torch.no_grad()
def learned_token_loss(model, tokenizer, records: list[dict]) -> tuple[float, int]:
    """Mean cross-entropy over every learned token of the records (token-weighted), and their count."""
    collate = data_lib.DataCollator(tokenizer.eos_token_id)  # one record per batch: nothing is padded
    total, count = 0.0, 0
    model.eval()
    for record in records:
        ids, labels = encode(tokenizer, record)
        batch = {k: v.to(model.device) for k, v in collate([{"input_ids": ids, "labels": labels}]).items()}
        loss, n = data_lib.learned_loss_sum(model, batch)
        total += float(loss)
        count += n
    return total / max(count, 1), count


def rouge_l(hypothesis: str, reference: str) -> float:
    from data_gen.rouge import rouge_l as score, tokenize

    return score(tokenize(hypothesis), tokenize(reference))


def chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(hypothesis, [reference]).score


def evaluate_model(name: str, records: list[dict], max_new_tokens: int, template: str | None = None) -> dict:
    # fp32 everywhere: losses and greedy answers stay comparable across machines (the app picks bf16
    # where a CPU runs it fast, which shifts both a little).
    try:
        chat = ChatModel.load(name, dtype=torch.float32)  # the model's own chat_template ...
    except ModelError:
        if not template:
            raise
        chat = ChatModel.load(name, template, dtype=torch.float32)  # ... or --template when it has none
    # On the thread that generates: a second thread running torch ops slows both (inference.TORCH_THREAD).
    loss, learned = on_torch_thread(learned_token_loss, chat.model, chat.tokenizer, records)
    answers, rouges, chrfs, words, eos = [], [], [], [], 0
    for i, record in enumerate(records):
        messages = messages_for(record)
        try:
            answer = chat.answer(messages[-1]["content"], messages[:-1], max_new_tokens=max_new_tokens, temperature=0.0,
                                 repetition_penalty=1.0)
        except InputError as e:
            raise ModelError(f"record {i}: {e}") from None
        answers.append(answer)
        rouges.append(rouge_l(answer, record["output"]))
        chrfs.append(chrf(answer, record["output"]))
        words.append(len(answer.split()))
        eos += chat.last.finish == "eos"
        logger.info("%s: %d/%d answered (ROUGE-L %.3f)", name, i + 1, len(records), rouges[-1])
    n = max(len(records), 1)
    return {
        "loss": loss, "perplexity": math.exp(loss), "learned_tokens": learned,
        "rouge_l": sum(rouges) / n, "chrf": sum(chrfs) / n,
        "answer_words_mean": sum(words) / n, "eos_share": eos / n,
        "answers": answers, "rouge_l_per_record": rouges,
    }


def select_records(data_path: str, split: str = "val", val_set_size: float = 0.1, limit: int = 0) -> list[dict]:
    """The records of a split exactly as trainer.train splits them (seed 42)."""
    records = data_lib.load_records(data_path).records
    train, val = data_lib.split_records(records, val_set_size)
    chosen = (val if split == "val" else train)[: limit or None]
    if not chosen:
        raise data_lib.DataError(f"The {split} split of {data_path} is empty (--val_set_size {val_set_size}).")
    return chosen


def report_markdown(result: dict, samples: int = 3) -> str:
    lines = [
        f"Held-out records: {result['records']} ({result['split']} split of {os.path.basename(result['data_path'])}, "
        f"seed {data_lib.SPLIT_SEED}); greedy answers, at most {result['max_new_tokens']} new tokens.",
        "",
        "| model | loss (learned tokens) | perplexity | ROUGE-L F | chrF | answer words | stops on EOS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["models"].items():
        lines.append(f"| `{name}` | {m['loss']:.3f} | {m['perplexity']:.1f} | {m['rouge_l']:.3f} | {m['chrf']:.1f} | "
                     f"{m['answer_words_mean']:.0f} | {m['eos_share']:.0%} |")
    for i, record in enumerate(result["samples"][:samples]):
        lines += ["", f"**Sample {i + 1}.** {record['input'] or record['instruction']}", "",
                  f"- reference: {record['output']}"]
        lines += [f"- `{name}`: {m['answers'][i]}" for name, m in result["models"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="repeat to compare models (name, folder or Hub id)")
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--val_set_size", type=float, default=0.1, help="as in training (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N records of the split (0 = all)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--template", default=None, help="for models without a chat_template")
    parser.add_argument("--out", default="eval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        chosen = select_records(args.data_path, args.split, args.val_set_size, args.limit)
        models = {name: evaluate_model(name, chosen, args.max_new_tokens, args.template) for name in args.model}
    except (data_lib.DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"data_path": args.data_path, "split": args.split, "records": len(chosen), "max_new_tokens": args.max_new_tokens,
              "models": models, "samples": chosen[:5]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=2)
    markdown = report_markdown(result)
    with open(os.path.join(args.out, "eval.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
