"""Linear warmup + cosine decay, as a pure multiplier for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from gptmini.core.config import ClosedUnitInterval, ConfigError, NonNegativeInt, check_fields
from gptmini.core.recipe import warmup_advice


@dataclass
class ScheduleConfig:
    """Learning-rate schedule; its horizon is ``trainer.max_steps``."""

    warmup_steps: NonNegativeInt = 1000
    """Optimizer steps of linear warmup from near 0 up to the peak lr."""
    min_lr_ratio: ClosedUnitInterval = 0.1
    """Final lr as a fraction of the peak (min_lr = peak * ratio), reached at the last step."""

    def __post_init__(self) -> None:
        check_fields(self, "model.schedule")


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    - warmup: (step + 1) / (warmup_steps + 1) for step < warmup_steps, so step 0 is small but not 0
      (a zero lr would waste the first step) and step ``warmup_steps`` is exactly the peak;
    - cosine from 1 at ``warmup_steps`` down to ``min_lr_ratio`` at ``max_steps - 1``, the last
      step the trainer takes;
    - flat at ``min_lr_ratio`` after that.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def validate_horizon(warmup_steps: int, max_steps: int) -> None:
    """Raise a ConfigError naming the setting when the schedule cannot be built."""
    if max_steps is None or max_steps <= 0:
        raise ConfigError(
            f"trainer.max_steps must be a positive integer (the cosine horizon), got {max_steps}. "
            f"Set e.g. `trainer.max_steps: 50000` in the config."
        )
    if warmup_steps >= max_steps:
        raise ConfigError(
            f"model.schedule.warmup_steps ({warmup_steps}) must be smaller than trainer.max_steps "
            f"({max_steps}); {warmup_advice()} (typical)."
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying :func:`lr_multiplier` to every param group's peak lr."""
    validate_horizon(cfg.warmup_steps, max_steps)
    fn = partial(
        lr_multiplier, warmup_steps=cfg.warmup_steps, max_steps=max_steps, min_lr_ratio=cfg.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
