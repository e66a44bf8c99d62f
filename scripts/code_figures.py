"""Size figures of the code, read from the AST: the longest functions, the most parameters, the largest modules
(for a refactor's before/after; functions with self/cls do not count them).

    .venv/bin/python scripts/code_figures.py [REPO_ROOT]       # default: this checkout
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FOLDERS = ("c123", "flows", "tasks", "datasets", "reports")
NAMED = ("c123/reconstruct.py:reconstruct", "c123/volume_render.py:render_nerf", "c123/volume_render.py:render_rays")


def figures(root: Path) -> tuple[list[tuple[int, int, str]], list[tuple[int, str]]]:
    """(lines, parameters, 'file:function') of every function and (lines, file) of every module under FOLDERS."""
    funcs, mods = [], []
    for path in sorted(p for folder in FOLDERS for p in (root / folder).rglob("*.py")):
        text, name = path.read_text(), str(path.relative_to(root))
        mods.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                params -= bool(a.args and a.args[0].arg in ("self", "cls"))
                funcs.append((node.end_lineno - node.lineno + 1, params, f"{name}:{node.name}"))
    return funcs, mods


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    funcs, mods = figures(root)
    for lines, params, where in funcs:
        if where in NAMED:
            print(f"{where}: {lines} lines, {params} parameters")
    print("largest modules:", ", ".join(f"{m} {n}" for n, m in sorted(mods, reverse=True)[:6]))
    print("longest functions:", ", ".join(f"{w} {n}" for n, _, w in sorted(funcs, reverse=True)[:6]))
    print("most parameters:", ", ".join(f"{w} {p}" for _, p, w in sorted(funcs, key=lambda f: -f[1])[:6]))
    print(f"functions over 60 lines: {sum(n > 60 for n, _, _ in funcs)} of {len(funcs)}")


if __name__ == "__main__":
    main()
