"""The one rule for code that runs in several processes (DDP, torchrun, srun): collectives on every
rank, at the same point; rank 0 alone only writes and prints.

A *collective* is a call every rank must make before any returns: ``trainer.log_dir`` (it broadcasts
rank 0's folder), ``strategy.broadcast/barrier/reduce/reduce_boolean_decision/all_gather``,
``trainer.save_checkpoint`` (a barrier), ``self.log(..., sync_dist=True)`` and a forward of the
DDP-wrapped model. Called on one rank, the others never arrive and the run hangs (the step-0 hang of
this round: ``LRCurveCheck`` read ``trainer.log_dir`` inside ``if trainer.is_global_zero``). So:

1. A callback or hook computes every rank-shared value with the helpers below, on all ranks, before
   any ``if trainer.is_global_zero:`` branch (or ``rank_zero_only`` function); the branch then only
   uses those values to write files, TensorBoard entries and console lines.
2. A decision that changes what the ranks do next (stop, raise, skip) is taken together:
   :func:`any_rank`, or Lightning's ``should_stop``/SIGTERM paths, which already agree.
3. Before ``trainer.fit`` starts (the CLI's ``before_fit``) there is no process group yet: rank 0
   may read its own folder with :func:`own_log_dir`, which is never a collective.

``tests/train/test_ranks.py`` holds the rule in the code (no collective inside a rank-0-only branch) and
runs every shipped callback under two processes; why each callback is safe is listed there.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def own_log_dir(trainer: pl.Trainer) -> str | None:
    """This process's view of the run folder (``trainer.log_dir`` without its broadcast): what rank 0
    writes to. Never a collective, so rank 0 may call it alone; on other ranks it may differ."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        return logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
    return trainer.default_root_dir


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder, the same on every rank (rank 0's). A collective: call it on all ranks, before
    any rank-0-only branch."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (one all-reduce; a plain bool with one
    process). A collective: call it on all ranks at the same point."""
    return trainer.strategy.reduce_boolean_decision(bool(flag), all=False)


def failed_on_any_rank(trainer: pl.Trainer, failure: str | None) -> str | None:
    """For a check each rank runs on its own data (the first batch): what every rank raises when any
    failed (its own message, or a line pointing at the other's), None when all passed. One
    all-reduce: a rank that raised alone would leave the others waiting in step 0's all-reduce."""
    if not any_rank(trainer, failure is not None):
        return None
    return failure or "a step-0 check failed in another process of this run; its message is in that process's output"
