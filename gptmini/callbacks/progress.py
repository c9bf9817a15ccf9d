"""A run-level progress bar: optimizer step out of the run's steps, tokens seen, loss and an ETA for
the whole run, read without a host sync on the steps between redraws."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from tqdm import tqdm

from gptmini.train.compat import set_refresh_rate

# Steps between redraws (and loss reads) when refresh_rate is null: every step on CPU, where reading
# a tensor costs nothing, and every 25 on GPUs, where each read waits for the queued work.
AUTO_REFRESH = {"cpu": 1, "cuda": 25}
# Steps timed (after the first, which holds compilation and warm-up) before the run's length is judged.
PROJECT_AFTER_STEPS = 5


class LossProgressBar(TQDMProgressBar):
    def __init__(
        self,
        refresh_rate: int | None = None,
        process_position: int = 0,
        leave: bool = False,
        min_interval_s: float = 0.5,
        long_run_hours: float | None = 72.0,
    ) -> None:
        """Lightning's TQDM bar, made run-level: the optimizer step out of the run's total
        (``trainer.max_steps``), the tokens seen so far, the training loss and the ETA of the whole
        run. Epochs are incidental in pretraining: the bar does not restart at each one.

        Lightning converts every ``prog_bar=True`` value to a Python float after *each* batch (a
        GPU->CPU sync per step, whatever the refresh rate), so ``GPTMiniModule`` logs
        ``train/loss`` without ``prog_bar`` and this bar reads the step's loss only when it
        redraws. ``gptmini.cli`` puts it in place of Lightning's default bar.

        Args:
            refresh_rate: Optimizer steps between redraws (and loss reads), at most; 0 disables the
                bar; null = 1 on CPU, 25 on CUDA.
            process_position: As in ``TQDMProgressBar``.
            leave: Keep finished bars on screen.
            min_interval_s: Seconds between redraws, at least (each costs about a millisecond of
                host time; the last step always redraws).
            long_run_hours: Once the first steps are timed, say in one line when the run's
                projected length exceeds this many hours (e.g. configs/10m.yaml on a CPU); null = never.
        """
        super().__init__(
            refresh_rate=1 if refresh_rate is None else refresh_rate,
            process_position=process_position,
            leave=leave,
        )
        if min_interval_s < 0:
            raise ValueError(f"LossProgressBar min_interval_s must be >= 0, got {min_interval_s}.")
        self._auto_refresh = refresh_rate is None
        self.min_interval_s = min_interval_s
        self.long_run_hours = long_run_hours
        self._last_draw = float("-inf")
        self._drawn_step = -1
        self._loss_text: str | None = None
        self._tokens_per_step = 0
        self._total: int | None = None
        self._t0: tuple[int, float] | None = None  # (step, time) after the first step: the ETA's origin
        self._judged = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._auto_refresh:
            set_refresh_rate(self, AUTO_REFRESH.get(trainer.strategy.root_device.type, 25))

    @staticmethod
    def run_total(trainer: pl.Trainer) -> int | None:
        """Optimizer steps in the whole run: ``max_steps``, else Lightning's estimate; None if unbounded."""
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        total = trainer.estimated_stepping_batches
        return int(total) if total != float("inf") else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # A run resumed mid-epoch gets no on_train_epoch_start from Lightning: set the bar up here.
        self.on_train_epoch_start(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if self._total is not None or self.is_disabled:  # set once: the bar spans the run, not an epoch
            return
        self._total = self.run_total(trainer)
        bar = self.train_progress_bar
        bar.reset(total=self._total)
        bar.initial = trainer.global_step  # a resumed run starts where it stopped; the rate counts new steps
        bar.n = trainer.global_step
        bar.set_description("train")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.is_disabled:
            return
        step = trainer.global_step
        if self._tokens_per_step == 0 and isinstance(batch, (tuple, list)) and torch.is_tensor(batch[0]):
            self._tokens_per_step = batch[0].numel() * trainer.accumulate_grad_batches * trainer.world_size
        last = step == self._total
        if step == self._drawn_step or (step % self.refresh_rate and not last):
            return
        now = time.monotonic()
        if now - self._last_draw < self.min_interval_s and not last:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_text = f"{loss.item():.3f}"  # the host sync: only here, at a redraw
        self._last_draw, self._drawn_step = now, step
        self._judge_length(trainer, step, now)
        bar = self.train_progress_bar
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def _judge_length(self, trainer: pl.Trainer, step: int, now: float) -> None:
        """Once PROJECT_AFTER_STEPS steps are timed: one line if the whole run would take very long."""
        if self._t0 is None:
            self._t0 = (step, now)
            return
        if self._judged or self.long_run_hours is None or self._total is None:
            return
        done = step - self._t0[0]
        if done < PROJECT_AFTER_STEPS:
            return
        self._judged = True
        per_step = (now - self._t0[1]) / done
        hours = per_step * (self._total - step) / 3600
        if hours <= self.long_run_hours:
            return
        device = trainer.strategy.root_device.type
        hint = (
            "on a CPU, try configs/tiny.yaml (minutes), or run this config on a GPU"
            if device == "cpu"
            else "lower trainer.max_steps, or add devices"
        )
        rank_zero_warn(
            f"at {per_step:.3g} s/step the remaining {self._total - step:,} steps take about "
            f"{_duration(hours)} on {device}: {hint}."
        )

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        if self._loss_text is not None:
            items["loss"] = self._loss_text
        if self._tokens_per_step:
            items["tokens"] = tqdm.format_sizeof(trainer.global_step * self._tokens_per_step)
        items["epoch"] = trainer.current_epoch
        return items


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:.0f} days" if hours < 24 * 14 else f"{hours / (24 * 7):.0f} weeks"
    return str(timedelta(seconds=round(hours * 3600)))
