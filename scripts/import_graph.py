"""Draw the import graph of the gptmini package with `ast` (no import is executed).

    python scripts/import_graph.py            # summary: rooms, arrows, cycles, largest module
    python scripts/import_graph.py --edges    # every module -> module arrow too

Rooms are the packages (gptmini, gptmini.core, gptmini.train, ...). An arrow A -> B means module A
imports module B; "lazy" arrows come from an import inside a function body (they hide cycles from
Python's import machinery, not from the reader), so cycles are reported with and without them.
Why a script and not pydeps: pydeps needs graphviz and imports the code; this reads the source only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "gptmini"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room(mod: str, packages: set[str]) -> str:
    return mod if mod in packages else mod.rsplit(".", 1)[0]


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(n: ast.AST) -> bool:
    return isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)


def _inside(n: ast.AST, parents: dict[ast.AST, ast.AST], pred) -> bool:
    while n in parents:
        n = parents[n]
        if pred(n):
            return True
    return False


def collect(root: Path = ROOT) -> tuple[dict[str, int], set[str], dict[tuple[str, str], bool]]:
    """Modules with line counts, packages, and arrows {(src, dst): lazy} (lazy: only inside functions)."""
    files = sorted((root / PKG).rglob("*.py"))
    lines = {module_name(f): len(f.read_text().splitlines()) for f in files}
    packages = {module_name(f) for f in files if f.name == "__init__.py"}
    edges: dict[tuple[str, str], bool] = {}

    def target(name: str) -> str | None:
        while name and name not in lines:
            name = name.rpartition(".")[0]
        return name or None

    for f in files:
        mod = module_name(f)
        tree = ast.parse(f.read_text())
        parents: dict[ast.AST, ast.AST] = {}
        for p in ast.walk(tree):
            for c in ast.iter_child_nodes(p):
                parents[c] = p


        for n in ast.walk(tree):
            names: list[str] = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = resolve(mod, f.name == "__init__.py", n)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in lines else base for a in n.names]
            if not names or _inside(n, parents, _type_checking):
                continue
            lazy = _inside(n, parents, lambda a: isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)))
            for name in names:
                if not name.startswith(PKG):
                    continue
                dst = target(name)
                if dst is None or dst == mod:
                    continue
                # a package's own __init__ imported on the way down is not an arrow worth drawing
                if dst in packages and mod.startswith(dst + "."):
                    continue
                key = (mod, dst)
                edges[key] = edges.get(key, True) and lazy
    return lines, packages, edges


def core_lightning() -> list[str]:
    """Core modules that import Lightning when imported (an import inside a function, run only when
    a Lightning object is passed in, does not count; nor does one under TYPE_CHECKING)."""
    found = []
    for f in sorted((ROOT / PKG / "core").rglob("*.py")):
        tree = ast.parse(f.read_text())
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for n in ast.walk(tree):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            if not any(x.split(".")[0] == "lightning" for x in names):
                continue
            if _inside(n, parents, lambda a: isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)) or _type_checking(a)):
                continue
            found.append(module_name(f))
            break
    return found


def cycles(nodes: list[str], arrows: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    graph = {n: sorted(d for s, d in arrows if s == n) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in nodes:
        if v not in index:
            visit(v)
    return sorted(out)


def summary(show_edges: bool = False) -> str:
    lines, packages, edges = collect()
    nodes = sorted(lines)
    out: list[str] = []
    rooms: dict[str, list[str]] = {}
    for m in nodes:
        rooms.setdefault(room(m, packages), []).append(m)
    out.append(f"modules: {len(nodes)}, lines: {sum(lines.values())}")
    out.append("rooms (package: modules, lines):")
    for r, ms in sorted(rooms.items()):
        out.append(f"  {r}: {len(ms)} modules, {sum(lines[m] for m in ms)} lines")
    eager = {e for e, lazy in edges.items() if not lazy}
    lazy = {e for e, lz in edges.items() if lz}
    out.append(f"arrows between modules: {len(edges)} ({len(eager)} at import time, {len(lazy)} inside functions)")
    room_arrows: dict[tuple[str, str], int] = {}
    for s, d in edges:
        rs, rd = room(s, packages), room(d, packages)
        if rs != rd:
            room_arrows[(rs, rd)] = room_arrows.get((rs, rd), 0) + 1
    out.append("arrows between rooms (count of module arrows):")
    for (rs, rd), c in sorted(room_arrows.items()):
        out.append(f"  {rs} -> {rd}: {c}")
    room_cycles = cycles(sorted(rooms), set(room_arrows))
    out.append(f"room cycles: {room_cycles or 'none'}")
    all_cycles = cycles(nodes, set(edges))
    eager_cycles = cycles(nodes, eager)
    out.append(f"module cycles at import time: {eager_cycles or 'none'}")
    hidden = [c for c in all_cycles if c not in eager_cycles]
    out.append(f"module cycles hidden by imports inside functions: {hidden or 'none'}")
    for c in hidden:
        for s, d in sorted(lazy):
            if s in c and d in c:
                out.append(f"    lazy arrow {s} -> {d}")
    out.append(f"core modules importing lightning at import time: {core_lightning() or 'none'}")
    big = sorted(lines.items(), key=lambda kv: -kv[1])[:3]
    out.append("largest modules: " + ", ".join(f"{m} ({n})" for m, n in big))
    if show_edges:
        out.append("arrows:")
        for (s, d), lz in sorted(edges.items()):
            out.append(f"  {s} -> {d}{'  (inside a function)' if lz else ''}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="list every module arrow too")
    args = ap.parse_args(argv)
    print(summary(args.edges))


if __name__ == "__main__":
    main()
