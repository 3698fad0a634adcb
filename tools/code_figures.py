"""Figures of the code, to compare before and after a renovation.

    python tools/code_figures.py [PACKAGE_DIR]     (default: charfw/ beside this folder)

Prints: Python files, lines, the largest functions, imports inside functions (all, and those of
charfw's own modules), and package loops: groups of charfw's packages and top-level modules
that import each other, directly or through others (counting imports inside functions too, since
those only hide a loop).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def unit(module: str) -> str:
    """charfw.train.loop -> charfw.train; charfw.cli -> charfw.cli."""
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(node: ast.AST, current: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = current.split(".")[:-node.level] if not current.endswith("__init__") else current.split(".")
            prefix = ".".join(base[:len(base)])
            return [f"{prefix}.{node.module}" if node.module else prefix]
        return [node.module or ""]
    return []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one node."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "charfw"
    files = sorted(root.rglob("*.py"))
    lines = 0
    functions: list[tuple[int, str]] = []
    inner_all = inner_own = 0
    graph: dict[str, set[str]] = defaultdict(set)
    for path in files:
        text = path.read_text(encoding="utf-8")
        lines += text.count("\n")
        tree = ast.parse(text)
        name = module_name(root, path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root.parent)}:{node.name}"))
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        inner_all += 1
                        inner_own += any(m.startswith("charfw") for m in imported(inner, name))
            for target in imported(node, name):
                if target.startswith("charfw.") and unit(target) != unit(name):
                    graph[unit(name)].add(unit(target))
    functions.sort(reverse=True)
    print(f"files: {len(files)}, lines: {lines}")
    print("largest functions: " + ", ".join(f"{where} ({n} lines)" for n, where in functions[:5]))
    print(f"imports inside functions: {inner_all} ({inner_own} of charfw's own modules)")
    loops = strongly_connected(graph)
    print(f"package loops: {len(loops)}" + "".join(f"\n  {' <-> '.join(c)}" for c in loops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
