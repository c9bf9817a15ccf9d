"""A normal (non-editable) install holds every subpackage, the configs and the corpus, and the
exercises find their configs from it: the wheel is built and unpacked as pip would install it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gptmini

SRC = Path(gptmini.__file__).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: pip would write build/ and *.egg-info into the checkout otherwise.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SRC.parent / name, src / name)
    shutil.copytree(SRC, src / "gptmini", ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "out", "."]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (whl,) = (src / "out").glob("gptmini-*.whl")
    return whl


def test_wheel_holds_every_subpackage_the_configs_and_the_corpus(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(SRC.parent)) for p in SRC.rglob("__init__.py")}
    assert {"gptmini/core", "gptmini/train", "gptmini/callbacks", "gptmini/tools"} <= packages
    assert {p for p in packages if f"{p}/__init__.py" not in names} == set()
    modules = {str(p.relative_to(SRC.parent)) for p in SRC.rglob("*.py")}
    assert modules - names == set()
    configs = {f"gptmini/configs/{p.name}" for p in (SRC / "configs").glob("*.yaml")}
    assert "gptmini/configs/tiny.yaml" in configs and configs <= names
    corpus = {f"gptmini/corpus/{p.name}" for p in (SRC / "corpus").iterdir() if p.is_file()}
    assert "gptmini/corpus/shakespeare_plays.txt.gz" in corpus and corpus <= names


def test_installed_copy_finds_its_configs_and_corpus(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs as exactly these files
    work = tmp_path / "elsewhere"  # no configs/ folder here, as for a user of the installed package
    work.mkdir()
    code = (
        "import gptmini, pathlib\n"
        "from gptmini.tools import exercises\n"
        "from gptmini.core.sources import default_corpus\n"
        "print(pathlib.Path(gptmini.__file__).parent.parent)\n"
        "assert all(p.is_file() for p in exercises.DEFAULT_CONFIGS), exercises.DEFAULT_CONFIGS\n"
        "assert exercises._config_file('configs/10m.yaml').is_file()\n"
        "assert default_corpus().is_file()\n"
        "import atexit, runpy, sys\n"  # the documented command, in the same process (one start, not two)
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        "sys.argv = ['exercises', '--help']\n"
        "runpy.run_module('gptmini.tools.exercises', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[0]) == site  # the unpacked copy, not the checkout
    assert "python -m gptmini.tools.exercises" in proc.stdout  # argparse's --help, then exit 0
    assert proc.stdout.splitlines()[-1] == "torch imported: False"  # --help starts no torch, no Lightning


def test_the_package_version_has_one_value():
    import tomllib

    import gptmini
    import gptmini.core

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert gptmini.__version__ == gptmini.core.__version__ == project["version"]
