"""The non-finite guard: stop (or skip) when a step's loss or gradients are NaN/inf.

Checked after backward and before the optimizer step, so a bad update never reaches the weights and
``ModelCheckpoint`` (which saves after the step) never writes a NaN checkpoint: the last good checkpoint
on disk stays intact. The first bad step stops training with an error naming the step and that
checkpoint; ``max_skipped_steps: N`` instead skips up to N bad updates (all gradients dropped, so AdamW
leaves weights and moments alone). With fused AdamW this costs no host sync per step: fused AdamW
honours a ``found_inf`` flag and drops the update on the device; the flag counters are read every
``check_every_n_steps``. The check uses the step's one gradient norm (``gptmini.core.guard.NonFiniteGuard``,
shared with clipping); in the captured step (``model.capture``) the step itself makes the check on the
device and this callback only reads the counters. Part of ``FaultGuard`` (``fault_guard:``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from gptmini.callbacks.interface import RecipeModule, recipe_module
from gptmini.core.config import NonNegativeInt, PositiveInt, check_args
from gptmini.core.formats import CKPT_STATE_DICT
from gptmini.core.guard import NonFiniteGuard
from gptmini.train.compat import grad_scaler
from gptmini.train.step_hooks import restore_step_hooks, retire_step_hooks


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (more often than ``max_skipped_steps`` allows)."""



