"""scripts/import_graph.py on the package: no import cycles (also none hidden by an import inside a
function), no cycle between rooms (packages), and a core that imports no Lightning."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parent.parent.parent / "scripts" / "import_graph.py"


def load():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles():
    graph = load()
    lines, packages, edges = graph.collect()
    assert ("gptmini.cli", "gptmini.train.resume") in edges  # the graph is really read
    assert graph.cycles(sorted(lines), set(edges)) == []
    rooms = {(graph.room(s, packages), graph.room(d, packages)) for s, d in edges}
    room_names = sorted({r for pair in rooms for r in pair})
    assert graph.cycles(room_names, {(a, b) for a, b in rooms if a != b}) == []


def test_cycle_detection_sees_a_cycle():
    graph = load()
    assert graph.cycles(["a", "b", "c"], {("a", "b"), ("b", "a"), ("b", "c")}) == [["a", "b"]]


def test_summary_names_the_largest_module():
    assert "largest modules: gptmini." in load().summary()
    assert "core modules importing lightning at import time: none" in load().summary()
