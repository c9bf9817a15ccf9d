"""The ``gptmini`` console script: ``gptmini fit|validate ...`` (the LightningCLI in gptmini.cli) and
the plain commands ``gptmini generate|export|eval|exercises ...`` (gptmini.entry.COMMANDS), whose modules live here.

The plain commands are dispatched here, before anything imports Lightning, so sampling and exporting start
in about a second instead of paying Lightning's import (~3 s). Exit status: 0 done, 2 a bad
argument or setting (one ``error:`` line), 74 the disk filled while saving a checkpoint (one
``error:`` line; the earlier checkpoints are intact), 1 any other error, 143 stopped by SIGTERM,
130 by Ctrl-C and 138 by SLURM's requeue signal SIGUSR1 (``last.ckpt`` saved).
"""

from __future__ import annotations

import sys

# The console script's main (gptmini.__main__, also ``python -m gptmini``) and its documented surface
# (gptmini.entry, shared with ``python -m gptmini.cli``) live in the top room: no room cycle.
from gptmini.__main__ import main  # noqa: F401
from gptmini.entry import COMMANDS, TRACEBACK_ENV, run_command, user_errors  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
