"""Every command shown in README.md and docs/*.md is checked, so the docs cannot drift from the code.

The commands are the lines of the fenced ```bash blocks (``\\`` continuations joined, comments
dropped, ``&&``/``;`` chains split, ``VAR=value`` prefixes skipped). Each is checked by the first
rule that matches its first words:

- ``gptmini fit|validate ...``, ``python -m gptmini.cli ...``, ``python -m gptmini ...``: parsed by
  the real CLI parser, built once in this process (every config file exists, every key is accepted,
  every value has its type). A run's saved config, ``--config runs/NAME/version_N/config.yaml``, is
  parsed as ``configs/NAME.yaml``, the config that run was started from.
- ``srun CMD``, ``exec CMD``: CMD by these rules. ``torchrun OPTS -m MODULE ARGS``: OPTS by
  torchrun's own parser, then ``python -m MODULE ARGS`` by these rules. ``sbatch [OPTS] FILE``: FILE
  is a file of this repository, checked like a script block (below).
- A word that is only a shell variable (``$RESUME``, ``"${EXTRA}"``) is left out of the parse: it
  holds options only the shell knows.
- ``gptmini generate|export|exercises|...`` (any plain command of ``gptmini.commands.COMMANDS``),
  ``python -m gptmini.X ...``, ``python scripts/X.py ...``: the tool's or script's own code runs in
  this process and is stopped right after its argument parser accepted the arguments.
- ``pip install ...``: every extra it names (``"gptmini[hf]"``, ``".[dev,hf]"``) is in pyproject.toml.
- ``tensorboard --logdir DIR``: tensorboard is installed.
- README's setup and test commands: exactly the two lines ``.ci/run`` runs (so CI runs them).
- A block whose first line is ``#!`` is a script: ``bash -n`` checks its syntax and its lines that
  match a rule above are checked by that rule; its other lines are left to ``bash -n``.
- A command line ending in ``# doc-test: skip (why)`` is not checked (printed); any other command
  that matches no rule fails the test.

Also: every file (`gptmini/...`, `scripts/...`, `tests/...`, `configs/...`) and every dotted name
(`gptmini.a.b.Name`) a page names in backticks exists, and every model shape a page quotes
("d128 L4 H4, vocab 2048, context 128, batch 32, 600 steps") is a shipped preset's.

Beside the parses, one short real run: README's quickstart ``fit`` (with test-size overrides),
then README's ``export`` and ``generate`` commands on its checkpoint, then every ```python block
of README and docs/ in the run's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonargparse
import pytest
import tomllib
from conftest import attribute_docstrings_off, callbacks_args, tiny_cli_args

from gptmini import commands

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "# doc-test: skip"
CLI_SUBCOMMANDS = ("fit", "validate")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str  # the command line as shown
    in_script: bool = False
    skipped: str = ""  # the reason given with SKIP_MARK

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.text, comments=True)
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
            words.pop(0)
        # A word that is only a shell variable ($RESUME, "${EXTRA}") holds options only the shell
        # knows: left out of the parse.
        return [w for w in words if not re.fullmatch(r"\$(\w+|\{\w+\}|@)", w)]


def fenced_blocks(path: Path, lang: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of every ```lang block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, kind = len(m.group(1)), m.group(2)
        start, i = i + 1, i + 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        if kind == lang:
            yield start + 1, body


def commands_of(body: list[str], first: int, name: str, script: bool) -> list[Command]:
    """The commands of a block's lines (or a script file's) numbered from `first`."""
    out = []
    joined: list[tuple[int, str]] = []
    for n, line in enumerate(body, first):
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
        else:
            joined.append((n, line))
    for n, line in joined:
        skipped = ""
        if SKIP_MARK in line:
            line, _, reason = line.partition(SKIP_MARK)
            skipped = reason.strip() or "no reason given"
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:  # a quote spanning lines: only in scripts, left to bash -n
                words = [] if script else [part]
            if words:
                out.append(Command(f"{name}:{n}", part.strip(), script, skipped))
    return out


def doc_commands() -> list[Command]:
    out = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for first, body in fenced_blocks(path, "bash"):
            out += commands_of(body, first, name, bool(body) and body[0].startswith("#!"))
    return out


def script_blocks() -> list[tuple[str, str]]:
    return [
        (f"{p.relative_to(ROOT).as_posix()}:{n}", "\n".join(body))
        for p in DOCS
        for n, body in fenced_blocks(p, "bash")
        if body and body[0].startswith("#!")
    ]


# -- stopping a tool right after it parsed its arguments ------------------------------------------
class StopAfterParseError(Exception):
    """Raised by the patched parsers once the arguments were accepted."""


@contextlib.contextmanager
def stop_after_parsing(argv0: str, args: list[str]) -> Iterator[None]:
    """Within: argparse and jsonargparse parsers raise StopAfterParseError once they accepted the arguments
    (a refusal still exits 2 as usual); sys.argv and sys.path are restored afterwards."""
    plain_args, plain_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    jsonargparse_args = jsonargparse.ArgumentParser.parse_args
    inside = []

    def parse_args(self, *a, **kw):
        if isinstance(self, jsonargparse.ArgumentParser):
            result = jsonargparse_args(self, *a, **kw)
        else:
            inside.append(1)  # argparse's parse_args calls parse_known_args, then refuses extras
            try:
                result = plain_args(self, *a, **kw)
            finally:
                inside.pop()
        raise StopAfterParseError(result)

    def parse_known_args(self, *a, **kw):
        result = plain_known(self, *a, **kw)
        if inside or isinstance(self, jsonargparse.ArgumentParser):
            return result
        raise StopAfterParseError(result)

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    argparse.ArgumentParser.parse_args = parse_args
    argparse.ArgumentParser.parse_known_args = parse_known_args
    jsonargparse.ArgumentParser.parse_args = parse_args
    sys.argv = [argv0, *args]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = plain_args, plain_known
        jsonargparse.ArgumentParser.parse_args = jsonargparse_args
        sys.argv, sys.path[:] = saved_argv, saved_path


def parsed(result):
    raise StopAfterParseError(result)


def refusal(run) -> str | None:
    """None when the arguments were accepted, else what the parser printed."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            run()
    except StopAfterParseError:
        return None
    except SystemExit as e:
        if e.code in (0, None):  # --help
            return None
        said = err.getvalue().strip()
        errors = [line for line in said.splitlines() if line.startswith("error:")]
        return "\n".join(errors) or said[-600:] or f"exit {e.code}"
    return "ran to the end without parsing any arguments"


