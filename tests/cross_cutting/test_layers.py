"""The layer rule: nothing under gptmini/core imports Lightning, directly or through another module."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import gptmini.core

CORE = Path(gptmini.core.__file__).parent
# Lightning and the packages that come with it: core must run (train, sample, load) without any.
BLOCKED = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities", "torchmetrics")


def core_modules() -> list[str]:
    return sorted(
        "gptmini.core" + ("" if p.stem == "__init__" else "." + p.stem) for p in CORE.glob("*.py")
    )


def imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_core_sources_import_no_lightning_and_no_upper_layer():
    bad = []
    for path in sorted(CORE.glob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in BLOCKED or (top == "gptmini" and not name.startswith("gptmini.core")):
                bad.append(f"{path.name}: import {name}")
    assert len(core_modules()) >= 10  # the glob found the package
    assert bad == [], bad


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: gptmini.core must not need it")
sys.meta_path.insert(0, Block())
import importlib
for name in {modules!r}:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("ok", len({modules!r}))
"""


def test_every_core_module_imports_where_lightning_cannot():
    """A process where ``import lightning`` (and torchmetrics) fails imports every core module."""
    modules = core_modules()
    code = BLOCKER.format(blocked=BLOCKED, modules=modules)
    env = {**os.environ, "PYTHONPATH": str(CORE.parent.parent)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", str(len(modules))]


def test_console_script_tools_start_without_lightning():
    """``gptmini generate|export|eval`` are dispatched before anything imports Lightning (gptmini.commands)."""
    modules = ["gptmini.commands", "gptmini.commands.generate", "gptmini.commands.export", "gptmini.commands.eval"]
    code = BLOCKER.format(blocked=BLOCKED, modules=modules)
    code += "from gptmini.commands import main\nfor tool in ('export', 'eval'):\n    try:\n        main([tool, '--help'])\n    except SystemExit as e:\n        print('exit', e.code)\n"
    env = {**os.environ, "PYTHONPATH": str(CORE.parent.parent)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split().count("exit") == 2 and proc.stdout.split()[-2:] == ["exit", "0"]
    assert "out_dir" in proc.stdout and "--stride" in proc.stdout


def test_rename_table_points_at_what_exists_now():
    """Every old class path in gptmini.train.names leads to a real module or class, and is really gone."""
    import importlib.util

    from gptmini.train.names import MOVED

    for old, new in MOVED.items():
        module, _, attr = new.rstrip(".").rpartition(".") if not new.endswith(".") else (new[:-1], "", "")
        target = importlib.import_module(module)
        assert not attr or hasattr(target, attr), new
        old_module = old.rstrip(".") if old.endswith(".") else old.rpartition(".")[0]
        assert importlib.util.find_spec(old_module) is None, f"{old_module} still exists: drop it from MOVED"


ARCHITECTURE = CORE.parent.parent / "docs" / "architecture.md"


def _holds_code(path: Path) -> bool:
    """A module with more than a docstring (a package's ``__init__.py`` often has nothing else)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return path.name != "__init__.py" or any(
        not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body
    )


def test_architecture_doc_has_one_row_per_module():
    """docs/architecture.md's table names every module of the package (a package's ``__init__.py`` when
    it holds code), one row each, and no module that is gone. The message gives the rows to add."""
    package = CORE.parent
    modules = {p.relative_to(package.parent).as_posix() for p in package.rglob("*.py") if _holds_code(p)}
    rows = [line for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines() if line.startswith("| `gptmini/")]
    named = [row.split("`")[1] for row in rows]
    missing = sorted(modules - set(named))
    gone = sorted(m for m in named if m.endswith(".py") and m not in modules)
    twice = sorted({m for m in named if named.count(m) > 1})
    assert len(modules) >= 40  # the walk found the package
    assert not missing, "docs/architecture.md lacks these rows (add them to the table, one line each):\n" + "\n".join(
        f"| `{m}` | ... |" for m in missing
    )
    assert not gone, f"docs/architecture.md names modules that do not exist: remove their rows: {gone}"
    assert not twice, f"docs/architecture.md has more than one row for {twice}"


def test_no_import_cycle_even_for_annotations():
    """No two gptmini modules import each other, through any chain, counting imports made only for
    annotations (``if TYPE_CHECKING:``) and inside functions: each module can be read on its own."""
    package = CORE.parent
    modules = {
        ".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    edges = {
        name: {
            m for m in imported_names_anywhere(path) if m in modules and m != name and not name.startswith(m + ".")
        }
        for name, path in modules.items()
    }
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in edges[node]:
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for name in sorted(modules):
        if name not in done:
            visit(name, [name])
    assert len(modules) >= 40
    assert cycles == [], cycles


def imported_names_anywhere(path: Path) -> set[str]:
    """Every gptmini module ``path`` imports, at any depth (``from gptmini.x import y`` names x.y when
    that is a module, else x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("gptmini")}
