"""A process's start-up and exit cost: CPython's cyclic garbage collector during the imports.

Importing torch and Lightning creates about a million long-lived objects; the collector rescans them
again and again while they are created, and once more when the interpreter exits. On this project's
2-core CI machine that is ~2 s of the ~4.5 s of CPU that ``python -m gptmini.cli`` spends before and
after any work (measured in docs/performance.md). Stdlib only: it runs before torch is imported.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run a block (imports) with the cyclic collector off, then restore its state: nothing lasting,
    so importing gptmini as a library changes nothing in the importing program."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Re-enabled as is, the collector's first young scan walks every object the block
            # created (~0.1-0.2 s per block): a program freezes them now.
            freeze_if_program()
            gc.enable()


def freeze_if_program() -> None:
    """:func:`freeze_imported` in a process started as a gptmini program (:func:`started_as_program`);
    nothing when gptmini is used from Python."""
    if started_as_program():
        freeze_imported()


def started_as_program() -> bool:
    """Whether this interpreter was started to run gptmini: the ``gptmini`` console script or
    ``python -m gptmini[.cli]``. Read from the command line alone, so it already holds while
    gptmini/__init__ is imported (before any ``main``); a Python program importing gptmini is not one."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) in ("gptmini", "gptmini.exe"):
        return True
    if argv0 == "-m":  # python -m gptmini.X while runpy imports the package: argv[0] is "-m" then
        orig = getattr(sys, "orig_argv", [])
        return "-m" in orig[:-1] and _ours(orig[orig.index("-m") + 1])
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # python -m gptmini.X, its body running
    return spec is not None and _ours(spec.name)


def _ours(module: str) -> bool:
    return module == "gptmini" or module.startswith("gptmini.")


def freeze_imported() -> None:
    """For a process started as a gptmini program, once its imports are done: every object so far
    moves to the collector's permanent generation (``gc.freeze``, the pattern Python's docs give for
    a parent that forks), so later collections and the exit skip them and forked DataLoader workers
    do not copy their pages by touching them. Never called when gptmini is used from Python."""
    gc.freeze()
