"""Who imports whom, read from the AST (module-level and function-level imports alike), for docs/ARCHITECTURE.md.

    .venv/bin/python scripts/import_graph.py          # folder graph with import counts, c123 module graph, cycles
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

FOLDERS = ["c123", "c123_pipeline", "datasets", "tasks", "flows", "reports"]


def imported_names(path: Path) -> list[str]:
    """Absolute module names one file imports; `from c123_pipeline import tasks` counts as `c123_pipeline.tasks`."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def folder_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "c123_pipeline" and len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]  # the pipeline folders are installed as c123_pipeline.X
    return parts[0] if parts[0] in FOLDERS else None


def module_name(path: Path) -> str:
    name = ".".join(path.with_suffix("").parts)
    return name.removesuffix(".__init__")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def main() -> None:
    folders: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for folder in FOLDERS:
        for path in Path(folder).rglob("*.py"):
            targets = {folder_of(name) for name in imported_names(path)} - {None, folder}
            folders[folder].update(targets)
    print("folders (how many files of the left import the right):")
    for folder in FOLDERS:
        print(f"  {folder:14s} -> " + (", ".join(f"{t} ({n})" for t, n in sorted(folders[folder].items())) or "-"))
    modules = {module_name(p): p for p in sorted(Path("c123").rglob("*.py"))}
    edges = {m: {n for n in imported_names(p) if n in modules and n != m} for m, p in modules.items()}
    print("c123 modules:")
    for m, targets in edges.items():
        print(f"  {m.removeprefix('c123.')} -> " + (", ".join(sorted(t.removeprefix("c123.") for t in targets)) or "-"))
    print("cycles in c123:", cycles(edges) or "none")


if __name__ == "__main__":
    main()