# -- the CLI parser, built once ------------------------------------------------------------------
class _ParserBuiltError(Exception):
    pass


@pytest.fixture(scope="module")
def cli_parser():
    from gptmini import cli

    def grab(self, parser, args):
        raise _ParserBuiltError(parser)

    with attribute_docstrings_off(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli.GPTMiniCLI, "parse_arguments", grab)
        try:
            cli.make_cli([], run=True)  # run=True: the parser with the fit/validate subcommands
        except _ParserBuiltError as built:
            return built.args[0]
    raise AssertionError("GPTMiniCLI never reached parse_arguments")


def saved_config_as_preset(args: list[str]) -> list[str]:
    out = []
    for a in args:
        m = re.fullmatch(r"runs/([^/]+)/version_\d+/config\.yaml", a)
        out.append(f"configs/{m.group(1)}.yaml" if m and (ROOT / "configs" / f"{m.group(1)}.yaml").is_file() else a)
    return out


def check(cmd: Command, parser) -> str | None:
    """None when the command is fine, else why not."""
    if any(cmd.text in line for line in ci_lines()):
        return None  # CI runs it (test_readme_setup_and_test_commands_are_what_ci_runs)
    argv = cmd.argv
    if not argv and cmd.in_script:  # only `VAR=value` assignments: a script line left to `bash -n`
        return None
    head, rest = argv[0], argv[1:]
    if head in ("srun", "exec"):
        return check(Command(cmd.where, shlex.join(rest), cmd.in_script), parser)
    if head == "sbatch":  # sbatch [OPTIONS] FILE: a script of this repository, checked as a doc's script
        files = [a for a in rest if not a.startswith("-")]
        script = ROOT / files[0] if files else None
        if script is None or not script.is_file():
            return f"sbatch {files[:1]}: not a file of this repository"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if proc.returncode:
            return f"bash -n {files[0]}: {proc.stderr.strip()}"
        lines = script.read_text().splitlines()
        inner = [check(c, parser) for c in commands_of(lines, 1, files[0], True) if not c.skipped]
        return "; ".join(w for w in inner if w) or None
    if head == "torchrun":
        from torch.distributed.run import get_args_parser

        why = refusal(lambda: parsed(get_args_parser().parse_args(rest)))
        if why:
            return f"torchrun refuses its options: {why}"
        ns = get_args_parser().parse_args(rest)
        if not ns.module:
            return "torchrun without -m: start gptmini as a module (-m gptmini.cli)"
        inner = ["python", "-m", ns.training_script, *ns.training_script_args]
        return check(Command(cmd.where, shlex.join(inner), cmd.in_script), parser)
    if head in ("python", "python3") and rest[:1] == ["-m"] and len(rest) > 1:
        module, args = rest[1], rest[2:]
        if module in ("gptmini", "gptmini.cli"):
            return check(Command(cmd.where, shlex.join(["gptmini", *args]), cmd.in_script), parser)
        if module.startswith("gptmini."):
            with stop_after_parsing(module, args):
                return refusal(lambda: runpy.run_module(module, run_name="__main__", alter_sys=False))
        return f"python -m {module}: no rule for this module"
    if head in ("python", "python3") and rest and rest[0].startswith("scripts/"):
        script = ROOT / rest[0]
        if not script.is_file():
            return f"{rest[0]} does not exist"
        with stop_after_parsing(str(script), rest[1:]):
            return refusal(lambda: runpy.run_path(str(script), run_name="__main__"))
    if head == "gptmini":
        if rest[:1] and rest[0] in commands.COMMANDS:
            module = commands.COMMANDS[rest[0]]
            with stop_after_parsing(module, rest[1:]):
                return refusal(lambda: commands.main(rest))
        if not rest or rest[0] not in CLI_SUBCOMMANDS:
            return f"gptmini {rest[:1]}: neither {CLI_SUBCOMMANDS} nor a plain command of gptmini.commands.COMMANDS"
        return refusal(lambda: parsed(parser.parse_args(saved_config_as_preset(rest))))
    if head == "pip" and rest[:1] == ["install"]:
        extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
        for wanted in re.findall(r"(?:gptmini|\.)\[([^\]]+)\]", " ".join(rest)):
            missing = {e.strip() for e in wanted.split(",")} - extras
            if missing:
                return f"extras {sorted(missing)} are not in pyproject.toml"
        return None
    if head == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None or rest[:1] != ["--logdir"]:
            return "tensorboard not installed, or not `tensorboard --logdir DIR`"
        return None
    if cmd.in_script:
        return None  # checked by bash -n with the rest of its script
    return "no rule checks this command: add one to tests/cross_cutting/test_docs.py, or end the line with " + SKIP_MARK


