"""gptmini.core.startup: the collector paused while torch and Lightning are imported, restored for a
program that imports gptmini, and the imports frozen only in a process started as a gptmini program."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from gptmini.core.startup import collector_paused


def test_collector_paused_restores_either_state():
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            with collector_paused():
                assert not gc.isenabled()
            assert gc.isenabled() is enabled
        finally:
            gc.enable()


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_importing_gptmini_leaves_a_disabled_collector_disabled():
    # `import gptmini` alone imports no torch (GPTMini is imported on first use, with the collector paused).
    code = "import gc, sys; gc.disable(); import gptmini; print('torch' in sys.modules); gptmini.GPTMini; print(gc.isenabled())"
    assert run(code) == ["False", "False"]


# Loaded by every Python process on PYTHONPATH: at the start of each collection, whether Lightning is
# imported and how many objects are frozen; the first such collection is written at exit.
WATCH = """
import atexit, gc, os, sys
seen = []
def watch(phase, info):
    if phase == "start" and not seen and "lightning.pytorch" in sys.modules:
        seen.append(gc.get_freeze_count())
gc.callbacks.append(watch)
atexit.register(lambda: open(os.environ["WATCH_OUT"], "w").write(repr(seen)))
"""


@pytest.mark.parametrize("command", [["{python}", "-m", "gptmini.cli"], ["{gptmini}"]], ids=["python -m", "console script"])
def test_a_real_command_freezes_its_imports_before_any_collection_walks_them(command, tmp_path):
    # The commands as a user types them (a bad value ends each at its parse, exit 2): no collection
    # may start after Lightning's import with its objects still young (gptmini.core.startup).
    (tmp_path / "sitecustomize.py").write_text(WATCH)
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    env["WATCH_OUT"] = str(tmp_path / "seen")
    exe = {"python": sys.executable, "gptmini": str(Path(sys.executable).with_name("gptmini"))}
    argv = [a.format(**exe) for a in command] + ["fit", "--trainer.max_steps=x"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (first,) = eval((tmp_path / "seen").read_text())  # a collection did run after the import
    assert first > 100_000


def test_a_gptmini_program_freezes_its_imports_and_an_import_or_a_call_from_python_does_not():
    code = (
        "import contextlib, gc, io, sys\n"
        "from gptmini.cli import main\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"  # imported: the collector as it was, nothing frozen
        "def ran(args):\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "            main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    return gc.get_freeze_count()\n"
        # A bad value ends each at its parse (exit 2): the fit path without a fit's or --help's cost.
        "print(ran(['generate', '--help']), ran(['fit', '--trainer.max_steps=x']))\n"  # from Python: nothing frozen
        "sys.argv = ['gptmini', 'fit', '--trainer.max_steps=x']\n"
        "print(ran(None) > 100_000)\n"  # started as the program: torch's and Lightning's objects frozen
    )
    assert run(code) == ["True", "0", "0", "0", "True"]


def test_started_as_program_reads_the_command_line(monkeypatch):
    from gptmini.core import startup

    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    cases = [  # (argv[0], orig_argv, __main__'s module): the console script, -m while importing, -m running
        ("/venv/bin/gptmini", ["python", "/venv/bin/gptmini", "fit"], None, True),
        ("-m", ["python", "-X", "importtime", "-m", "gptmini.cli", "fit"], None, True),
        ("-m", ["python", "-m", "gptmini"], None, True),
        ("/repo/gptmini/cli.py", ["python", "-m", "gptmini.cli"], "gptmini.cli", True),
        ("-m", ["python", "-m", "gptmini_other"], None, False),
        ("-m", ["python", "-m", "pytest", "-m", "gptmini.cli"], None, False),
        ("-c", ["python", "-c", "import gptmini"], None, False),
        ("train.py", ["python", "train.py"], None, False),
        ("/home/me/gptmini.py", ["python", "/home/me/gptmini.py"], None, False),
        ("/repo/scripts/bench.py", ["python", "scripts/bench.py"], "bench", False),
    ]
    for argv0, orig, spec_name, want in cases:
        monkeypatch.setattr(sys, "argv", [argv0])
        monkeypatch.setattr(sys, "orig_argv", orig)
        spec = None if spec_name is None else type("Spec", (), {"name": spec_name})()
        monkeypatch.setattr(main, "__spec__", spec, raising=False)
        assert startup.started_as_program() is want, (argv0, orig, spec_name)
