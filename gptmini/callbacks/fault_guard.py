"""Keep a run recoverable: ``FaultGuard``, the callback the CLI always adds (``fault_guard:``), is three
jobs, each in its own module (each also a callback of its own):

- :class:`~gptmini.callbacks.nonfinite.NonFiniteStop`: stop (or skip) on a non-finite loss or gradient;
- :class:`~gptmini.callbacks.stop_save.StopAndSave`: SIGTERM, Ctrl-C and SLURM's requeue signal save
  ``last.ckpt`` and exit 128 + signal (``gptmini.callbacks.stop_rules``: when the stop takes effect);
- :class:`~gptmini.callbacks.mid_validation.ValidationRestart`: a stop during validation resumes with
  that whole validation run again.

``FaultGuard`` only joins them: one config group, one checkpoint state (``skipped``) under its name, and
the hooks two jobs share called in order.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from gptmini.callbacks.mid_validation import ValidationRestart
from gptmini.callbacks.nonfinite import NonFiniteLossError, NonFiniteStop, last_good_checkpoint
from gptmini.callbacks.stop_save import StopAndSave, resume_command
from gptmini.core.config import NonNegativeInt, PositiveInt

__all__ = ["FaultGuard", "NonFiniteLossError", "last_good_checkpoint", "resume_command"]


class FaultGuard(NonFiniteStop, StopAndSave, ValidationRestart):
    captured_step_aware = True  # NonFiniteStop's: the captured step checks on the device

    def __init__(
        self,
        max_skipped_steps: NonNegativeInt = 0,
        check_every_n_steps: PositiveInt = 1,
        save_on_sigterm: bool = True,
        requeue_on_sigterm: bool = True,
    ):
        """Stop on non-finite losses; save a checkpoint on SIGTERM.

        Args:
            max_skipped_steps: Optimizer steps with a non-finite loss or gradient to skip (update
                dropped) before stopping; 0 = stop at the first one.
            check_every_n_steps: Check every n-th optimizer step. Unfused AdamW: each check is one
                host sync, and a NaN between checks reaches the weights. Fused AdamW: every step is
                guarded on the device and the verdict is read (one sync) every n steps. Several
                processes also agree then whether any was signalled to stop (one all-reduce, none
                between): a stop waits at most n - 1 steps, so keep n steps well inside the
                scheduler's grace period.
            save_on_sigterm: Save ``last.ckpt`` when SIGTERM or a first Ctrl-C stops the run.
            requeue_on_sigterm: Under SLURM with auto_requeue (Lightning's default), requeue the job
                after a SIGTERM too (time limit without ``--signal``, preemption), not only after the
                requeue signal. ``scancel`` also sends SIGTERM: false keeps a cancelled job from
                asking to be requeued.
        """
        NonFiniteStop.__init__(self, max_skipped_steps, check_every_n_steps)
        StopAndSave.__init__(self, save_on_sigterm, requeue_on_sigterm)
        self._val_progress: dict | None = None  # ValidationRestart's (its __init__ would reset _saving_stop too)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        NonFiniteStop.on_train_start(self, trainer, pl_module)
        StopAndSave.on_train_start(self, trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        ValidationRestart.on_save_checkpoint(self, trainer, pl_module, checkpoint)
        NonFiniteStop.on_save_checkpoint(self, trainer, pl_module, checkpoint)
