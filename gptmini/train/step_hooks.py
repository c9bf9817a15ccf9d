"""Lightning's per-step callback dispatch, without the calls that do nothing.

Lightning calls each of the six per-step hooks below on every callback, every training step, whether
the callback defines the hook or not: about ten Python calls per callback and hook (its ``state_key``,
the profiler context, the trainer's module lookup, the empty method), ~60 dispatches per step with the
shipped configs of which ~10 do work. There is no switch for it; a callback whose hook attribute is
not callable is passed over (``gptmini.train.compat.skip_callback_hook``). So, for one fit:

- :class:`SkipUnusedStepHooks` (put in by ``gptmini.cli``) hides every per-step hook a callback
  inherits from Lightning's empty ``Callback``, and a ModelCheckpoint's batch end that cannot save in
  this fit, at train start, and shows them again at teardown;
- a callback whose per-step work is done for this fit (the step-0 checks after step 0; FaultGuard's
  batch start/end when the module runs no captured step) hides its own with :func:`retire_step_hooks`
  and shows them again at its next fit start (:func:`restore_step_hooks`).

Why not remove finished callbacks from ``trainer.callbacks``: their state would leave the
checkpoints (Lightning saves the state of the callbacks in the list, and warns at resume about
saved states with no callback), and their non-step hooks (validation, fit end, saving) would stop.
Hiding hooks changes the per-step dispatch only.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from gptmini.train.compat import (
    saves_at_batch_end,
    skip_callback_hook,
    skips_callback_hook,
    unskip_callback_hook,
)

# The callback hooks Lightning dispatches on every training step (automatic optimization).
STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
)


def inherits_empty(callback: Any, hook: str) -> bool:
    """Whether ``callback``'s ``hook`` is Lightning's empty ``Callback`` method (not overridden by its
    class or set on the instance)."""
    return getattr(getattr(callback, hook, None), "__func__", None) is getattr(Callback, hook)


def idle_checkpoint_batch_end(callback: Any, hook: str) -> bool:
    """Whether ``hook`` is a ModelCheckpoint's own ``on_train_batch_end`` that can never save in this
    fit (no ``every_n_train_steps``, no ``train_time_interval``: e.g. BestCheckpoint, which saves at
    validation): it would return at once on every batch."""
    return (
        hook == "on_train_batch_end"
        and isinstance(callback, ModelCheckpoint)
        and getattr(type(callback), hook) is ModelCheckpoint.on_train_batch_end
        and not saves_at_batch_end(callback)
    )


def skip_unused_step_hooks(callbacks: list[Any]) -> None:
    """Hide from Lightning's dispatch the per-step hooks each callback does not define, and those that
    cannot do anything in this fit (:func:`idle_checkpoint_batch_end`)."""
    for cb in callbacks:
        for hook in STEP_HOOKS:
            if inherits_empty(cb, hook) or idle_checkpoint_batch_end(cb, hook):
                skip_callback_hook(cb, hook)


def retire_step_hooks(callback: Any, hooks: tuple[str, ...] = STEP_HOOKS) -> None:
    """``callback``'s per-step work (in ``hooks``, default all) is done for this fit: Lightning stops
    calling those hooks. Its other hooks, its ``state_dict`` and its place in ``trainer.callbacks`` stay."""
    for hook in hooks:
        assert hook in STEP_HOOKS, hook
        skip_callback_hook(callback, hook)


def restore_step_hooks(callback: Any, hooks: tuple[str, ...] = STEP_HOOKS) -> None:
    """Undo :func:`retire_step_hooks` / :func:`skip_unused_step_hooks` for ``callback`` (``hooks``, default all)."""
    for hook in hooks:
        unskip_callback_hook(callback, hook)


def skipped_step_hooks(callback: Any) -> list[str]:
    """The per-step hooks of ``callback`` Lightning passes over now."""
    return [hook for hook in STEP_HOOKS if skips_callback_hook(callback, hook)]


class SkipUnusedStepHooks(Callback):
    """For each fit: the callbacks' per-step hooks that are Lightning's empty defaults, or a
    ModelCheckpoint's batch end that cannot save, are not dispatched (from train start, after every
    other callback's setup and a checkpoint restore, to teardown). Behaviour is unchanged: only calls
    that do nothing are left out."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        skip_unused_step_hooks(trainer.callbacks)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for cb in trainer.callbacks:
            restore_step_hooks(cb)
