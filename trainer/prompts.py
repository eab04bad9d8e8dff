"""Prompt templates: the one home of every prompt string in alpaca-medis.

A template is data (two format strings, as in stanford_alpaca's PROMPT_DICT) plus pure functions.
It travels with the checkpoint: training writes `Template.chat_template(tokenizer)` into the saved
tokenizer, so `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`
formats a prompt exactly as training did.

Chat messages map onto Alpaca fields like this:
- a user message alone            -> `prompt_no_input`, instruction = the user's text;
- a system message + user message -> `prompt_input`, instruction = the system text and
  input = the user's text (GenMedGPT's shape: a fixed "you are a doctor" instruction, the
  patient's words as input);
- earlier turns are rendered one after another as prompt + answer + EOS, the way each training
  example ends, and the last user message opens the new prompt.

    python -m trainer.prompts alpaca-id "Apa gejala demam berdarah?"   # prints the prompt
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

# stanford_alpaca train.py, verbatim. Note: no newline after "### Response:".
_ALPACA = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}

# The Indonesian version used by the original alpaca-medis work.
_ALPACA_ID = {
    "prompt_input": (
        "Di bawah ini adalah instruksi yang menjelaskan tugas, dipasangkan dengan masukan yang memberikan "
        "konteks lebih lanjut. Tulis tanggapan yang melengkapi permintaan dengan tepat.\n\n"
        "### Instruksi:\n{instruction}\n\n### Masukan:\n{input}\n\n### Tanggapan:"
    ),
    "prompt_no_input": (
        "Di bawah ini adalah instruksi yang menjelaskan tugas. "
        "Tulis tanggapan yang melengkapi permintaan dengan tepat.\n\n"
        "### Instruksi:\n{instruction}\n\n### Tanggapan:"
    ),
}

# Llama-2 chat wrapping of alpaca-id: the preamble becomes the <<SYS>> block. The original Space put
# a literal "<s>" in front while the tokenizer added BOS as well (a double BOS); here BOS only ever
# comes from the tokenizer.
_LLAMA_2 = {
    "prompt_input": (
        "[INST] <<SYS>>\n"
        "Di bawah ini adalah instruksi yang menjelaskan tugas, dipasangkan dengan masukan yang memberikan "
        "konteks lebih lanjut. Tulis tanggapan yang melengkapi permintaan dengan tepat.\n"
        "<</SYS>>\n\n"
        "### Instruksi:\n{instruction}\n\n### Masukan:\n{input} [/INST]"
    ),
    "prompt_no_input": (
        "[INST] <<SYS>>\n"
        "Di bawah ini adalah instruksi yang menjelaskan tugas. "
        "Tulis tanggapan yang melengkapi permintaan dengan tepat.\n"
        "<</SYS>>\n\n"
        "{instruction} [/INST]"
    ),
}


@dataclass(frozen=True)
class Template:
    name: str
    prompt_input: str
    prompt_no_input: str
    # Text a model may emit when it starts a new turn on its own; generation stops there.
    stop_markers: tuple[str, ...]

    def format(self, instruction: str, input: str = "") -> str:
        """The prompt for one Alpaca record (stanford_alpaca: empty input -> prompt_no_input)."""
        if input:
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def chat_template(self, bos_token: str | None = None) -> str:
        """A Jinja chat template that renders exactly `format()`, preceded by `bos_token` if given.

        Pass the tokenizer's BOS text only when its tokenizer adds BOS itself on encoding; the
        rendered prompt is then encoded with `add_special_tokens=False`.
        """
        in_head, in_mid, in_tail = _split(self.prompt_input, "{instruction}", "{input}")
        no_head, no_tail = _split(self.prompt_no_input, "{instruction}")
        lit = json.dumps  # a JSON string is a valid Jinja string literal, escapes included
        bos = lit(bos_token) if bos_token else "''"
        return (
            "{%- set ns = namespace(system='') -%}"
            f"{{{{- {bos} -}}}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
            "{%- elif message['role'] == 'user' -%}"
            "{%- if ns.system -%}"
            f"{{{{- {lit(in_head)} + ns.system + {lit(in_mid)} + message['content'] + {lit(in_tail)} -}}}}"
            "{%- else -%}"
            f"{{{{- {lit(no_head)} + message['content'] + {lit(no_tail)} -}}}}"
            "{%- endif -%}"
            "{%- elif message['role'] == 'assistant' -%}"
            "{{- message['content'] + eos_token -}}"
            "{%- endif -%}"
            "{%- endfor -%}"
        )

    def go_template(self, eos_token: str) -> str:
        """The same conversation shapes as `chat_template` in Go template syntax, for an Ollama Modelfile.

        No BOS: Ollama adds it itself when the GGUF says the tokenizer does (`tokenizer.ggml.add_bos_token`).
        Literal text is never followed by a trimming `{{-`, so the prompt's own newlines survive.
        """
        in_head, in_mid, in_tail = _split(self.prompt_input, "{instruction}", "{input}")
        no_head, no_tail = _split(self.prompt_no_input, "{instruction}")
        for text in (in_head, in_mid, in_tail, no_head, no_tail, eos_token):
            if "{{" in text or "}}" in text:
                raise ValueError(f"{self.name}: {text!r} contains Go template delimiters")
        for text in (in_tail, no_tail, eos_token):  # each is followed by a `{{-`, which would eat trailing whitespace
            if text != text.rstrip():
                raise ValueError(f"{self.name}: {text!r} ends in whitespace, which the Go template would trim")
        return (
            '{{- $system := "" }}'
            "{{- range .Messages }}"
            '{{- if eq .Role "system" }}{{ $system = .Content }}'
            '{{- else if eq .Role "user" }}'
            f"{{{{- if $system }}}}{in_head}{{{{ $system }}}}{in_mid}{{{{ .Content }}}}{in_tail}"
            f"{{{{- else }}}}{no_head}{{{{ .Content }}}}{no_tail}"
            "{{- end }}"
            '{{- else if eq .Role "assistant" }}{{ .Content }}' + eos_token
            + "{{- end }}"
            "{{- end }}"
        )


def _split(text: str, *fields: str) -> list[str]:
    """Split a format string at each field, in order: 'a{x}b{y}c' -> ['a', 'b', 'c']."""
    parts = []
    for field in fields:
        head, sep, text = text.partition(field)
        if not sep:
            raise ValueError(f"template text lacks {field}")
        parts.append(head.replace("{{", "{").replace("}}", "}"))
    return [*parts, text.replace("{{", "{").replace("}}", "}")]


TEMPLATES: dict[str, Template] = {
    "alpaca": Template("alpaca", **_ALPACA, stop_markers=("### Instruction", "### Response")),
    "alpaca-id": Template("alpaca-id", **_ALPACA_ID, stop_markers=("### Instruksi", "### Tanggapan")),
    "llama-2": Template("llama-2", **_LLAMA_2, stop_markers=("[INST]", "### Instruksi")),
}
DEFAULT_TEMPLATE = "alpaca-id"


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"Unknown template {name!r}. Choose one of: {', '.join(TEMPLATES)}.") from None


def bos_text(tokenizer) -> str | None:
    """The BOS text when `tokenizer` prepends BOS by itself (Llama-2 does, SmolLM2 and GPT-2 don't)."""
    if tokenizer.bos_token is None:
        return None
    ids = tokenizer("x")["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == tokenizer.bos_token_id else None


def chat_template_for(tokenizer, template: Template) -> str:
    return template.chat_template(bos_text(tokenizer))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m trainer.prompts TEMPLATE INSTRUCTION")
    print(get_template(sys.argv[1]).format(sys.argv[2]))
