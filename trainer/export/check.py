"""The check `trainer.export` runs on a GGUF file it wrote: reload it with transformers and hold its prompt,
tokens and logits to the source model's.

- Prompts: the GGUF's chat template (as transformers reads it from the file) and the Modelfile's Go
  TEMPLATE (rendered by trainer/export/gotemplate.py) give the training prompt byte for byte, for the demo's
  single question, the input shape and a second turn.
- Tokens: the GGUF's tokenizer encodes each held-out record as the source's does.
- Logits: on each record's prompt followed by the source's own greedy answer; the max and mean absolute
  difference, and next-token agreement along the answer (the source's bf16 copy measured alike).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

from trainer.batches import IGNORE_INDEX
from trainer.prompts import Template

AGREEMENT_TARGET = 0.99  # greedy next-token agreement with the source model
BF16_MARGIN = 0.005  # how far below the source's own bf16 agreement a GGUF may fall (see agreement_needed)


def prompt_checks(template: Template, tokenizer, gguf_tokenizer, go_template: str) -> dict:
    """The GGUF's chat template (as transformers reads it) and the Modelfile TEMPLATE, rendered for the demo's
    single question, the input shape and a second turn, against the training prompt."""
    from trainer.export.gotemplate import ollama_messages, render
    from trainer.prompts import bos_text

    t, eos = template, tokenizer.eos_token
    cases = [
        ([{"role": "user", "content": "Apa gejala demam berdarah?"}], t.format("Apa gejala demam berdarah?")),
        ([{"role": "system", "content": "Jawab sebagai dokter."}, {"role": "user", "content": "Saya demam tiga hari."}],
         t.format("Jawab sebagai dokter.", "Saya demam tiga hari.")),
        ([{"role": "user", "content": "Halo"}, {"role": "assistant", "content": "Halo, ada keluhan apa?"},
          {"role": "user", "content": "Pusing."}], t.format("Halo") + "Halo, ada keluhan apa?" + eos + t.format("Pusing.")),
    ]
    bos = bos_text(tokenizer) or ""
    gguf_ok = [gguf_tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) == bos + want for m, want in cases]
    ollama_ok = [render(go_template, ollama_messages(m)) == want for m, want in cases]
    return {"gguf_chat_template_renders_training_prompt": all(gguf_ok), "modelfile_template_renders_training_prompt": all(ollama_ok),
            "cases": len(cases)}


def compare_logits(source_model, gguf_model, tokenizer, gguf_tokenizer, records: list[dict], new_tokens: int = 48,
                   bf16_model=None) -> dict:
    """Both models on each record's prompt (alternating the demo's empty-input shape and the input shape)
    followed by the source model's own greedy answer: the logits over the whole sequence, and next-token
    agreement along the answer, which is what greedy decoding of the GGUF has to reproduce. `bf16_model`,
    the source in bf16 (the demo's dtype where it is fast), is held to the same measure: where two tokens
    nearly tie, any rounding picks either."""
    import torch

    from trainer.evaluate import encode
    from trainer.prompts import SHAPES

    stats = {"max": 0.0, "sum": 0.0, "positions": 0, "answer": 0, "same": 0, "bf16_same": 0, "mismatches": 0}
    for i, record in enumerate(records):
        shape = list(SHAPES)[i % len(SHAPES)]
        ids, labels = encode(tokenizer, record, shape)
        stats["mismatches"] += encode(gguf_tokenizer, record, shape)[0] != ids
        prompt = [t for t, label in zip(ids, labels) if label == IGNORE_INDEX]
        with torch.no_grad():
            sequence = source_model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                             pad_token_id=tokenizer.eos_token_id)
            a, b = source_model(input_ids=sequence).logits[0].float(), gguf_model(input_ids=sequence).logits[0].float()
            c = bf16_model(input_ids=sequence).logits[0] if bf16_model is not None else None
        diff = (a - b).abs()
        stats["max"] = max(stats["max"], float(diff.max()))
        stats["sum"] += float(diff.mean()) * len(diff)
        stats["positions"] += len(diff)
        answer = slice(len(prompt) - 1, len(diff) - 1)  # the positions that predict the answer's tokens
        stats["answer"] += answer.stop - answer.start
        stats["same"] += int((a[answer].argmax(-1) == b[answer].argmax(-1)).sum())
        if c is not None:
            stats["bf16_same"] += int((a[answer].argmax(-1) == c[answer].argmax(-1)).sum())
    answer = max(stats["answer"], 1)
    return {"records": len(records), "positions": stats["positions"], "token_id_mismatches": int(stats["mismatches"]),
            "max_abs_logit_diff": round(stats["max"], 5), "mean_abs_logit_diff": round(stats["sum"] / max(stats["positions"], 1), 6),
            "greedy_positions": stats["answer"], "greedy_agreement": round(stats["same"] / answer, 5),
            "bf16_greedy_agreement": round(stats["bf16_same"] / answer, 5) if bf16_model is not None else None}


def _gguf_config(folder: str, name: str):
    """The model's config as transformers reads it from the GGUF, with what llama.cpp derives where transformers
    falls back to a default: Gemma 3 scales queries by 1/sqrt(head_dim), transformers by 1/sqrt(256)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if config.model_type == "gemma3_text":
        config.query_pre_attn_scalar = config.head_dim
    return config


def verify(template: Template, tokenizer, folder: Path, out: Path, records: list[dict], go_template: str) -> dict:
    """`tokenizer`: the source's, with the training chat template; `folder`: the full checkpoint that was converted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as alone:  # transformers would also read tokenizer files lying beside the GGUF
        os.symlink(out.resolve(), Path(alone) / out.name)
        gguf_tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=out.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=out.name, config=_gguf_config(alone, out.name),
                                                          dtype=torch.float32).eval()
    result = prompt_checks(template, tokenizer, gguf_tokenizer, go_template)
    if records:
        from trainer.hw import cpu_has_fast_bf16

        source_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        # Where bf16 is emulated (~1 % of fp32's speed) the reference would take longer than the export.
        bf16 = copy.deepcopy(source_model).to(torch.bfloat16) if cpu_has_fast_bf16()[0] else None
        result |= compare_logits(source_model, gguf_model, tokenizer, gguf_tokenizer, records, bf16_model=bf16)
    return result


def agreement_needed(result: dict, min_agreement: float = AGREEMENT_TARGET) -> float:
    """`min_agreement`, or, when lower, what the source itself in bf16 reaches less half a point: a GGUF may
    depart from the fp32 model as far as the dtype the demo serves in does."""
    bf16 = result.get("bf16_greedy_agreement")
    return min(min_agreement, bf16 - BF16_MARGIN) if bf16 is not None else min_agreement


def check_passed(result: dict, min_agreement: float = AGREEMENT_TARGET) -> list[str]:
    problems = []
    if not result["gguf_chat_template_renders_training_prompt"]:
        problems.append("the GGUF's chat template does not render the training prompt")
    if not result["modelfile_template_renders_training_prompt"]:
        problems.append("the Modelfile's TEMPLATE does not render the training prompt")
    if result.get("token_id_mismatches"):
        problems.append(f"the GGUF's tokenizer encodes {result['token_id_mismatches']} of {result['records']} records differently")
    if "greedy_agreement" in result and result["greedy_agreement"] < agreement_needed(result, min_agreement):
        problems.append(f"next-token agreement along greedy answers {result['greedy_agreement']:.2%} is below "
                        f"{agreement_needed(result, min_agreement):.2%}")
    return problems
