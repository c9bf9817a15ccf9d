"""What the callbacks read from the LightningModule beyond Lightning's own API, declared once.

:class:`gptmini.train.module.GPTMiniModule` provides it (``tests/callbacks/test_interface.py``). With another
module the callbacks skip what needs it (no MFU, no text samples, the logged loss instead of the
step's, ln(V) from the datamodule) rather than reach for attributes by name.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from gptmini.core.guard import NonFiniteGuard
from gptmini.core.model import ModelConfig
from gptmini.core.schedule import ScheduleConfig


@runtime_checkable
class RecipeModule(Protocol):
    """A LightningModule training a GPTMini with the recipe."""

    model: nn.Module
    """The bare GPTMini (sampling, one-batch checks)."""
    model_cfg: ModelConfig
    """Its architecture (vocab for ln(V), FLOPs per token)."""
    schedule_cfg: ScheduleConfig
    """The lr schedule settings (the lr curve's expected end)."""
    last_loss: torch.Tensor | None
    """This step's training loss, detached (None before the first step); read whether or not it is logged."""
    nonfinite_guard: NonFiniteGuard | None
    """The one grad norm and non-finite verdict of each step (None before the optimizer exists)."""

    def runs_own_step(self) -> bool:
        """Whether the module's ``optimizer_step`` runs the captured step (or its eager twin), so
        Lightning's closure hooks are not called and the guard's verdict stays on the device."""
        ...


# The protocol's members, listed once: ``isinstance(x, RecipeModule)`` collects them from the class
# on every call (~60 Python calls; FaultGuard asks a few times per step).
DATA_MEMBERS = tuple(RecipeModule.__annotations__)
METHODS = tuple(n for n, v in vars(RecipeModule).items() if callable(v) and not n.startswith("_"))
MEMBERS = (*DATA_MEMBERS, *METHODS)


def recipe_module(obj: object) -> RecipeModule | None:
    """``obj`` (a LightningModule) when it provides :class:`RecipeModule`, else None: the rule of
    ``isinstance(obj, RecipeModule)`` (every member present; a method set to None blocks), without
    its per-call walk."""
    for name in DATA_MEMBERS:
        if not hasattr(obj, name):
            return None
    for name in METHODS:
        if getattr(obj, name, None) is None:
            return None
    return obj  # type: ignore[return-value]
