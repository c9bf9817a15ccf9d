"""Keep the checkpoint with the lowest validation loss, and say where it is when fit ends."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

# Shown beside the monitored value in the closing line (bits per byte compares across tokenizers).
BESIDE = ("val/loss", "val/bpb")


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` monitoring ``val/loss`` (lowest kept, ``best-step=N.ckpt``).

    A subclass only for the defaults and the closing line: ``ModelCheckpoint`` keeps the best file
    but never tells the user which one it is. Use it with ``gptmini.commands.generate`` (lowest held-out
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
        self._resumed_best: torch.Tensor | None = None
        # The other val/* values (val/bpb, val/ppl) of the validation that made the best file.
        self.best_metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = self.best_model_path
        super().on_validation_end(trainer, pl_module)
        if self.best_model_path and self.best_model_path != before:  # this validation is the new best
            self.best_metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_metrics": dict(self.best_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resume writes into a new version folder, where Lightning reloads only best_model_path,
        # not its score: the first validation after the resume would then be "best" however bad.
        # Keep the score, so only a lower val/loss replaces the run's best.
        super().load_state_dict(state_dict)
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        score = state_dict.get("best_model_score")
        if self.best_model_score is None and score is not None:
            self.best_model_score = self._resumed_best = score

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and self._resumed_best is not None and not self.best_k_models:
            better = torch.lt if self.mode == "min" else torch.gt
            if not better(current, self._resumed_best.to(current.device)):
                return False
        return super().check_monitor_top_k(trainer, current)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.best_model_path:
            score = float(self.best_model_score) if self.best_model_score is not None else float("nan")
            extra = "".join(
                f", {k} {v:.4f}" for k, v in self.best_metrics.items() if k in BESIDE and k != self.monitor
            )
            print(f"best checkpoint ({self.monitor} {score:.4f}{extra}): {self.best_model_path}", flush=True)
