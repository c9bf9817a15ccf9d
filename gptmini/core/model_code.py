"""The export folder's own model code, ``modeling_gptmini.py``, generated from gptmini/core/model.py. No Lightning.

Hugging Face model folders with custom code carry the model's source beside the weights
(``modeling_<name>.py``), so that torch, safetensors and tokenizers alone load them. Ours is the text
of gptmini/core/model.py itself, not a copy kept by hand: its ``from gptmini...`` imports are
replaced by stand-ins (the range-checked config types become plain ``int``/``float``, ``ConfigError``
a ``ValueError``; the ranges were checked when gptmini wrote config.json), and the methods that need
the rest of gptmini (``LEFT_OUT``) are left out. A change to the
model reaches the next export by itself; a new gptmini import without a stand-in stops the export
with its name, and tests/commands/test_export.py checks that the file's model gives gptmini's logits.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

from gptmini.core import config as config_module
from gptmini.core import losshead
from gptmini.core import model as model_module

PACKAGE = "gptmini"
# Methods left out of the model file because they need the rest of gptmini: none today (sampling is
# gptmini.core.sampling's, not a GPTMini method).
LEFT_OUT: set[str] = set()


def _stand_in(name: str, obj: Any) -> str | None:
    """The stand-in of a gptmini name for the model file, or None when the code using it is left out."""
    if obj is config_module.ConfigError:
        return f'class {name}(ValueError):\n    """A model config that cannot work."""\n'
    if obj is config_module.check_fields:
        return (
            f"def {name}(obj, prefix):\n"
            '    """gptmini checks each field\'s range here; config.json was written checked."""\n'
        )
    if obj is losshead.linear_cross_entropy:  # the chunked head is a training kernel: plain math here
        return (
            f"def {name}(x, weight, targets, chunk):\n"
            '    """gptmini computes this in chunks when training (model.kernels); the same value."""\n'
            "    return F.cross_entropy(F.linear(x.reshape(-1, x.size(-1)), weight), targets.reshape(-1))\n"
        )
    if config_module._is_restricted(obj):  # PositiveInt, VocabSize, ...: the plain type
        return f"{name} = {'int' if issubclass(obj, int) else 'float'}\n"
    return None


def _self_contained(module: Any) -> str | None:
    """The code of a gptmini module that imports nothing from gptmini (its docstring and
    ``from __future__`` line dropped), to inline; None for any other module."""
    source = Path(module.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        if any(n.split(".")[0] == PACKAGE for n in names):
            return None
    lines = source.splitlines(keepends=True)
    body = [n for n in tree.body if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return "".join(lines[body[0].lineno - 1 :]).rstrip() + "\n" if body else ""


def _top_level_names(source: str) -> set[str]:
    out: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def model_code(source: str | None = None) -> str:
    """The text of ``modeling_gptmini.py``, from ``source`` (default: gptmini/core/model.py's)."""
    if source is None:
        source = Path(model_module.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    cuts: list[tuple[int, int]] = []  # 0-based [start, end) line ranges left out
    stand_ins: list[str] = []
    dropped: set[str] = set()
    inlined: dict[str, str] = {}  # module -> its code, for gptmini modules that import no gptmini
    first_import = None
    for node in tree.body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise RuntimeError(f"model.py line {node.lineno}: write `from gptmini... import NAME` (export maps names)")
        if not (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE):
            continue
        first_import = node.lineno - 1 if first_import is None else first_import
        cuts.append((node.lineno - 1, node.end_lineno))
        module = importlib.import_module(node.module)
        inline = _self_contained(module)
        for alias in node.names:
            name = alias.asname or alias.name
            text = _stand_in(name, getattr(module, alias.name))
            if text is not None:
                stand_ins.append(text)
            elif inline is not None and alias.asname is None:
                if node.module not in inlined:
                    inlined[node.module] = inline
            else:
                dropped.add(name)
    for node in tree.body:  # the methods that need the rest of gptmini are left out
        for item in node.body if isinstance(node, ast.ClassDef) else []:
            if isinstance(item, ast.FunctionDef) and f"{node.name}.{item.name}" in LEFT_OUT:
                start = min([item.lineno] + [d.lineno for d in item.decorator_list]) - 1
                cuts.append((start, item.end_lineno))
    kept = [line for i, line in enumerate(lines) if not any(a <= i < b for a, b in cuts)]
    if first_import is not None:
        before = sum(1 for i in range(first_import) if not any(a <= i < b for a, b in cuts))
        plain = "".join(t for t in stand_ins if " = " in t.splitlines()[0])  # type aliases, together
        defs = [t for t in stand_ins if " = " not in t.splitlines()[0]]
        block = "\n# Stand-ins for gptmini's imports (see the note at the top).\n" + "\n\n".join(
            [*defs[:1], plain, *defs[1:]] if plain else defs
        )
        for name, code in inlined.items():
            clash = _top_level_names(code) & _top_level_names(source)
            if clash:
                raise RuntimeError(f"{name} and gptmini/core/model.py both define {', '.join(sorted(clash))}")
            path = name.replace(".", "/") + ".py"
            block += f"\n\n# -- {path}, inlined unchanged (it imports nothing from gptmini) --\n{code}"
        kept.insert(before, block)
    header = (
        "# modeling_gptmini.py: generated by `gptmini export` from\n"
        "# gptmini/core/model.py: the same code, with gptmini's imports replaced by plain stand-ins\n"
        "# or the imported module's own code (sampling is `gptmini generate`, not part of the\n"
        "# model). Needs torch only.\n"
    )
    code = header + "".join(kept).rstrip() + "\n"
    left = sorted({n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and n.id in dropped})
    if left:
        raise RuntimeError(
            f"gptmini/core/model.py uses {', '.join(left)} (from gptmini) outside the methods an export "
            f"leaves out ({', '.join(sorted(LEFT_OUT))}); give it a stand-in in gptmini/core/model_code.py."
        )
    return code
