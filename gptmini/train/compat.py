"""What gptmini asks of Lightning beyond its documented API, in one place.

Each helper answers one question about a trainer the same way everywhere it is asked (the module,
the callbacks, the CLI).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.strategies import FSDPStrategy


def grad_scaler(trainer: pl.Trainer | None) -> torch.amp.GradScaler | None:
    """The fp16 grad scaler Lightning's precision plugin steps with, or None (32-bit, bf16, no trainer).

    A scaler changes three rules: fused AdamW is off, Lightning clips (it unscales first), and inf
    gradients are routine (the scaler skips those steps itself).
    """
    if trainer is None:
        return None
    return getattr(trainer.precision_plugin, "scaler", None)


def uses_fsdp(trainer: pl.Trainer | None) -> bool:
    """Whether the run shards its weights with FSDP (Lightning's FSDPStrategy or a subclass)."""
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


def names_fsdp(strategy: object) -> bool:
    """Whether a ``trainer.strategy`` setting (a name or an instance, before the Trainer exists) is
    one Lightning refuses without a GPU (``_check_strategy_and_fallback``: the registered FSDP
    names, or exactly FSDPStrategy)."""
    if isinstance(strategy, str):
        return strategy.lower() in FSDPStrategy.get_registered_strategies()
    return type(strategy) is FSDPStrategy


def attached_trainer(module: pl.LightningModule) -> Any:
    """The module's trainer, or None when it is not attached (``module.trainer`` raises then)."""
    return module._trainer


def init_optimizers(module: pl.LightningModule) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """(optimizers, lr scheduler configs) from ``module.configure_optimizers()``, normalized as
    Lightning does at fit start (``_init_optimizers_and_lr_schedulers``: no public equivalent)."""
    return _init_optimizers_and_lr_schedulers(module)
