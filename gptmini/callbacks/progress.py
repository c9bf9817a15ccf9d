"""A progress bar that shows the training loss without a host sync on every step."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

# Redraws between loss reads when refresh_rate is null: every batch on CPU, where reading a
# tensor costs nothing, and every 25 on GPUs, where each read waits for the queued work.
AUTO_REFRESH = {"cpu": 1, "cuda": 25}


class LossProgressBar(TQDMProgressBar):
    def __init__(
        self, refresh_rate: int | None = None, process_position: int = 0, leave: bool = False
    ) -> None:
        """Lightning's TQDM bar plus the training loss, read only when the bar redraws.

        Lightning converts every ``prog_bar=True`` value to a Python float after *each* batch (a
        GPU->CPU sync per step, whatever the refresh rate), so ``GPTMiniModule`` logs
        ``train/loss`` without ``prog_bar`` and this bar reads it from ``trainer.callback_metrics``
        instead. ``gptmini.cli`` puts it in place of Lightning's default bar.

        Args:
            refresh_rate: Batches between redraws (and loss reads); 0 disables the bar; null = 1
                on CPU, 25 on CUDA.
            process_position: As in ``TQDMProgressBar``.
            leave: Keep finished epoch bars on screen.
        """
        super().__init__(
            refresh_rate=1 if refresh_rate is None else refresh_rate,
            process_position=process_position,
            leave=leave,
        )
        self._auto_refresh = refresh_rate is None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._auto_refresh:
            self._refresh_rate = AUTO_REFRESH.get(trainer.strategy.root_device.type, 25)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if isinstance(loss, torch.Tensor):
            items["loss"] = f"{loss.item():.3f}"
        return items
