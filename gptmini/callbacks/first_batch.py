"""Checks on the first training batch, before step 0: initial loss near ln(V), one-batch overfit."""

from __future__ import annotations

import copy
import math
import time
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng

from gptmini.callbacks.checks_shared import (
    CheckItem,
    SanityCheckError,
    human_count,
    log_metrics,
    say,
    take_rows,
    training_loss,
    vocab_size_of,
)
from gptmini.core.config import NonNegativeInt, PositiveFloat, PositiveInt, check_args
from gptmini.core.recipe import OVERFIT_REF_TOKENS, OVERFIT_THRESHOLD, overfit_budget
from gptmini.core.schedule import lr_multiplier
from gptmini.core.step import NoGradientError, train_step
from gptmini.train.compat import grad_scaler, init_optimizers
from gptmini.train.ranks import failed_on_any_rank
from gptmini.train.step_hooks import restore_step_hooks, retire_step_hooks

# --------------------------------------------------------------------------------------------------
# Batch checks: run at the first training batch, before step 0.
# --------------------------------------------------------------------------------------------------


class FirstBatchCheck(Callback):
    """Runs once, at the first training batch of a fresh run (global step 0).

    On its own it raises when it fails; with a :class:`Checklist` among the callbacks the checklist
    runs it (cheapest first, stopping at the first failure) and raises after printing.
    """

    key = "check"
    title = "check"

    def __init__(self) -> None:
        self.result: CheckItem | None = None
        self._started = False

    def ensure_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CheckItem:
        if self.result is None:
            if trainer.global_step > 0:
                self.result = CheckItem(
                    self.key, self.title, "skip", f"resumed at step {trainer.global_step}"
                )
            else:
                start = time.perf_counter()
                self.result = self.run(trainer, pl_module, batch)
                self.result.seconds = time.perf_counter() - start
        return self.result

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CheckItem:
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result, self._started = None, False
        restore_step_hooks(self)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started:
            return
        self._started = True
        retire_step_hooks(self)  # done after this batch: Lightning stops dispatching to us each step
        if any(getattr(cb, "runs_first_batch_checks", False) for cb in trainer.callbacks):
            return  # the checklist runs us, prints, then raises
        item = self.ensure_run(trainer, pl_module, batch)
        failure = failed_on_any_rank(trainer, item.detail if item.status == "fail" else None)  # gptmini.train.ranks
        if failure:
            raise SanityCheckError(failure)


class InitialLossCheck(FirstBatchCheck):
    key = "initial_loss"
    title = "initial loss"

    def __init__(self, tolerance: PositiveFloat = 1.0, vocab_size: int | None = None) -> None:
        """At init the model should predict a near-uniform distribution: loss ~ ln(vocab_size).

        Args:
            tolerance: Largest accepted |initial loss - ln(vocab_size)|. A gap of 1-2 can still be
                fine; 0 or 100 means the model (init, output head) or the loss is broken.
            vocab_size: Vocabulary for ln(V); null = the module's ``model_cfg.vocab_size`` or the
                datamodule's ``vocab_size``.
        """
        super().__init__()
        tolerance = check_args(InitialLossCheck.__init__, "InitialLossCheck", locals())["tolerance"]
        self.tolerance = tolerance
        self.vocab_size = vocab_size

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CheckItem:
        vocab = self.vocab_size or vocab_size_of(trainer, pl_module)
        if not vocab:
            return CheckItem(
                self.key, self.title, "skip", "vocab size unknown; set InitialLossCheck.vocab_size"
            )
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with isolate_rng(), torch.no_grad(), trainer.precision_plugin.forward_context():
                loss = float(training_loss(pl_module, batch))
        finally:  # exactly the train/eval mode each submodule had
            for m, mode in modes.items():
                m.train(mode)
        expected = math.log(vocab)
        gap = loss - expected
        self.loss, self.expected = loss, expected
        log_metrics(trainer, {"checks/initial_loss": loss, "checks/ln_vocab": expected}, step=0)
        detail = f"{loss:.3f} vs ln({vocab}) = {expected:.3f} (gap {gap:+.2f}, tolerance {self.tolerance})"
        say(trainer, f"[step-0 checks] initial loss {detail}")
        if not math.isfinite(loss):
            return CheckItem(
                self.key,
                self.title,
                "fail",
                f"initial loss is {loss}: the forward pass or the loss is broken.",
            )
        if abs(gap) <= self.tolerance:
            return CheckItem(self.key, self.title, "pass", detail)
        if gap > 0:
            why = (
                "the logits at init are far from uniform: check the init scale (model.init_std, "
                "the embedding / output head init), a missing final norm, or the loss inputs"
            )
        else:
            why = (
                "the model predicts better than chance before training: it probably sees the targets "
                "(causal mask, labels not shifted by one) or the loss is scaled/averaged wrongly"
            )
        return CheckItem(
            self.key,
            self.title,
            "fail",
            f"initial loss check failed: {detail}; {why}. "
            f"(Raise InitialLossCheck.tolerance or remove the callback to skip this check.)",
        )


