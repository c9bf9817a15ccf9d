"""Keep the checkpoint with the lowest validation loss, and say where it is when fit ends."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` monitoring ``val/loss`` (lowest kept, ``best-step=N.ckpt``).

    A subclass only for the defaults and the closing line: ``ModelCheckpoint`` keeps the best file
    but never tells the user which one it is. Use it with ``gptmini.generate`` (lowest held-out
    loss); resume from ``last.ckpt`` (``--ckpt_path last``), which has the latest optimizer state.
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        save_top_k: int = 1,
        filename: str = "best-{step}",
        **kwargs: Any,
    ) -> None:
        super().__init__(monitor=monitor, mode=mode, save_top_k=save_top_k, filename=filename, **kwargs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.best_model_path:
            score = float(self.best_model_score) if self.best_model_score is not None else float("nan")
            print(f"best checkpoint ({self.monitor} {score:.4f}): {self.best_model_path}", flush=True)
