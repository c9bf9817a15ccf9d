"""The ``gptmini`` console script: ``gptmini fit|validate ...`` (the LightningCLI in gptmini.cli) and
the plain commands ``gptmini generate|export|eval|exercises ...`` (gptmini.commands.shared.COMMANDS).

The plain commands are dispatched here, before anything imports Lightning, so sampling and exporting start
in about a second instead of paying Lightning's import (~3 s). Exit status: 0 done, 2 a bad
argument or setting (one ``error:`` line), 74 the disk filled while saving a checkpoint (one
``error:`` line; the earlier checkpoints are intact), 1 any other error, 143 stopped by SIGTERM,
130 by Ctrl-C and 138 by SLURM's requeue signal SIGUSR1 (``last.ckpt`` saved).
"""

from __future__ import annotations

import sys

# COMMANDS, TRACEBACK_ENV and user_errors are named here too: the script's documented surface.
from gptmini.commands.shared import COMMANDS, TRACEBACK_ENV, run_command, user_errors  # noqa: F401


def main(args: list[str] | None = None) -> int:
    """Run one command; returns 0 when it finished (other statuses leave through SystemExit)."""
    argv = sys.argv[1:] if args is None else list(args)
    if run_command(argv):  # before anything imports Lightning
        return 0
    from gptmini.cli import main as cli_main  # Lightning is imported only for fit/validate

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
