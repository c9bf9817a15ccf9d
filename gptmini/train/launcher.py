"""A torchrun worker ends with its launcher.

torchrun starts each worker in a session of its own, so a SIGKILL to the launcher's process group
(an OOM killer, ``kill -9 -PGID``, a node agent) leaves the worker training alone, and the other
nodes wait at the next collective (300 s at the exit barrier). torch has no option for it; Linux
has ``prctl(PR_SET_PDEATHSIG)``: the kernel signals the worker when its parent dies. The signal is
SIGTERM, so the worker stops as on a scheduler's stop (gptmini.callbacks.fault_guard): the ranks
agree after the current step, save ``last.ckpt`` and exit 143.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_launcher(environ: Mapping[str, str] | None = None, signum: int = signal.SIGTERM) -> bool:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set), on Linux: get ``signum`` when the launcher (the
    parent process) dies. Returns whether that is now arranged."""
    environ = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in environ or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the launcher died before we asked: re-parented to init already
        os.kill(os.getpid(), signum)
    return True
