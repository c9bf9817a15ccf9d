"""The ``gptmini`` console script: ``gptmini fit|validate ...`` (the LightningCLI in gptmini.cli) and
the tools ``gptmini generate|export|eval|exercises ...``.

The tools are dispatched here, before anything imports Lightning, so sampling and exporting start
in about a second instead of paying Lightning's import (~3 s). Exit status: 0 done, 2 a bad
argument or setting (one ``error:`` line), 74 the disk filled while saving a checkpoint (one
``error:`` line; the earlier checkpoints are intact), 1 any other error, 143 stopped by SIGTERM,
130 by Ctrl-C and 138 by SLURM's requeue signal SIGUSR1 (``last.ckpt`` saved).
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
    "generate": "gptmini.generate",
    "export": "gptmini.export",
    "eval": "gptmini.evaluate",
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


def main(args: list[str] | None = None) -> int:
    """Run one command; returns 0 when it finished (other statuses leave through SystemExit)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOLS:
        with user_errors():
            importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return 0
    from gptmini.cli import make_cli  # Lightning is imported only for fit/validate

    make_cli(args)  # None: LightningCLI reads sys.argv itself (no args-and-argv warning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
