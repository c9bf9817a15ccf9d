""":class:`Checklist`: the recipe checks at fit start, and the pre-training checklist printed at step 0
with a tick or a cross per item, computed from the real trainer, optimizer, scheduler and data.

The step-0 checks it gathers live beside it: :class:`~gptmini.callbacks.first_batch.InitialLossCheck`
and :class:`~gptmini.callbacks.first_batch.OverfitCheck` (the first batch),
:class:`~gptmini.callbacks.lr_curve.LRCurveCheck` (the whole lr schedule) and the recipe checks of
:mod:`gptmini.callbacks.recipe_checks` (one function per checklist item).

Every check reads the objects the run really uses (``trainer.optimizers``,
``trainer.lr_scheduler_configs``, the first batch the loop fetched), never the config they came
from, so it also catches a config that is right but wired wrong. A failing check raises
:class:`SanityCheckError` (a ``RuntimeError``) with a message naming the problem and the fix;
Lightning stops the run there, before any optimizer step.

Batch checks (initial loss, overfit) run at the first training batch: that is the exact batch
step 0 trains on, fetched by the real loader, and nothing of it is replayed. They run under
``isolate_rng`` (torch, CUDA, numpy and python generators restored) and never touch the real
weights or optimizer, so a run with the checks is bit-identical to one without.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from gptmini.callbacks.checks_shared import (
    RECIPE_CHECKS,
    CheckItem,
    RecipeCheckName,
    SanityCheckError,
    human_count,
    say,
)
from gptmini.callbacks.first_batch import FirstBatchCheck, InitialLossCheck
from gptmini.callbacks.lr_curve import LRCurveCheck, lr_curves
from gptmini.callbacks.recipe_checks import (
    betas_item,
    clipping_item,
    decay_groups_item,
    eval_mode_item,
    interval_item,
    peak_lr_item,
    warmup_items,
)
from gptmini.core.config import ConfigError
from gptmini.core.recipe import START_TOLERANCE, WARMUP_FRACTION
from gptmini.train.compat import every_n_train_steps
from gptmini.train.ranks import failed_on_any_rank
from gptmini.train.step_hooks import restore_step_hooks, retire_step_hooks


class Checklist(Callback):
    # The batch checks defer to us (we run them, print, then raise): a flag, not an import cycle.
    runs_first_batch_checks = True

    def __init__(
        self,
        disable: list[RecipeCheckName] | None = None,
        peak_lr_limit: float = 1e-3,
        small_model_params: int = 20_000_000,
        warmup_range: tuple[float, float] = WARMUP_FRACTION,
        start_tolerance: float = START_TOLERANCE,
        max_epochs: float = 4.0,
    ) -> None:
        """The recipe checks (at fit start) and the pre-training checklist (at step 0).

        At fit start every recipe check is evaluated on the real optimizer, scheduler and trainer: errors
        stop the run, warnings are emitted. At the first training batch the batch checks among the
        callbacks (:class:`InitialLossCheck`, :class:`OverfitCheck`) run, and the checklist is
        printed with a tick or a cross per item.

        Args:
            disable: Recipe checks to turn off (each is logged as disabled): peak_lr, decay_groups,
                no_warmup, no_clipping, betas, scheduler_interval, warmup_total, eval_mode.
            peak_lr_limit: Warn when the peak lr is above this for a small model.
            small_model_params: "Small model" for ``peak_lr``: at most this many parameters.
            warmup_range: Warmup as a fraction of trainer.max_steps that gets a tick.
            start_tolerance: A warmup must start below this fraction of the peak lr.
            max_epochs: Passes over the training tokens that still get a tick (repeating data up to
                ~4 epochs is about as good as fresh data; far more and the model memorises it).
        """
        self.disable = list(disable or [])
        unknown = sorted(set(self.disable) - set(RECIPE_CHECKS))
        if unknown:
            raise ConfigError(f"Checklist.disable: unknown recipe check(s) {unknown}; choose from {list(RECIPE_CHECKS)}.")
        self.peak_lr_limit, self.small_model_params = peak_lr_limit, small_model_params
        self.warmup_range, self.start_tolerance, self.max_epochs = (
            tuple(warmup_range),
            start_tolerance,
            max_epochs,
        )
        self.items: dict[str, CheckItem] = {}
        self.text = ""
        self.recipe_seconds = 0.0
        self._started = False

    # -- recipe checks -------------------------------------------------------------------------------
    def switched_off(self, item: CheckItem) -> CheckItem:
        """The item as printed: 'off' when its check is in ``disable``."""
        if item.key not in self.disable:
            return item
        return CheckItem(item.key, item.title, "off", f"recipe check '{item.key}' disabled by config")

    def _apply(self, trainer: pl.Trainer, items: list[CheckItem]) -> None:
        """Record items; switched-off checks become 'off', warnings are emitted, failures raised."""
        failures = []
        for item in map(self.switched_off, items):
            if item.status == "off":
                rank_zero_warn(f"[step-0 checks] recipe check '{item.key}' is disabled by config (Checklist.disable).")
            elif item.status == "warn":
                rank_zero_warn(f"[step-0 checks] {item.detail}")
            elif item.status == "fail":
                failures.append(item.detail)
            self.items[item.key] = item
        if failures:
            raise SanityCheckError("recipe check failed: " + " | ".join(failures))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.items, self.text, self._started = {}, "", False
        restore_step_hooks(self)
        start = time.perf_counter()
        items = self.recipe_items(trainer, pl_module)
        self.recipe_seconds = time.perf_counter() - start
        self._apply(trainer, items)

    def recipe_items(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[CheckItem]:
        """The recipe checks on the trainer's optimizer and schedulers (not yet switched off or applied)."""
        items = [interval_item(trainer.lr_scheduler_configs)]
        if trainer.optimizers:
            opt = trainer.optimizers[0]
            items += [
                decay_groups_item(pl_module, opt),
                betas_item(opt),
                peak_lr_item(pl_module, opt, self.peak_lr_limit, self.small_model_params),
            ]
            if trainer.max_steps and trainer.max_steps > 0:
                drawn = [
                    cb.curves
                    for cb in trainer.callbacks
                    if isinstance(cb, LRCurveCheck) and cb.curves_for == (id(opt), trainer.max_steps)
                ]
                curves = (
                    drawn[0] if drawn else lr_curves(opt, trainer.lr_scheduler_configs, trainer.max_steps)
                )
                curve = next(iter(curves.values()))
                peak = opt.param_groups[0].get("initial_lr")
                items += warmup_items(curve, self.start_tolerance, *self.warmup_range, peak_lr=peak)
        items.append(clipping_item(trainer.gradient_clip_val))
        return items

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, [eval_mode_item(pl_module)])

    # -- the checklist --------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started:
            return
        self._started = True
        retire_step_hooks(self)  # done after this batch: Lightning stops dispatching to us each step
        checks = [cb for cb in trainer.callbacks if isinstance(cb, FirstBatchCheck)]
        checks.sort(key=lambda cb: not isinstance(cb, InitialLossCheck))  # cheapest first
        results: dict[str, CheckItem] = {}
        failed = None
        for cb in checks:
            if failed is not None:
                cb.result = CheckItem(cb.key, cb.title, "skip", f"not run: {failed} failed")
            item = cb.ensure_run(trainer, pl_module, batch)
            results[item.key] = item
            if item.status == "fail" and failed is None:
                failed = item.title
        lr_check = next((cb for cb in trainer.callbacks if isinstance(cb, LRCurveCheck)), None)
        ordered = [
            results.get("initial_loss")
            or CheckItem("initial_loss", "initial loss", "skip", "no InitialLossCheck callback"),
            results.get("overfit")
            or CheckItem("overfit", "overfit one batch", "skip", "no OverfitCheck callback"),
            (lr_check.result if lr_check and lr_check.result else None)
            or CheckItem("lr_curve", "lr curve", "skip", "no LRCurveCheck callback"),
        ]
        for key in (
            "decay_groups",
            "no_clipping",
            "betas",
            "peak_lr",
            "scheduler_interval",
            "no_warmup",
            "warmup_total",
        ):
            if key in self.items:
                ordered.append(self.items[key])
        ordered += self._run_items(trainer, pl_module, batch)
        if "eval_mode" in self.items:
            ordered.append(self.items["eval_mode"])
        for item in ordered:
            self.items[item.key] = item
        lines = [item.line() for item in ordered]
        lines.append(f"  (recipe checks, items without a time: {self.recipe_seconds:.2f}s)")
        self.text = "\n".join(["Step-0 checklist (gptmini.callbacks: after data preparation, before the first update):", *lines])
        say(trainer, self.text)
        fails = [item.detail for item in ordered if item.status == "fail"]
        failure = failed_on_any_rank(trainer, " | ".join(fails) or None)  # each rank checked its own batch
        if failure:
            raise SanityCheckError(failure)

    def _run_items(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> list[CheckItem]:
        """Steps vs tokens and epochs; precision and accumulation; logging and checkpoints."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        rows, seq = (tuple(x.shape[:2]) + (1,))[:2] if isinstance(x, torch.Tensor) else (None, None)
        accum = trainer.accumulate_grad_batches
        devices = trainer.world_size
        max_steps = trainer.max_steps
        items = []
        if rows is None:
            items.append(CheckItem("tokens", "steps vs tokens", "skip", "batch is not a tensor"))
        else:
            per_step = rows * seq * accum * devices
            train_tokens = self._train_tokens(trainer, seq)
            if train_tokens and max_steps > 0:
                one_epoch = train_tokens / per_step
                epochs = max_steps / one_epoch
                detail = (
                    f"{max_steps:,} steps x {per_step:,} tokens ({rows} x {seq} x accum {accum} x {devices} "
                    f"device(s)) = {human_count(max_steps * per_step)} tokens = {epochs:.3g} epoch(s) of "
                    f"{human_count(train_tokens)} training tokens (1 epoch = {one_epoch:,.0f} steps)"
                )
                status = "pass" if epochs <= self.max_epochs else "note"
                if trainer.overfit_batches:
                    status, detail = "note", detail + "; overfit_batches is set: smoke run"
                items.append(CheckItem("tokens", "steps vs tokens", status, detail))
            else:
                items.append(CheckItem("tokens", "steps vs tokens", "skip", "training token count unknown"))
            # An epoch cap that stops the run before max_steps would cut the schedule short.
            cap = trainer.max_epochs
            if cap is not None and cap > 0 and trainer.num_training_batches not in (None, float("inf")):
                steps_cap = int(cap * math.ceil(trainer.num_training_batches / accum))
                if steps_cap < max_steps:
                    items.append(
                        CheckItem(
                            "max_epochs",
                            "epoch cap",
                            "note",
                            f"trainer.max_epochs={cap} stops the run at ~{steps_cap:,} of {max_steps:,} steps: "
                            f"the lr never finishes its decay",
                        )
                    )
        precision = str(trainer.precision)
        on_cuda = pl_module.device.type == "cuda"
        if precision in ("16-true", "bf16-true"):
            p_status, p_note = "note", "; pure half precision: weights and optimizer state lose precision"
        elif on_cuda and precision.startswith("32"):
            p_status, p_note = "note", "; bf16-mixed would be ~2x faster on this GPU"
        else:
            p_status, p_note = "pass", ""
        eff = f" ({rows * seq * accum * devices:,} tokens per optimizer step)" if rows else ""
        items.append(
            CheckItem(
                "precision", "precision/accum", p_status, f"{precision}, accumulate {accum}{eff}{p_note}"
            )
        )
        items.append(self._frequency_item(trainer))
        return items

    @staticmethod
    def _train_tokens(trainer: pl.Trainer, seq: int) -> int | None:
        dm = trainer.datamodule
        meta = getattr(dm, "meta", None)
        if callable(meta):
            try:
                return int(meta()["train_tokens"])
            except (ValueError, KeyError, OSError):
                pass
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        try:
            return len(dataset) * seq if dataset is not None else None
        except TypeError:
            return None

    @staticmethod
    def _frequency_item(trainer: pl.Trainer) -> CheckItem:
        max_steps = trainer.max_steps
        parts, status = [], "pass"
        if not trainer.loggers:
            parts.append("no logger")
            status = "note"
        else:
            every = trainer.log_every_n_steps
            parts.append(f"log every {every} steps ({max_steps // every if max_steps > 0 else '?'} points)")
            if max_steps > 0 and every * 20 > max_steps:
                status = "note"
        if isinstance(trainer.val_check_interval, int) and trainer.limit_val_batches:
            parts.append(f"val every {trainer.val_check_interval} batches")
        ckpts = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        if not ckpts:
            parts.append("no checkpoints")
            status = "note"
        for cb in ckpts:
            n = every_n_train_steps(cb)
            if n:
                parts.append(f"checkpoint every {n} steps" + (" + last" if cb.save_last else ""))
                if max_steps > 0 and n > max_steps:
                    status = "note"
            elif cb.monitor:
                parts.append(f"keep the best {cb.monitor}")
            else:
                parts.append("checkpoint after validation/epoch" + (" + last" if cb.save_last else ""))
        return CheckItem("frequency", "logging/ckpt", status, ", ".join(parts))
