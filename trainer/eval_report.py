"""What trainer.evaluate measures on text, and its comparison table: torch-free, so trainer.push renders
the same table in a model card without loading a model.

Two prompt shapes are measured (trainer.prompts.SHAPES, rendered by trainer.prompts.messages_for), because
GenMedGPT's records and the demo ask differently:
- `input`: the record as trained, the fixed "you are a doctor" instruction with the patient's words as
  the input (chat messages: system + user);
- `empty`: what the demo sends, the patient's words as the instruction and an empty input (one user
  message), stanford_alpaca's "user instruction with an empty input field".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from data_gen.language import looks_like
from data_gen.rouge import rouge_l as _rouge_l
from data_gen.rouge import tokenize
from trainer.prompts import SHAPES

REPEAT_NGRAM, REPEAT_TIMES = 4, 3  # degenerate repetition: some word 4-gram three times or more


def rouge_l(hypothesis: str, reference: str) -> float:
    return _rouge_l(tokenize(hypothesis), tokenize(reference))


def chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_chrf(hypothesis, [reference]).score


def is_indonesian(answer: str) -> bool:
    """data_gen's stopword check, judging every answer that has a word; an empty answer is not Indonesian."""
    return bool(tokenize(answer)) and looks_like(answer, "id", min_words=1)


def has_repetition(answer: str, n: int = REPEAT_NGRAM, times: int = REPEAT_TIMES) -> bool:
    """Whether some word n-gram occurs `times` times or more: the loop a small model falls into."""
    words = tokenize(answer)
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(counts) and max(counts.values()) >= times


def answer_metrics(answers: list[str], finishes: list[str], references: list[str]) -> dict:
    """Means over the records: ROUGE-L F, chrF, words, and the shares that stop on EOS, are Indonesian,
    and repeat themselves."""
    n = max(len(answers), 1)
    rouges = [rouge_l(a, r) for a, r in zip(answers, references)]
    return {
        "rouge_l": sum(rouges) / n,
        "chrf": sum(chrf(a, r) for a, r in zip(answers, references)) / n,
        "answer_words_mean": sum(len(a.split()) for a in answers) / n,
        "eos_share": sum(f == "eos" for f in finishes) / n,
        "indonesian_share": sum(map(is_indonesian, answers)) / n,
        "repetition_share": sum(map(has_repetition, answers)) / n,
        "answers": answers,
        "finishes": finishes,
        "rouge_l_per_record": rouges,
    }


def _by_shape(metrics: dict) -> dict:
    """eval.json before prompt shapes held one set of metrics per model: the `input` shape."""
    return {"input": metrics} if "loss" in metrics else metrics


def _share(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value, spec: str) -> str:
    """A metric, or – where it was not measured (a model evaluated by loss only)."""
    return "–" if value is None else format(value, spec)


def comparison_table(result: dict, name=lambda n: f"`{n}`") -> str:
    """One row per model and prompt shape; `name` renders a model's name (push replaces local paths)."""
    rows = [
        "| model | prompt | loss (learned tokens) | perplexity | ROUGE-L F | chrF | answer words | stops on EOS | "
        "Indonesian | repetition |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, by_shape in result["models"].items():
        for shape, m in _by_shape(by_shape).items():
            rows.append(
                f"| {name(model)} | {shape} | {m['loss']:.3f} | {m['perplexity']:.1f} | {_num(m.get('rouge_l'), '.3f')} | "
                f"{_num(m.get('chrf'), '.1f')} | {_num(m.get('answer_words_mean'), '.0f')} | {_share(m.get('eos_share'))} | "
                f"{_share(m.get('indonesian_share'))} | {_share(m.get('repetition_share'))} |"
            )
    return (
        f"{result.get('records')} held-out records ({result.get('split')} split of "
        f"{Path(str(result.get('data_path'))).name}), greedy answers of at most {result.get('max_new_tokens')} tokens, "
        f"{result.get('dtype', 'float32')}" + (" with int8 weights" if result.get("quantize") == "int8" else "") + ". "
        "Prompt `input`: " + SHAPES["input"] + "; `empty`: " + SHAPES["empty"] + ".\n\n" + "\n".join(rows)
    )
