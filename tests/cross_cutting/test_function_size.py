"""No function or method in gptmini/ is longer than 80 lines (issue 24: long functions hide their steps).

Classes are not limited (GPTMiniModule holds the recipe's hooks); a function's span counts its signature
and docstring, which for a CLI command or a LightningCLI class is its --help text.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gptmini

PACKAGE = Path(gptmini.__file__).parent
MAX_LINES = 80


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``file:line name (N lines)`` for each function or method under ``root`` spanning more than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > limit:
                    found.append((path.relative_to(root.parent), node.lineno, node.name, span))
    return [f"{path}:{line} {name} ({span} lines)" for path, line, name, span in sorted(found)]


def test_no_function_in_gptmini_is_longer_than_80_lines():
    assert len(list(PACKAGE.rglob("*.py"))) >= 30  # the walk found the package
    offenders = long_functions(PACKAGE)
    assert offenders == [], f"functions over {MAX_LINES} lines (split them into named pieces): {offenders}"


def test_the_check_names_a_long_method_and_a_long_nested_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES - 1))  # + the def line: exactly the limit
    (pkg / "ok.py").write_text(f"def fits():\n{body}")
    (pkg / "bad.py").write_text(
        "class Big:\n"
        f"    def method(self):\n        y = 0\n{body.replace('    ', '        ')}"
        f"\n\ndef outer():\n    async def inner():\n        y = 0\n{body.replace('    ', '        ')}"
    )
    assert long_functions(pkg) == [
        "pkg/bad.py:2 method (81 lines)",
        f"pkg/bad.py:{MAX_LINES + 5} outer (82 lines)",
        f"pkg/bad.py:{MAX_LINES + 6} inner (81 lines)",
    ]
