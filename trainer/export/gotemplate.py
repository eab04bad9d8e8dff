"""Just enough of Go's text/template to render an Ollama TEMPLATE in Python, so a test can hold it to the
training prompt byte for byte without Ollama.

Covered: text, `{{ .Field }}` and `{{ $var }}` output, `{{ $v := "lit" }}` / `{{ $v = .Field }}`,
`range`, `if` / `else if` / `else` / `end`, `eq A B`, truthiness (empty string and empty list are false),
and the whitespace trims `{{- ` and ` -}}`. Anything else raises GoTemplateError rather than guessing.

    render('{{- range .Messages }}{{ .Content }}{{ end }}', {"Messages": [{"Role": "user", "Content": "hi"}]})
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_ASSIGN = re.compile(r"(\$\w+)\s*(:?=)\s*(.+)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


class GoTemplateError(ValueError):
    pass


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", ...), ("action", ...)] with the trim markers applied to the neighbouring text."""
    tokens: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    text = source[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if "{{" in text:
        raise GoTemplateError(f"unclosed action in {text[:40]!r}")
    if text:
        tokens.append(("text", text))
    return tokens


def _parse(tokens: list[tuple[str, str]], i: int = 0, until: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """A node list up to one of `until` (`end`, `else ...`); returns (nodes, next index, the word that ended it)."""
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(maxsplit=1)[0] if value else ""
        if word in until:
            return nodes, i, value
        if word == "range":
            body, i, ended = _parse(tokens, i, ("end",))
            nodes.append(("range", value[len("range"):].strip(), body))
        elif word == "if":
            i, node = _parse_if(tokens, i, value[len("if"):].strip())
            nodes.append(node)
        elif word in ("end", "else"):
            raise GoTemplateError(f"unexpected {{{{ {value} }}}}")
        else:
            nodes.append(("expr", value))
    if until:
        raise GoTemplateError(f"missing {{{{ {until[0]} }}}}")
    return nodes, i, ""


def _parse_if(tokens, i: int, condition: str) -> tuple[int, tuple]:
    branches = []
    while True:
        body, i, ended = _parse(tokens, i, ("end", "else"))
        branches.append((condition, body))
        if ended == "end":
            return i, ("if", branches)
        rest = ended[len("else"):].strip()
        if rest.startswith("if "):
            condition = rest[len("if "):].strip()
        elif not rest:
            condition = None  # plain else
        else:
            raise GoTemplateError(f"unsupported {{{{ {ended} }}}}")


def _value(expr: str, dot, scope: dict):
    expr = expr.strip()
    if m := _STRING.fullmatch(expr):
        return m.group(1).encode().decode("unicode_escape")
    if expr.startswith("$"):
        if expr not in scope:
            raise GoTemplateError(f"undefined variable {expr}")
        return scope[expr]
    if expr == ".":
        return dot
    if expr.startswith("."):
        value = dot
        for name in expr[1:].split("."):
            if not isinstance(value, dict) or name not in value:
                raise GoTemplateError(f"no field {expr} in {type(value).__name__}")
            value = value[name]
        return value
    parts = expr.split(maxsplit=1)
    if parts[0] == "eq" and len(parts) == 2:
        args = [m.group(0) for m in re.finditer(r'"(?:[^"\\]|\\.)*"|\S+', parts[1])]
        if len(args) != 2:
            raise GoTemplateError(f"eq takes two arguments: {expr}")
        return _value(args[0], dot, scope) == _value(args[1], dot, scope)
    raise GoTemplateError(f"unsupported expression {expr!r}")


def _run(nodes: list, dot, scope: dict, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "range":
            for item in _value(node[1], dot, scope) or ():
                _run(node[2], item, scope, out)
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _value(condition, dot, scope):
                    _run(body, dot, scope, out)
                    break
        elif m := _ASSIGN.fullmatch(node[1]):
            name, op, expr = m.groups()
            if op == "=" and name not in scope:
                raise GoTemplateError(f"assignment to undeclared {name}")
            scope[name] = _value(expr, dot, scope)
        else:
            value = _value(node[1], dot, scope)
            out.append("" if value is None else str(value))


def render(source: str, data: dict) -> str:
    nodes, _, _ = _parse(_lex(source))
    out: list[str] = []
    _run(nodes, data, {}, out)
    return "".join(out)


def ollama_messages(messages: list[dict]) -> dict:
    """OpenAI-style messages as Ollama hands them to a template (`.Messages` with `.Role` and `.Content`)."""
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
