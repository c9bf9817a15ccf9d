"""Test-only callback that breaks a run at a chosen optimizer step (used via class_path)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class InjectFault(Callback):
    def __init__(self, at_step: int, kind: str = "nan", marker: str | None = None) -> None:
        """Break the run once trainer.global_step == at_step.

        Args:
            at_step: Optimizer step (0-based: the step that would make global_step at_step + 1).
            kind: "nan" multiplies that step's loss by NaN before backward; "sigterm"/"sigkill"
                signal this process after the step has finished (its checkpoints included);
                "pause" waits there, so that a test can signal the process group from outside.
            marker: For "pause": a file created when the pause begins; the pause ends when
                ``<marker>.go`` exists (signal handlers run meanwhile).
        """
        self.at_step = at_step
        self.kind = kind
        self.marker = marker

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.kind == "nan" and trainer.global_step == self.at_step:
            loss.mul_(float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step has just been incremented: the step with index at_step has completed.
        if trainer.global_step != self.at_step + 1:
            return
        if self.kind in ("sigterm", "sigkill"):
            os.kill(os.getpid(), signal.SIGTERM if self.kind == "sigterm" else signal.SIGKILL)
        elif self.kind == "pause":
            Path(self.marker).touch()
            go, deadline = Path(f"{self.marker}.go"), time.monotonic() + 120
            while not go.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"paused at step {trainer.global_step}, no signal came")
                time.sleep(0.02)
