"""What both entry points share (the ``gptmini`` script, gptmini.commands, and ``python -m gptmini.cli``):
the table of plain tools, their dispatch, and how a user's error ends a command. Imports no Lightning.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from gptmini.core.atomic import DiskFullError
from gptmini.core.config import ConfigError

TOOLS = {
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


def run_tool(argv: list[str]) -> bool:
    """Run ``argv`` when it names a plain tool (``generate ...``); False when it does not (fit, validate)."""
    if not argv or argv[0] not in TOOLS:
        return False
    with user_errors():
        importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
    return True
