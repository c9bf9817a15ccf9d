"""A process's start-up and exit cost: CPython's cyclic garbage collector during the imports.

Importing torch and Lightning creates about a million long-lived objects; the collector rescans them
again and again while they are created, and once more when the interpreter exits. On this project's
2-core CI machine that is ~2 s of the ~4.5 s of CPU that ``python -m gptmini.cli`` spends before and
after any work (measured in docs/performance.md). Stdlib only: gptmini/__init__.py uses it before
torch is imported.
"""

from __future__ import annotations

import gc
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
            gc.enable()


def freeze_imported() -> None:
    """For a process started as a gptmini program, once its imports are done: every object so far
    moves to the collector's permanent generation (``gc.freeze``, the pattern Python's docs give for
    a parent that forks), so later collections and the exit skip them and forked DataLoader workers
    do not copy their pages by touching them. Never called when gptmini is used from Python."""
    gc.freeze()
