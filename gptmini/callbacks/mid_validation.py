"""A stop during validation resumes with that whole validation run again.

Lightning resumes a checkpoint saved mid-validation "mid-evaluation" and runs only the remaining
batches, while the token-weighted val/loss sums (a metric state no checkpoint holds) start empty: the
validation of that step would be lost. :class:`ValidationRestart` keeps the validation counters of a
running validation and puts them, as at its start, into a stop's checkpoint. Part of ``FaultGuard``.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from gptmini.train.compat import set_validation_progress, validation_progress


class ValidationRestart(Callback):
    """Rewinds a stop's checkpoint, saved mid-validation, to that validation's start."""

    def __init__(self) -> None:
        self._val_progress: dict | None = None  # validation counters at the start of a running validation
        self._saving_stop = False  # set by the stop's save (StopAndSave)

    # -- SIGTERM and Ctrl-C ------------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._val_progress = validation_progress(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_progress = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving_stop and self._val_progress is not None:
            self._as_before_validation(checkpoint)

    def _as_before_validation(self, checkpoint: dict[str, Any]) -> None:
        """Make a checkpoint saved mid-validation resume with that whole validation, run again.

        Lightning resumes such a checkpoint "mid-evaluation" and runs only the remaining batches,
        while the token-weighted val/loss sums (a metric state no checkpoint holds) start empty: the
        validation of that step would be lost (Lightning 2.6: not logged at all). Setting the
        validation counters back to the validation's start, with its first batch "started", makes
        Lightning's mid-evaluation restart run every batch again before the next training step."""
        val = copy.deepcopy(self._val_progress)
        for counts in (val["total"], val["current"]):
            counts["ready"] += 1
            counts["started"] += 1
        set_validation_progress(checkpoint, val)