class OverfitCheck(FirstBatchCheck):
    key = "overfit"
    title = "overfit one batch"

    def __init__(
        self,
        steps: PositiveInt | None = None,
        threshold: float = OVERFIT_THRESHOLD,
        warmup_steps: NonNegativeInt = 10,
        rows: PositiveInt | None = None,
        log_every: PositiveInt = 20,
        stop_early: bool = True,
    ) -> None:
        """Train a copy of the model on the first batch; the loss must fall below ``threshold``.

        The copy gets a fresh optimizer from the module's own ``configure_optimizers`` (same
        parameter groups and hyper-parameters); the schedule is replaced by a short linear warmup to
        each group's peak lr. The real model, optimizer and random generators are left untouched.

        Args:
            steps: Most optimizer steps to train. null = the rule
                :func:`gptmini.core.recipe.overfit_budget` for the tokens it trains on and the
                model's size, 2-3x what a healthy run needs: 90 x (tokens / 512)**0.3 x
                (10M / params)**0.2, neither factor below 1 (10m: 255 on 32 x 512; tiny: 142).
            threshold: The check passes when the loss ends below this.
            warmup_steps: Linear warmup to the peak lr over this many steps (0 = peak from step 0).
            rows: Use only the first ``rows`` samples of the batch (null = all): cheaper steps, for
                a check that takes seconds on CPU (the step budget follows the tokens kept).
            log_every: Print the loss every this many steps.
            stop_early: Stop as soon as the loss is below ``threshold`` (the check has passed).
        """
        super().__init__()
        c = check_args(OverfitCheck.__init__, "OverfitCheck", locals())  # the range types above
        self.steps, self.threshold, self.warmup_steps = c["steps"], threshold, c["warmup_steps"]
        self.rows, self.log_every, self.stop_early = c["rows"], c["log_every"], stop_early
        self.losses: list[float] = []
        self.budget: int | None = None
        """The step budget of the last run (``steps``, or the rule's for its batch)."""

    def budget_for(self, batch: Any, params: int) -> tuple[int, str]:
        """The most steps to train on ``batch`` (already cut to ``rows``) a model of ``params``
        trainable parameters, and how that number was chosen (for the checklist line)."""
        if self.steps is not None:
            return self.steps, "OverfitCheck.steps"
        tokens = _tokens(batch)
        if tokens is None:  # not a token tensor: the rule's smallest-batch figure
            tokens, of = OVERFIT_REF_TOKENS, "a batch of unknown size"
        else:
            of = f"{tokens:,} tokens"
        return overfit_budget(tokens, params), f"budget for {of}, {human_count(params)} params"

    def _fail(self, what: str, peak: float | None = None) -> CheckItem:
        lr = f" (peak lr {peak:.2e})" if peak is not None else ""
        return CheckItem(
            self.key,
            self.title,
            "fail",
            f"single-batch overfit check failed: {what}. Likely causes: the lr{lr} is 0 or far too "
            f"low/high; the model cannot learn (frozen or detached parameters, a bug in forward); "
            f"the loss does not match the targets. (Tune OverfitCheck.steps/threshold or remove the "
            f"callback to skip this check.)",
        )

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CheckItem:
        if not pl_module.automatic_optimization:
            return CheckItem(self.key, self.title, "skip", "manual optimization")
        batch = take_rows(batch, self.rows)
        self.losses = []
        with isolate_rng():
            clone = copy.deepcopy(pl_module)  # LightningModule drops its trainer when copied...
            clone.trainer = trainer  # ...but configure_optimizers reads max_steps, precision from it
            optimizers, _ = init_optimizers(clone)
            opt = optimizers[0]
            peaks = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
            params = [p for g in opt.param_groups for p in g["params"]]
            if not any(p.requires_grad for p in params):
                return self._fail(
                    "the optimizer holds no trainable parameter (frozen model)", max(peaks, default=None)
                )
            trainable = sum(p.numel() for p in {id(p): p for p in params if p.requires_grad}.values())
            steps, why = self.budget_for(batch, trainable)
            self.budget = steps
            scaler = torch.amp.GradScaler(pl_module.device.type) if grad_scaler(trainer) is not None else None
            clip = trainer.gradient_clip_val
            for k in range(steps):
                # The schedule's own warmup formula, held at the peak after it (no decay).
                ramp = lr_multiplier(k, self.warmup_steps, steps, min_lr_ratio=1.0)
                for g, peak in zip(opt.param_groups, peaks):
                    g["lr"] = peak * ramp
                try:  # the plain loop's step (gptmini.core.step): the check trains as the baseline does
                    loss = train_step(
                        partial(training_loss, clone, batch),
                        opt,
                        params,
                        forward_context=trainer.precision_plugin.forward_context,
                        clip=clip,
                        scaler=scaler,
                    )
                except NoGradientError as e:
                    return self._fail(str(e), max(peaks))
                value = float(loss)
                self.losses.append(value)
                log_metrics(trainer, {"checks/overfit_loss": value}, step=k)
                done = self.stop_early and value < self.threshold
                if k % self.log_every == 0 or k == steps - 1 or done:
                    say(
                        trainer,
                        f"[step-0 checks] overfit step {k:>4}/{steps}: loss {value:.4f} lr {peak * ramp:.2e}",
                    )
                if not math.isfinite(value):
                    return self._fail(f"the loss became {value} at step {k}", max(peaks))
                if done:
                    break
            del clone, opt, optimizers
        first, last = self.losses[0], self.losses[-1]
        detail = (
            f"{first:.3f} -> {last:.4f} in {len(self.losses)} of {steps} steps ({why}) on "
            f"{self._shape(batch)} (threshold {self.threshold})"
        )
        if last < self.threshold:
            return CheckItem(self.key, self.title, "pass", detail)
        return self._fail(f"loss {detail}", max(peaks))

    @staticmethod
    def _shape(batch: Any) -> str:  # "32x512 tokens"
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return "x".join(map(str, first.shape)) + " tokens" if isinstance(first, torch.Tensor) else "one batch"


def _tokens(batch: Any) -> int | None:
    """Tokens in the batch's inputs (rows x context), None when they are not a tensor."""
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return first.numel() if isinstance(first, torch.Tensor) else None
