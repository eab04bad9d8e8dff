"""The report of `python -m trainer.bench --output_dir bench/`: bench.md's markdown (tables ready for
BENCHMARKS.md, with the command and the machine), and progress lines on stderr."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the markdown."""
    print(message, file=sys.stderr, flush=True)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        size = abs(value)
        return f"{value:,.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 0.1 else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of `rows` (the first row's keys are the headers); all-number columns align right."""
    headers = list(rows[0])
    numeric = [all(isinstance(r.get(h), (int, float)) and not isinstance(r.get(h), bool) for r in rows) for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(h)) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The whole report: the command, the machine, then per part its notes, table and `after` lines."""
    m = report["machine"]
    out = [
        "# trainer.bench", "", f"    {report['command']}", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
        + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")
        + f"; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}.",
    ]
    for name, part in report["parts"].items():
        out += ["", f"## {name}", ""]
        out += [*part.get("notes", []), ""] if part.get("notes") else []
        out.append(markdown_table(part["table"]))
        out += part.get("after", [])
    return "\n".join(out) + "\n"
