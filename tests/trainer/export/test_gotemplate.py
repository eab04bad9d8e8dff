import re

import pytest

from trainer.export.gotemplate import GoTemplateError, ollama_messages, render
from trainer.prompts import TEMPLATES

MESSAGES = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"}]


@pytest.mark.parametrize("source, want", [
    ("a {{ .X }} b", "a x b"),
    ("a  {{- .X }}  b", "ax  b"),  # {{- trims the whitespace before it, newlines included
    ("a\n\n{{ .X -}}\n\n b", "a\n\nxb"),
    ('{{ if eq .X "x" }}yes{{ else }}no{{ end }}', "yes"),
    ('{{ if eq .X "y" }}1{{ else if .Empty }}2{{ else }}3{{ end }}', "3"),  # "" is false
    ('{{- $v := "" }}{{ range .L }}{{ $v = . }}{{ end }}[{{ $v }}]', "[c]"),  # = reaches the variable outside range
    ("{{ range .L }}<{{ . }}>{{ end }}", "<a><b><c>"),
])
def test_go_template_subset(source, want):
    assert render(source, {"X": "x", "Empty": "", "L": ["a", "b", "c"]}) == want


@pytest.mark.parametrize("source, error", [
    ("{{ .Missing }}", "no field .Missing"),
    ("{{ $v = .X }}", "assignment to undeclared $v"),
    ("{{ if .X }}open", "missing {{ end }}"),
    ("{{ end }}", "unexpected {{ end }}"),
    ("{{ printf \"%s\" .X }}", "unsupported expression"),
    ("{{ .X ", "unclosed action"),
])
def test_what_it_does_not_know_is_an_error_not_a_guess(source, error):
    with pytest.raises(GoTemplateError, match=re.escape(error)):
        render(source, {"X": "x"})


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_templates_go_form_renders_what_its_jinja_form_renders(name):
    """The Ollama TEMPLATE and the chat_template are two spellings of one prompt (BOS aside: Ollama adds it)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = TEMPLATES[name]
    jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template.chat_template())
    go = template.go_template("</s>")
    for messages in (MESSAGES[1:2], MESSAGES[:2], MESSAGES, MESSAGES[1:]):
        want = jinja.render(messages=messages, add_generation_prompt=True, eos_token="</s>")
        assert render(go, ollama_messages(messages)) == want
    assert render(go, ollama_messages(MESSAGES[1:2])) == template.format("U1")
    assert render(go, ollama_messages(MESSAGES[:2])) == template.format("S", "U1")


def test_go_template_refuses_text_it_would_mangle():
    from dataclasses import replace

    with pytest.raises(ValueError, match="ends in whitespace"):
        replace(TEMPLATES["alpaca-id"], prompt_no_input="{instruction}\n\n### Tanggapan:\n").go_template("</s>")
    with pytest.raises(ValueError, match="Go template delimiters"):
        replace(TEMPLATES["alpaca-id"], prompt_no_input="{{{{ {instruction}").go_template("</s>")
