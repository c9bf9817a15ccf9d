"""The suite's own parallel set-up: tests sharing an expensive fixture must reach pytest-xdist as
one group (conftest's SHARED_FIXTURES), or each worker builds the fixture again. pytest 9.2 broke
this silently (pytest-xdist#1386; pyproject pins pytest < 9.2): this test notices."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent.parent


@pytest.mark.xdist_group("grouping_check")
def test_xdist_groups_reach_the_scheduler(request):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("not run under pytest-xdist")
    assert request.node.nodeid.endswith("@grouping_check"), (
        "pytest-xdist --dist loadgroup no longer sees xdist_group marks (pytest-xdist#1386): "
        "install the pytest pyproject.toml names"
    )


def test_tests_using_a_shared_fixture_are_grouped(request):
    # conftest's hook marks them before pytest-xdist reads the marks (it suffixes the node ids).
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("not run under pytest-xdist")
    from conftest import SHARED_FIXTURES

    users = [i for i in request.session.items if set(SHARED_FIXTURES) & set(getattr(i, "fixturenames", ()))]
    if not users:
        pytest.skip("no test using a shared fixture was collected")
    assert all("@" in i.nodeid for i in users), [i.nodeid for i in users if "@" not in i.nodeid]


def fixture_scopes() -> dict[str, set[str]]:
    """Every fixture the suite defines with a scope: name -> the scopes it is defined with."""
    scopes: dict[str, set[str]] = {}
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.fixture":
                    scope = next((k.value.value for k in deco.keywords if k.arg == "scope"), "function")
                    scopes.setdefault(node.name, set()).add(scope)
    return scopes


def test_each_shared_fixture_exists_with_the_scope_it_is_grouped_by():
    # A renamed fixture, or one whose scope changed, would silently be built once per worker again.
    from conftest import SHARED_FIXTURES

    scopes = fixture_scopes()
    for name, scope in SHARED_FIXTURES.items():
        assert scopes.get(name) == {scope}, (name, scopes.get(name))
