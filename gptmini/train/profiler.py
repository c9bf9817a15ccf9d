"""The Trainer's default "no profiler", without its per-hook cost."""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

# One shared, reusable, reentrant context: entering and leaving it costs two method calls.
_NO_PROFILE = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """Lightning's ``PassThroughProfiler`` (what a Trainer without ``profiler`` uses), with ``profile``
    returning one shared ``nullcontext`` instead of a new generator-based context manager per call.

    Lightning wraps every hook of every callback, of the module and of the strategy in
    ``profiler.profile(...)``, about 150 times per training step with the shipped callbacks; the
    ``@contextmanager`` of the base class costs six Python calls each time (about 0.2 ms per step
    on a CPU core) to do nothing. ``gptmini.cli`` puts this in place of the default only; a
    configured ``trainer.profiler`` (simple, advanced, pytorch) is kept.
    """

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return _NO_PROFILE