def ci_lines() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]


# -- the tests -----------------------------------------------------------------------------------
def test_readme_setup_and_test_commands_are_what_ci_runs():
    (first_block,) = [body for _, body in fenced_blocks(ROOT / "README.md", "bash")][:1]
    assert first_block == ci_lines(), "README's first bash block must be .ci/run's two commands"


def test_every_doc_command_is_checked(cli_parser, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the docs' paths (configs/, scripts/) are relative to the checkout
    cmds = doc_commands()
    assert len(cmds) > 20, "the extraction found too few commands: is the fence syntax still ```bash?"
    failures, skipped, seen = [], [], {}
    for cmd in cmds:
        if cmd.skipped:
            skipped.append(f"{cmd.where}: {cmd.text}  ({cmd.skipped})")
            continue
        key = (tuple(cmd.argv), cmd.in_script)  # README and a page often show the same command
        why = seen[key] if key in seen else seen.setdefault(key, check(cmd, cli_parser))
        if why:
            failures.append(f"{cmd.where}: {cmd.text}\n    {why}")
    with capsys.disabled():
        print(f"\n{len(cmds) - len(skipped)} doc commands checked ({len(seen)} distinct), {len(skipped)} marked skip",
              *skipped, sep="\n  ")
    assert not failures, "\n".join(failures)


def test_doc_scripts_are_valid_bash():
    for where, text in script_blocks():
        proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, f"{where}: {proc.stderr}"


def test_the_checker_refuses_what_the_code_would(cli_parser, monkeypatch):
    """Break it once, kept: each rule fails on a command that is wrong."""
    monkeypatch.chdir(ROOT)
    bad = [
        "gptmini fit --config configs/10m.yaml --trainer.max_step=5",  # unknown key
        "gptmini fit --config configs/nope.yaml",  # no such config
        "python -m gptmini.cli fit --data.batch_size=-1",  # out of range
        "gptmini generate x.ckpt --temprature 0.8",  # a tool's unknown option
        "python -m gptmini.tools.exercises learning_rate",  # not a choice
        "python scripts/bench.py --no-such-flag",
        "python scripts/nope.py",
        'pip install "gptmini[nope]"',
        "torchrun --nnodes=2 gptmini/cli.py fit",
        "torchrun --nnodes=2 -m gptmini.cli fit --trainer.nope=1",
        "make everything",
        "sbatch scripts/nope.sbatch",
    ]
    for text in bad:
        assert check(Command("test", text), cli_parser), f"accepted: {text}"
    good = [
        "gptmini fit --config runs/10m/version_3/config.yaml --ckpt_path last",  # a run's saved config
        'srun gptmini fit --config configs/10m.yaml "$RESUME"',  # options only the shell knows
    ]
    for text in good:
        assert check(Command("test", text), cli_parser) is None, text


def test_quickstart_export_generate_and_python_snippets_run(tmp_path, monkeypatch, corpus_file, data_cache, capsys):
    """README's quickstart fit as written (plus test-size overrides), then README's export, generate
    and eval commands on the checkpoint it wrote, then every ```python block of the docs."""
    readme = [c for c in doc_commands() if c.where.startswith("README.md")]
    fit = next(c for c in readme if c.argv[:2] == ["gptmini", "fit"] and "configs/tiny.yaml" in c.argv)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    overrides = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=4)[3:]  # after `fit --config X`
    # the best checkpoint only: the step-0 checks have their own tests (seconds each here)
    overrides += callbacks_args(tmp_path / "cb", [{"class_path": "gptmini.callbacks.best.BestCheckpoint"}])
    with attribute_docstrings_off():
        assert commands.main([*fit.argv[1:], *overrides]) == 0
    (best,) = (tmp_path / "runs" / "tiny").glob("version_0/checkpoints/best-step=*.ckpt")
    best = best.relative_to(tmp_path).as_posix()
    tools = [c for c in readme if c.argv[:2] in (["gptmini", "export"], ["gptmini", "generate"], ["gptmini", "eval"])]
    assert {c.argv[1] for c in tools} == {"export", "generate", "eval"}
    # README's `eval ... --data my_corpus.jsonl`: a few records of the training text, in the default field
    text = corpus_file.read_text(encoding="utf-8")[:4000]
    (tmp_path / "my_corpus.jsonl").write_text("".join(json.dumps({"text": text[i : i + 1000]}) + "\n" for i in range(0, 4000, 1000)))
    for cmd in tools:
        args = [re.sub(r"^runs/tiny/version_0/checkpoints/best-step=\d+\.ckpt$", best, a) for a in cmd.argv[1:]]
        if args[0] == "generate":  # fewer tokens: the text is not checked, the command is
            args = [("20" if prev == "--max_new_tokens" else a) for prev, a in zip([None, *args], args)]
            args += [] if "--max_new_tokens" in args else ["--max_new_tokens", "20"]
        assert commands.main(args) == 0, cmd.where
    assert "ROMEO:" in capsys.readouterr().out
    if any(c.argv[1] == "eval" and "--json" in c.argv for c in tools):
        scored = json.loads((tmp_path / tools[[c.argv[1] for c in tools].index("eval")].argv[-1]).read_text())
        assert scored["tokens"] > 0 and scored["loss"] > 0, scored
    for path in DOCS:
        for n, body in fenced_blocks(path, "python"):
            code = "\n".join(body).replace("max_new_tokens=100", "max_new_tokens=20")
            exec(compile(code, f"{path.name}:{n}", "exec"), {"__name__": "doc_snippet"})


