"""What the commands share: the table of plain commands (gptmini/commands/, run without Lightning)
and their dispatch, used by the console script (gptmini.__main__.main) and ``python -m gptmini.cli``;
:func:`command_main`, the one ``main`` of each plain command; how a user's error ends a command.
Imports no Lightning.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from gptmini.core.atomic import DiskFullError
from gptmini.core.config import ConfigError
from gptmini.core.startup import collector_paused, freeze_if_program

T = TypeVar("T")

# The plain commands: name -> module with a main(argv). Not Lightning's fit/validate.
COMMANDS = {
    "generate": "gptmini.commands.generate",
    "export": "gptmini.commands.export",
    "eval": "gptmini.commands.eval",
    "exercises": "gptmini.tools.exercises",
}

TRACEBACK_ENV = "GPTMINI_TRACEBACK"


@contextmanager
def user_errors() -> Iterator[None]:
    """A bad setting (:class:`ConfigError`) ends the command with one ``error: ...`` line and exit
    code 2, as jsonargparse does for parse errors; a full disk (:class:`DiskFullError`) likewise
    with exit code 74. ``GPTMINI_TRACEBACK=1`` shows the traceback."""
    try:
        yield
    except (ConfigError, DiskFullError) as e:
        if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(e, "exit_status", 2)) from None


def run_command(argv: list[str]) -> bool:
    """Run ``argv`` when it names a plain command (``generate ...``); False when it does not (fit,
    validate). In a gptmini program its imports are frozen first (gptmini.core.startup)."""
    if not argv or argv[0] not in COMMANDS:
        return False
    with user_errors():
        with collector_paused():
            command = importlib.import_module(COMMANDS[argv[0]])
        freeze_if_program()
        command.main(argv[1:])
    return True


def command_main(fn: Callable[..., T], args: list[str] | None, prog: str) -> T:
    """The ``main`` of a plain command: ``fn``'s signature and docstring are its options and help
    (jsonargparse's CLI); a user's error is one ``error:`` line (:func:`user_errors`)."""
    from jsonargparse import CLI

    with user_errors():  # a ConfigError (CheckpointError included): one error line, exit 2
        return CLI(fn, args=args, prog=prog)

