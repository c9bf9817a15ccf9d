"""What the step-0 checks share: a checklist line, the error they raise, console/log helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from gptmini.callbacks.interface import recipe_module

RecipeCheckName = Literal[
    "peak_lr",
    "decay_groups",
    "no_warmup",
    "no_clipping",
    "betas",
    "scheduler_interval",
    "warmup_total",
    "eval_mode",
]
RECIPE_CHECKS: tuple[str, ...] = RecipeCheckName.__args__  # type: ignore[attr-defined]

# One word per status, so a line reads without a legend: pass = as the recipe says; note = differs,
# printed only; warn = printed + a warning; fail = stops the run; off = disabled by config;
# skip = not applicable / not run.
MARKS = {"pass": "ok", "note": "note", "warn": "WARN", "fail": "FAIL", "off": "off", "skip": "skip"}


class SanityCheckError(RuntimeError):
    """A pre-training check failed; the message names the problem, the likely causes and the fix."""


@dataclass
class CheckItem:
    """One line of the checklist."""

    key: str
    title: str
    status: str
    detail: str
    seconds: float | None = None
    """Wall time the check took (for the ones that cost more than a glance)."""

    def line(self) -> str:
        took = f" [{self.seconds:.1f}s]" if self.seconds is not None else ""
        return f"  {MARKS[self.status]:<4} {self.title:<18} {self.detail}{took}"


def say(trainer: pl.Trainer, message: str) -> None:
    # print, not logging: the checklist must reach the console whatever logging is configured.
    if trainer.is_global_zero:
        print(message, flush=True)


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def human_count(x: float) -> str:
    """Human count: 13.7M, 819M, 4,096."""
    for unit, scale in (("B", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:,.0f}"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextmanager
def _muted_logging(module: pl.LightningModule) -> Iterator[None]:
    """Call ``training_step`` outside the loop: its ``self.log`` calls go nowhere."""
    module.log, module.log_dict = _noop, _noop
    try:
        yield
    finally:
        del module.log, module.log_dict


def training_loss(module: pl.LightningModule, batch: Any) -> torch.Tensor:
    """The loss ``training_step`` returns for ``batch`` (tensor or ``{"loss": tensor}``)."""
    with _muted_logging(module):
        out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise SanityCheckError(
            f"training_step returned {type(out).__name__}, not a loss tensor; the checks need the loss."
        )
    return loss


def take_rows(batch: Any, rows: int | None) -> Any:
    """The first ``rows`` samples of every tensor in the batch (all of it for None)."""
    if rows is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[:rows]
    if isinstance(batch, dict):
        return {k: take_rows(v, rows) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(v, rows) for v in batch)
    return batch


def vocab_size_of(trainer: pl.Trainer, module: pl.LightningModule) -> int | None:
    recipe = recipe_module(module)
    if recipe is not None and recipe.model_cfg.vocab_size:
        return int(recipe.model_cfg.vocab_size)
    return getattr(trainer.datamodule, "vocab_size", None)