SHAPE = re.compile(
    r"d(\d+)\s+L(\d+)\s+H(\d+),\s+vocab\s+(\d+),\s+context\s+(\d+),\s+batch\s+(\d+)(?:,\s+(\d+)(k?)\s+steps)?"
)


def test_shapes_quoted_in_the_docs_are_a_shipped_preset():
    """'d128 L4 H4, vocab 2048, context 128, batch 32, 600 steps' in a page is one of configs/*.yaml."""
    import yaml

    presets = {}
    for path in (ROOT / "configs").glob("*.yaml"):
        c = yaml.safe_load(path.read_text())
        arch, data = c.get("model", {}).get("arch", {}), c.get("data", {})
        if {"n_embd", "n_layer", "n_head"} <= arch.keys() and {"vocab_size", "block_size", "batch_size"} <= data.keys():
            shape = (arch["n_embd"], arch["n_layer"], arch["n_head"], data["vocab_size"], data["block_size"], data["batch_size"])
            presets[path.name] = (shape, c["trainer"]["max_steps"])
    assert {"tiny.yaml", "10m.yaml"} <= presets.keys()
    quoted = 0
    for path in DOCS:
        for m in SHAPE.finditer(path.read_text(encoding="utf-8")):
            shape = tuple(int(g) for g in m.groups()[:6])
            steps = None if m.group(7) is None else int(m.group(7)) * (1000 if m.group(8) else 1)
            matches = [n for n, (s, st) in presets.items() if s == shape and steps in (None, st)]
            assert matches, f"{path.name}: '{' '.join(m.group(0).split())}' is none of {presets}"
            quoted += 1
    assert quoted >= 2  # README quotes the tiny and the 10m shapes


def _resolves(dotted: str) -> bool:
    """gptmini.a.b.Name: the longest importable module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_files_and_modules_named_in_the_docs_exist():
    """A `gptmini/x.py`, `scripts/x.py`, `tests/x.py` or `gptmini.a.b.Name` in README/docs is real."""
    named, missing = 0, []
    for path in DOCS:
        for code in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            for m in re.finditer(r"(?<![\w/.])((?:gptmini|scripts|tests|configs|docs)/[\w/.\-]*\w)", code):
                named += 1
                if "<" not in m.group(1) and not (ROOT / m.group(1)).exists():
                    missing.append(f"{path.name}: {m.group(1)}")
            for m in re.finditer(r"(?<![\w/.])(gptmini(?:\.\w+)+)", code):
                named += 1
                if not _resolves(m.group(1)):
                    missing.append(f"{path.name}: {m.group(1)}")
    assert named > 50, "the extraction found too few names"
    assert not missing, "named in the docs but not in the code:\n" + "\n".join(missing)
