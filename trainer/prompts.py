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

    def segments(self, messages: list[dict]) -> list[tuple[str, str]]:
        """A conversation as (prompt, answer) per exchange, the pieces `chat_template` renders:
        bos + prompt + answer + eos for each exchange, one after another. The system text persists: every
        later user turn is rendered with it as the instruction. `format` is the one-exchange case.

        Expects a validated conversation (trainer.records): user and assistant turns alternating."""
        system, prompt, out = "", None, []
        for m in messages:
            if m["role"] == "system":
                system = m["content"]
            elif m["role"] == "user":
                if prompt is not None:
                    raise ValueError("two user turns in a row: no answer between them")
                if system:
                    prompt = self.prompt_input.format(instruction=system, input=m["content"])
                else:
                    prompt = self.prompt_no_input.format(instruction=m["content"])
            elif m["role"] == "assistant":
                if prompt is None:
                    raise ValueError("an assistant turn without a user turn before it")
                out.append((prompt, m["content"]))
                prompt = None
        return out

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


# ------------------------------------------------------------------------------------------ conversations
# What a conversation the templates render looks like, checked where it enters: training files
# (trainer.records) and the page's ratings (trainer.preferences).

# An Alpaca record as the chat messages it stands for, the inverse of `Template.segments`' mapping. Two prompt
# shapes, because GenMedGPT's records and the demo ask differently (evaluation measures both):
SHAPES = {
    "input": "with input (instruction + the patient's words as input, as in GenMedGPT)",
    "empty": "empty input (the patient's words as the instruction, as the demo asks)",
}


def messages_for(record: dict, shape: str = "input") -> list[dict]:
    """The prompt of an Alpaca record as chat messages in one of SHAPES: `input` as trained (instruction as
    system, input as user; no input -> the instruction as the user's turn), `empty` as the demo asks (the
    patient's words alone as the user's turn). A record without input is the same in both."""
    if shape not in SHAPES:
        raise ValueError(f"unknown prompt shape {shape!r}; choose from {', '.join(SHAPES)}")
    if record["input"] and shape == "input":
        return [{"role": "system", "content": record["instruction"]}, {"role": "user", "content": record["input"]}]
    return [{"role": "user", "content": record["input"] or record["instruction"]}]


ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}  # ShareGPT `from` -> OpenAI role


def conversation_messages(turns: object, key: str = "messages", fmt: str = "messages") -> tuple[list[dict] | None, str | None]:
    """The turns as OpenAI messages (role, content only), or the first malformed turn named by its index."""
    if not isinstance(turns, list):
        return None, f"field {key!r} is {type(turns).__name__}, not a list of turns"
    if not turns:
        return None, f"field {key!r} is empty: a conversation needs a user turn and the assistant's answer"
    role_key, text_key = ("role", "content") if fmt == "messages" else ("from", "value")
    names = ROLES if fmt == "messages" else tuple(SHAREGPT_ROLES)
    messages = []
    for i, turn in enumerate(turns):
        at = f"{key}[{i}]"
        if not isinstance(turn, dict):
            return None, f"{at}: expected an object with {role_key!r} and {text_key!r}, got {type(turn).__name__}"
        if role_key not in turn:
            return None, f"{at}: missing {role_key!r}; give it one of {', '.join(names)}"
        if turn[role_key] not in names:
            return None, f"{at}: unknown {role_key} {turn[role_key]!r}; use one of {', '.join(names)}"
        if text_key not in turn:
            return None, f"{at}: missing {text_key!r}, the turn's text"
        text = turn[text_key]
        if not isinstance(text, str):
            return None, f"{at}: {text_key!r} is {type(text).__name__}, not a string"
        if not text.strip():
            return None, f"{at}: empty {text_key!r}; write the turn's text or drop the turn"
        role = turn[role_key] if fmt == "messages" else SHAREGPT_ROLES[turn[role_key]]
        messages.append({"role": role, "content": text})
    return messages, None


def conversation_shape(messages: list[dict], key: str = "messages", ends_with: str = "assistant") -> str | None:
    """Why the turns are not a conversation to learn from, naming the turn, or None: an optional system turn
    first, then user and assistant alternating from a user turn, ending on `ends_with` ("user" for a
    prompt still to be answered, as the page's ratings hold)."""
    start = 1 if messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages[start:], start):
        if m["role"] == "system":
            return f"{key}[{i}]: a system turn must be the first turn; move it to the start or drop it"
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            if i == start:
                return f"{key}[{i}]: the conversation starts with an assistant turn; start it with the user's turn"
            return (f"{key}[{i}]: two {m['role']} turns in a row ({key}[{i - 1}] and {key}[{i}]); merge them or put "
                    f"the {expected}'s turn between them")
    if ends_with == "assistant" and not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn: nothing to learn; add the assistant's answer"
    last = messages[-1]["role"]
    if last != ends_with:
        if ends_with == "assistant":
            return (f"{key}[{len(messages) - 1}]: the conversation ends on a user turn, so its last question has "
                    "nothing to learn; add the assistant's answer or drop that turn")
        article = "an" if last == "assistant" else "a"
        return f"{key}[{len(messages) - 1}]: the conversation ends on {article} {last} turn; it must end on the user's turn"
    return None


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
