"""The chapter's parameter norm, and ``ParamNorm``, the callback that logs it (the ``wd`` exercise)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from gptmini.callbacks.interface import recipe_module


def param_norm(model: torch.nn.Module) -> float:
    """The chapter's parameter norm: ``sum(p.norm() for p in model.parameters())``."""
    with torch.no_grad():
        return float(sum(p.norm() for p in model.parameters()))


class ParamNorm(Callback):
    """Logs ``train/param_norm`` (see :func:`param_norm`) every ``log_every_n_steps``."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        module = recipe_module(pl_module)
        if module is None:
            return  # no GPTMini to measure
        if trainer.global_step % trainer.log_every_n_steps == 0 or trainer.global_step == trainer.max_steps:
            pl_module.log("train/param_norm", param_norm(module.model))