def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint file this run wrote or resumed from, if any."""
    candidates = [trainer.ckpt_path]
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            candidates += [cb.last_model_path, cb.best_model_path, *cb.best_k_models]
    files = {str(p) for p in candidates if p and Path(p).is_file()}
    return max(files, key=os.path.getmtime) if files else None



def _step_loss(trainer: pl.Trainer, module: RecipeModule | None) -> torch.Tensor | None:
    """This step's loss: GPTMiniModule keeps it (it logs only on writing steps); else the logged one.
    ``module``: ``recipe_module(pl_module)``."""
    loss = module.last_loss if module is not None else None
    return loss if loss is not None else trainer.callback_metrics.get("train/loss")



class NonFiniteStop(Callback):
    """Stop, or skip up to ``max_skipped_steps`` updates, when a step's loss or gradients are not finite."""

    # Its closure hook (on_before_optimizer_step) is not needed by the captured step, which makes
    # the same check on the device (gptmini.train.module.closure_hook_owners skips it).
    captured_step_aware = True

    def __init__(self, max_skipped_steps: NonNegativeInt = 0, check_every_n_steps: PositiveInt = 1) -> None:
        """See :class:`gptmini.callbacks.fault_guard.FaultGuard` for the settings."""
        checked = check_args(NonFiniteStop.__init__, "fault_guard", locals())  # the range types above
        self.max_skipped_steps = checked["max_skipped_steps"]
        self.check_every_n_steps = checked["check_every_n_steps"]
        self.skipped = 0
        self._guard: NonFiniteGuard | None = None  # device counters, read every n steps
        self._counts_on_device = False  # self.skipped comes from the guard's counter

    # The batch hooks below have work in some fits only (a captured step; a module without the
    # recipe interface): the first call of each decides for the fit and retires the hook when idle.
    BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restore_step_hooks(self, self.BATCH_HOOKS)  # retired in an earlier fit: this fit decides anew

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = recipe_module(pl_module)
        module_guard = module.nonfinite_guard if module is not None else None
        if module_guard is not None:  # count on from a resumed run's skips, at its step
            module_guard.reset_counts(self.skipped, trainer.global_step)

    # -- non-finite ------------------------------------------------------------------------
    def _guard_for(self, trainer: pl.Trainer, module: RecipeModule | None, optimizer: Any) -> NonFiniteGuard:
        """The module's guard for ``optimizer`` (the norm clipping also uses), else one of our own.
        ``module``: ``recipe_module(pl_module)``."""
        module_guard = module.nonfinite_guard if module is not None else None
        if module_guard is not None and module_guard.optimizer is optimizer:
            self._guard = module_guard
        elif self._guard is None or self._guard.optimizer is not optimizer:
            self._guard = NonFiniteGuard(optimizer, skipped=self.skipped, step=trainer.global_step)
        return self._guard

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The captured step checks on the device, without calling on_before_optimizer_step: read
        # its counters at the start of every n-th step (the steps before it are checked).
        module = recipe_module(pl_module)
        if module is None or not module.runs_own_step():
            # Fixed for the fit (the module's runner is built at train start, before any batch):
            # Lightning stops dispatching this hook until the next fit.
            retire_step_hooks(self, ("on_train_batch_start",))
            return
        if trainer.global_step % self.check_every_n_steps == 0:
            self._read_device_verdict(trainer, module.nonfinite_guard)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if recipe_module(pl_module) is not None:
            # The module ends its own guard's step, for the whole fit: nothing to do here until the next.
            retire_step_hooks(self, ("on_train_batch_end",))
        elif self._guard is not None:
            self._guard.done()  # our own guard: the module does it for its own

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        no_scaler = grad_scaler(trainer) is None
        module = recipe_module(pl_module)  # once per step: each lookup walks the interface's members
        if no_scaler and optimizer.defaults.get("fused"):
            self._flag_on_device(trainer, module, optimizer, trainer.global_step)
            return
        # At n = 1 every step is checked: the step is read (~6 calls) only to skip one, or to report.
        if self.check_every_n_steps > 1 and trainer.global_step % self.check_every_n_steps:
            return
        loss = _step_loss(trainer, module)
        # With an fp16 grad scaler, inf gradients are routine (the scaler skips those steps itself).
        if no_scaler:
            guard = self._guard_for(trainer, module, optimizer)
            if loss is None and not guard.grads():  # the grads are listed only without a loss
                return
            guard.measure(loss)  # the step's one grad norm: clipping reuses it
            finite = not bool(guard.found_inf)  # the one host sync
        elif loss is None:
            return
        else:
            finite = bool(torch.isfinite(loss.detach()).all())  # the one host sync
        # Every rank must take the same decision, or DDP/FSDP would deadlock.
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        loss_text = f"{loss.item():.4g}" if loss is not None else "n/a"
        step = trainer.global_step
        if self.skipped < self.max_skipped_steps:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # AdamW skips params without grads entirely
            rank_zero_warn(
                f"non-finite loss or gradient at step {step} (train/loss={loss_text}): update skipped "
                f"({self.skipped} of fault_guard.max_skipped_steps={self.max_skipped_steps})."
            )
            return
        self._stop(trainer, step, f"train/loss={loss_text}")

    def _flag_on_device(
        self,
        trainer: pl.Trainer,
        module: RecipeModule | None,
        optimizer: torch.optim.Optimizer,
        step: int,
    ) -> None:
        """Fused AdamW: skip bad updates on the device, read the verdict every n steps.

        Fused AdamW honours a ``found_inf`` tensor (the hook GradScaler uses): when it is 1 the
        kernel leaves weights, moments and step count alone. So every step is guarded without a
        host sync, and only every ``check_every_n_steps`` the counters are read to stop or warn.
        """
        guard = self._guard_for(trainer, module, optimizer)
        if not guard.grads():
            return
        guard.measure(_step_loss(trainer, module))  # writes found_inf, which fused AdamW reads
        if step % self.check_every_n_steps:
            return
        self._read_device_verdict(trainer, guard)

    def _read_device_verdict(self, trainer: pl.Trainer, guard: NonFiniteGuard) -> None:
        """Read the device counters (the host sync), then stop past the budget or warn of new skips."""
        self._guard, self._counts_on_device = guard, True
        total, first = guard.read()
        stop = total > self.max_skipped_steps
        if not trainer.strategy.reduce_boolean_decision(not stop, all=True):
            self._stop(trainer, first, "update skipped on the device, weights unchanged")
        if first >= 0:  # new skips since the last read
            rank_zero_warn(
                f"non-finite loss or gradient at step {first}: update skipped "
                f"({total} of fault_guard.max_skipped_steps={self.max_skipped_steps})."
            )
        self.skipped = total

    def _stop(self, trainer: pl.Trainer, step: int, detail: str) -> None:
        last = last_good_checkpoint(trainer)
        where = (
            f"The last good checkpoint is {last} (left intact); resume with --ckpt_path {last}"
            if last
            else "No checkpoint was saved yet; restart"
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} ({detail}); training stopped "
            f"before the update. {where} after lowering model.optim.lr or raising "
            f"model.schedule.warmup_steps, or let fault_guard.max_skipped_steps skip such steps."
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Between checks (check_every_n_steps > 1) a NaN may have reached the weights: never let
        # it overwrite last.ckpt. Raising here aborts the save before the file is opened.
        bad = [
            k
            for k, v in checkpoint.get(CKPT_STATE_DICT, {}).items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            last = last_good_checkpoint(trainer)
            raise NonFiniteLossError(
                f"weights are non-finite at step {trainer.global_step} ({bad[0]}, ...); checkpoint not "
                f"saved. The last good checkpoint is {last} (left intact)."
            )

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._counts_on_device and self._guard is not None:  # device counter, read at save time only
            self.skipped = int(self._guard.bad_total)
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self._guard, self._counts_on_device = None, False
