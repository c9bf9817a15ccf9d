"""Test-only callbacks (used via class_path): break a run at a chosen optimizer step; hold runs
started together at a rendezvous."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class InjectFault(Callback):
    def __init__(
        self,
        at_step: int,
        kind: str = "nan",
        marker: str | None = None,
        during: str = "step_end",
        batch: int = 0,
        rank: int | None = None,
    ) -> None:
        """Break the run once trainer.global_step == at_step.

        Args:
            at_step: Optimizer step (0-based: the step that would make global_step at_step + 1).
            kind: "nan" multiplies that step's loss by NaN before backward; "sigterm"/"sigkill"/
                "sigusr1" signal this process; "pause" waits there, so that a test can signal the
                process group from outside.
            marker: For "pause": a file created when the pause begins; the pause ends when
                ``<marker>.go`` exists (signal handlers run meanwhile).
            during: When to signal or pause: "step_end" after step at_step has finished (its
                checkpoints included); "validation" after validation batch ``batch`` of the
                validation that follows step at_step; "micro_batch" after micro-batch ``batch``
                (0-based) of step at_step's accumulation window.
            batch: See ``during``.
            rank: Only in the process of this global rank (None: in every one).
        """
        self.at_step = at_step
        self.kind = kind
        self.marker = marker
        self.during = during
        self.batch = batch
        self.rank = rank

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            self.kind = "none"

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self.kind == "nan" and trainer.global_step == self.at_step:
            loss.mul_(float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.during == "micro_batch":
            # Still inside step at_step's window: global_step not yet incremented.
            if trainer.global_step == self.at_step and batch_idx % trainer.accumulate_grad_batches == self.batch:
                self._break()
        # global_step has just been incremented: the step with index at_step has completed.
        elif self.during == "step_end" and trainer.global_step == self.at_step + 1:
            self._break()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            self.during == "validation"
            and not trainer.sanity_checking
            and trainer.global_step == self.at_step + 1
            and batch_idx == self.batch
        ):
            self._break()

    def _break(self) -> None:
        if self.kind in ("sigterm", "sigkill", "sigusr1"):
            os.kill(os.getpid(), getattr(signal, self.kind.upper()))
        elif self.kind == "pause":
            Path(self.marker).touch()
            go, deadline = Path(f"{self.marker}.go"), time.monotonic() + 120
            while not go.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"paused at {self.during} of step {self.at_step}, no signal came")
                time.sleep(0.02)


class Rendezvous(Callback):
    def __init__(self, folder: str, parties: int) -> None:
        """Hold each run at ``setup`` (after the CLI's before_fit, before the config is written)
        until ``parties`` runs have arrived: runs started together reach the log folder together.

        Args:
            folder: Where each run leaves a file named by its pid.
            parties: Runs to wait for.
        """
        self.folder = Path(folder)
        self.parties = parties

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 240
        while len(list(self.folder.iterdir())) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(list(self.folder.iterdir()))} of {self.parties} runs came")
            time.sleep(0.05)


class FailInitialLossCheckOnRank(Callback):
    def __init__(self, rank: int) -> None:
        """Make InitialLossCheck fail in the process of this global rank only (its vocabulary set
        to 10^9, so ln(V) is far from the loss), as a batch that differs per rank can.

        Args:
            rank: The global rank whose check fails.
        """
        self.rank = rank

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from gptmini.callbacks.first_batch import InitialLossCheck

        if trainer.global_rank == self.rank:
            for cb in trainer.callbacks:
                if isinstance(cb, InitialLossCheck):
                    cb.vocab_size = 10**9
