"""The project's own import graph, read from the source (ast; nothing is imported or run).

Two users: the tests that keep dependencies pointing one way (data_gen never reaches torch, serving
never reaches training, no cycles), and `trainer.hub.spaces`, which bundles exactly the modules the app
imports into a Space. Imports inside functions count too: they run when that function does.

    python -m trainer.import_graph app          # the project modules app.py needs, one per line
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

from trainer import ROOT

PACKAGES = ("trainer", "data_gen")


def module_path(module: str) -> Path | None:
    """The file of a project module (`app`, `trainer.serve.inference`, a package's __init__), else None."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES or module == "app"


@cache
def _tree(module: str) -> tuple[Path, ast.Module]:
    path = module_path(module)
    if path is None:
        raise ValueError(f"{module}: no such module under {ROOT}")
    return path, ast.parse(path.read_text(encoding="utf-8"), str(path))


@cache
def imports_of(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(project modules, third-party top-level names) that `module`'s source imports."""
    path, tree = _tree(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .y import z
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                prefix = f"{base}.{node.module}" if node.module else base
            else:
                prefix = node.module or ""
            names.append(prefix)
            # `from trainer import batches` imports a module, `from trainer.records import FIELDS` a name.
            names += [f"{prefix}.{alias.name}" for alias in node.names if module_path(f"{prefix}.{alias.name}")]
    project, external = set(), set()
    for name in names:
        if _is_project(name):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = name.split(".")
            project.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_path(".".join(parts[:i])))
        elif name:
            external.add(name.split(".")[0])
    project.discard(module)
    return tuple(sorted(project)), tuple(sorted(external))


def reachable(*roots: str) -> set[str]:
    """Every project module that importing `roots` can run (roots included)."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += imports_of(module)[0]
    return seen


def external_imports(*roots: str) -> set[str]:
    """Third-party top-level packages reachable from `roots`."""
    return {name for module in reachable(*roots) for name in imports_of(module)[1]}


def all_modules() -> list[str]:
    found = ["app"] if module_path("app") else []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def top_level_cycles() -> list[list[str]]:
    """Cycles among module-level imports (the ones that run at import time, where a cycle breaks)."""
    graph = {m: _top_level_imports(m) for m in all_modules()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    return cycles


def _top_level_imports(module: str) -> set[str]:
    _, tree = _tree(module)
    found = set()
    for node in tree.body:  # module level only (not inside functions), including `if` / `try` blocks
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and not sub.level and sub.module:
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names if module_path(f"{sub.module}.{a.name}"))
    return {m for m in found if _is_project(m) and module_path(m) and m != module}


def main(argv: list[str] | None = None) -> int:
    roots = (sys.argv[1:] if argv is None else argv) or ["app"]
    for module in sorted(reachable(*roots)):
        print(module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
