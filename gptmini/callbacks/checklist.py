"""Pre-training sanity checks as Lightning callbacks: catch a broken run in minutes, not days.

- :class:`InitialLossCheck`: the loss of the first training batch at init must be near ln(vocab).
- :class:`OverfitCheck`: a *copy* of the model must drive the loss of one batch near 0.
- :class:`LRCurveCheck`: the whole lr schedule, rendered (PNG + TensorBoard) and shape-checked.
- :class:`Checklist`: the guards against the recipe's known failure points, and the pre-training
  checklist printed with a tick or a cross per item, computed from the real trainer, optimizer,
  scheduler and data.

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

import copy
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

GuardName = Literal[
    "peak_lr",
    "decay_groups",
    "no_warmup",
    "no_clipping",
    "betas",
    "scheduler_interval",
    "warmup_total",
    "eval_mode",
]
GUARDS: tuple[str, ...] = GuardName.__args__  # type: ignore[attr-defined]

# pass: as the recipe says; note: differs, printed only; warn: printed + warning; fail: stops the run;
# off: disabled by config; skip: not applicable / not run.
MARKS = {"pass": "✓", "note": "✗", "warn": "✗", "fail": "✗", "off": "–", "skip": "–"}


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
        return f"  {MARKS[self.status]} {self.title:<18} {self.detail}{took}"


def _say(trainer: pl.Trainer, message: str) -> None:
    # print, not logging: the checklist must reach the console whatever logging is configured.
    if trainer.is_global_zero:
        print(message, flush=True)


def _log_metrics(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def _num(x: float) -> str:
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


def _training_loss(module: pl.LightningModule, batch: Any) -> torch.Tensor:
    """The loss ``training_step`` returns for ``batch`` (tensor or ``{"loss": tensor}``)."""
    with _muted_logging(module):
        out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, torch.Tensor):
        raise SanityCheckError(
            f"training_step returned {type(out).__name__}, not a loss tensor; the checks need the loss."
        )
    return loss


def _take_rows(batch: Any, rows: int | None) -> Any:
    """The first ``rows`` samples of every tensor in the batch (all of it for None)."""
    if rows is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[:rows]
    if isinstance(batch, dict):
        return {k: _take_rows(v, rows) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_take_rows(v, rows) for v in batch)
    return batch


def _vocab_size(trainer: pl.Trainer, module: pl.LightningModule) -> int | None:
    cfg = getattr(module, "model_cfg", None)
    if cfg is not None and getattr(cfg, "vocab_size", None):
        return int(cfg.vocab_size)
    return getattr(trainer.datamodule, "vocab_size", None)


def _unique_params(module: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in module.parameters()}.values())  # tied weights once


# --------------------------------------------------------------------------------------------------
# Batch checks: run at the first training batch, before step 0.
# --------------------------------------------------------------------------------------------------


class _FirstBatchCheck(Callback):
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

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started:
            return
        self._started = True
        if any(isinstance(cb, Checklist) for cb in trainer.callbacks):
            return  # the checklist runs us, prints, then raises
        item = self.ensure_run(trainer, pl_module, batch)
        if item.status == "fail":
            raise SanityCheckError(item.detail)


class InitialLossCheck(_FirstBatchCheck):
    key = "initial_loss"
    title = "initial loss"

    def __init__(self, tolerance: float = 1.0, vocab_size: int | None = None) -> None:
        """At init the model should predict a near-uniform distribution: loss ~ ln(vocab_size).

        Args:
            tolerance: Largest accepted |initial loss - ln(vocab_size)|. A gap of 1-2 can still be
                fine; 0 or 100 means the model (init, output head) or the loss is broken.
            vocab_size: Vocabulary for ln(V); null = the module's ``model_cfg.vocab_size`` or the
                datamodule's ``vocab_size``.
        """
        super().__init__()
        if not tolerance > 0:
            raise ValueError(f"InitialLossCheck.tolerance must be > 0, got {tolerance}.")
        self.tolerance = tolerance
        self.vocab_size = vocab_size

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CheckItem:
        vocab = self.vocab_size or _vocab_size(trainer, pl_module)
        if not vocab:
            return CheckItem(
                self.key, self.title, "skip", "vocab size unknown; set InitialLossCheck.vocab_size"
            )
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with isolate_rng(), torch.no_grad(), trainer.precision_plugin.forward_context():
                loss = float(_training_loss(pl_module, batch))
        finally:  # exactly the train/eval mode each submodule had
            for m, mode in modes.items():
                m.train(mode)
        expected = math.log(vocab)
        gap = loss - expected
        self.loss, self.expected = loss, expected
        _log_metrics(trainer, {"checks/initial_loss": loss, "checks/ln_vocab": expected}, step=0)
        detail = f"{loss:.3f} vs ln({vocab}) = {expected:.3f} (gap {gap:+.2f}, tolerance {self.tolerance})"
        _say(trainer, f"[checks] initial loss {detail}")
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


class OverfitCheck(_FirstBatchCheck):
    key = "overfit"
    title = "overfit one batch"

    def __init__(
        self,
        steps: int = 100,
        threshold: float = 0.5,
        warmup_steps: int = 10,
        rows: int | None = None,
        log_every: int = 20,
        stop_early: bool = True,
    ) -> None:
        """Train a copy of the model on the first batch; the loss must fall below ``threshold``.

        The copy gets a fresh optimizer from the module's own ``configure_optimizers`` (same
        parameter groups and hyper-parameters); the schedule is replaced by a short linear warmup to
        each group's peak lr. The real model, optimizer and random generators are left untouched.

        Args:
            steps: Most optimizer steps to train.
            threshold: The check passes when the loss ends below this.
            warmup_steps: Linear warmup to the peak lr over this many steps (0 = peak from step 0).
            rows: Use only the first ``rows`` samples of the batch (null = all): cheaper steps, for
                a check that takes seconds on CPU.
            log_every: Print the loss every this many steps.
            stop_early: Stop as soon as the loss is below ``threshold`` (the check has passed).
        """
        super().__init__()
        if steps <= 0 or warmup_steps < 0 or log_every <= 0 or (rows is not None and rows <= 0):
            raise ValueError(
                "OverfitCheck: steps and log_every must be > 0, warmup_steps >= 0, rows null or > 0; "
                f"got steps={steps}, warmup_steps={warmup_steps}, log_every={log_every}, rows={rows}."
            )
        self.steps, self.threshold, self.warmup_steps = steps, threshold, warmup_steps
        self.rows, self.log_every, self.stop_early = rows, log_every, stop_early
        self.losses: list[float] = []

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
        batch = _take_rows(batch, self.rows)
        self.losses = []
        with isolate_rng():
            clone = copy.deepcopy(pl_module)  # LightningModule drops its trainer when copied...
            clone.trainer = trainer  # ...but configure_optimizers reads max_steps, precision from it
            optimizers, _ = _init_optimizers_and_lr_schedulers(clone)
            opt = optimizers[0]
            peaks = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
            params = [p for g in opt.param_groups for p in g["params"]]
            if not any(p.requires_grad for p in params):
                return self._fail(
                    "the optimizer holds no trainable parameter (frozen model)", max(peaks, default=None)
                )
            scaler = (
                torch.amp.GradScaler(pl_module.device.type)
                if getattr(trainer.precision_plugin, "scaler", None) is not None
                else None
            )
            clip = trainer.gradient_clip_val
            for k in range(self.steps):
                ramp = min(1.0, (k + 1) / (self.warmup_steps + 1))
                for g, peak in zip(opt.param_groups, peaks):
                    g["lr"] = peak * ramp
                with trainer.precision_plugin.forward_context():
                    loss = _training_loss(clone, batch)
                if not loss.requires_grad:
                    return self._fail("the loss does not depend on any trainable parameter", max(peaks))
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(opt)
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, float(clip))
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                value = float(loss.detach())
                self.losses.append(value)
                _log_metrics(trainer, {"checks/overfit_loss": value}, step=k)
                done = self.stop_early and value < self.threshold
                if k % self.log_every == 0 or k == self.steps - 1 or done:
                    _say(
                        trainer,
                        f"[checks] overfit step {k:>4}/{self.steps}: loss {value:.4f} lr {peak * ramp:.2e}",
                    )
                if not math.isfinite(value):
                    return self._fail(f"the loss became {value} at step {k}", max(peaks))
                if done:
                    break
            del clone, opt, optimizers
        first, last = self.losses[0], self.losses[-1]
        detail = f"{first:.3f} -> {last:.4f} in {len(self.losses)} steps on {self._shape(batch)} (threshold {self.threshold})"
        if last < self.threshold:
            return CheckItem(self.key, self.title, "pass", detail)
        return self._fail(f"loss {detail}", max(peaks))

    @staticmethod
    def _shape(batch: Any) -> str:
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        return "x".join(map(str, first.shape)) + " tokens" if isinstance(first, torch.Tensor) else "one batch"


# --------------------------------------------------------------------------------------------------
# The learning-rate curve
# --------------------------------------------------------------------------------------------------


def lr_curves(
    optimizer: torch.optim.Optimizer, scheduler_configs: Sequence[Any], max_steps: int
) -> dict[str, np.ndarray]:
    """lr of every param group at optimizer steps 0..max_steps-1, from a copy of the real scheduler.

    The scheduler and its optimizer are deep-copied with the parameters shared (not copied), then
    stepped as Lightning steps the real one; the real objects are not touched. A scheduler stepped
    per epoch is shown flat (its per-step shape is unknown before the data is).
    """
    params = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    names = [g.get("name") or f"pg{i + 1}" for i, g in enumerate(optimizer.param_groups)]
    config = next((c for c in scheduler_configs if c.scheduler.optimizer is optimizer), None)
    if config is None or config.reduce_on_plateau:
        lrs = np.array([[g["lr"] for g in optimizer.param_groups]] * max_steps)
    else:
        sched = copy.deepcopy(config.scheduler, memo=dict(params))
        per_step = config.interval == "step"
        rows = []
        with warnings.catch_warnings():
            # "lr_scheduler.step() before optimizer.step()": intended, the copy only draws the curve.
            warnings.simplefilter("ignore", UserWarning)
            for k in range(max_steps):
                rows.append([g["lr"] for g in sched.optimizer.param_groups])
                if per_step and (k + 1) % config.frequency == 0:
                    sched.step()
        lrs = np.array(rows)
    return {name: lrs[:, i] for i, name in enumerate(names)}


@dataclass
class CurveShape:
    """What the lr curve looks like."""

    peak: float
    warmup_steps: int  # first step at the peak
    start: float
    end: float
    rises_at: int | None  # first step after the peak where the lr goes up


def curve_shape(lrs: np.ndarray) -> CurveShape:
    lrs = np.asarray(lrs, dtype=np.float64)
    peak_at = int(np.argmax(lrs))
    peak = float(lrs[peak_at])
    after = np.diff(lrs[peak_at:])
    rising = np.nonzero(after > 1e-9 * max(peak, 1e-30))[0]
    rises_at = int(peak_at + rising[0] + 1) if len(rising) else None
    return CurveShape(peak, peak_at, float(lrs[0]), float(lrs[-1]), rises_at)


def _starts_near_zero(s: CurveShape, start_tolerance: float) -> bool:
    """Below start_tolerance x peak, or one linear-warmup increment (peak / warmup) for warmups too
    short to start lower."""
    return s.start <= max(start_tolerance, 1.0 / max(s.warmup_steps, 1)) * s.peak * (1 + 1e-6)


def _warmup_unfinished(s: CurveShape, n: int, peak_lr: float | None, rtol: float = 1e-3) -> bool:
    """Still warming up at the last step: the peak is the last step and below the configured peak
    (reaching it exactly at the last step, warmup = max_steps - 1, is a zero-length decay, allowed)."""
    if n <= 1 or s.warmup_steps < n - 1 or s.start >= s.peak:
        return False
    return peak_lr is None or s.peak < peak_lr * (1 - rtol)


def lr_curve_problems(
    lrs: np.ndarray,
    peak_lr: float | None,
    min_lr: float | None,
    start_tolerance: float = 0.1,
    rtol: float = 1e-3,
) -> list[str]:
    """Shape checks: starts near 0, peaks at ``peak_lr`` at the end of warmup, never rises after it,
    ends at ``min_lr``. Returns the problems (empty = healthy)."""
    s = curve_shape(lrs)
    n = len(lrs)
    problems = []
    if s.warmup_steps > 0 and not _starts_near_zero(s, start_tolerance):
        problems.append(
            f"warmup starts at {s.start:.2e}, not near 0 (peak {s.peak:.2e} at step {s.warmup_steps})"
        )
    if peak_lr is not None and abs(s.peak - peak_lr) > rtol * peak_lr:
        problems.append(f"the peak is {s.peak:.3e}, not the configured lr {peak_lr:.3e}")
    if s.rises_at is not None:
        problems.append(
            f"the lr rises again after warmup, at step {s.rises_at} "
            f"({lrs[s.rises_at - 1]:.3e} -> {lrs[s.rises_at]:.3e}); it must only decay after the peak "
            f"at step {s.warmup_steps}"
        )
    if _warmup_unfinished(s, n, peak_lr, rtol):
        problems.append(
            f"warmup never ends: the lr still rises at the last step ({n - 1}); warmup >= total steps"
        )
    elif s.warmup_steps < n - 1 and min_lr is not None and abs(s.end - min_lr) > rtol * max(s.peak, 1e-30):
        problems.append(
            f"it ends at {s.end:.3e}, not min_lr {min_lr:.3e}: the decay horizon differs from "
            f"trainer.max_steps ({n})"
        )
    return problems


def render_lr_curve(curves: dict[str, np.ndarray], title: str = "learning rate"):
    """A matplotlib Figure of the curves (no pyplot state, safe in any thread/backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=100)
    ax = fig.add_subplot()
    steps = np.arange(len(next(iter(curves.values()))))
    for i, (name, lrs) in enumerate(curves.items()):
        ax.plot(steps, lrs, label=name, linewidth=1.5, linestyle="-" if i == 0 else "--")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("lr")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _min_lr_ratio(pl_module: pl.LightningModule) -> float | None:
    cfg = getattr(pl_module, "schedule_cfg", None)
    return getattr(cfg, "min_lr_ratio", None)


class LRCurveCheck(Callback):
    def __init__(
        self,
        filename: str = "lr_curve.png",
        start_tolerance: float = 0.1,
        min_lr_ratio: float | None = None,
        rtol: float = 1e-3,
    ) -> None:
        """At fit start: draw every step's lr up to ``trainer.max_steps`` and check its shape.

        Args:
            filename: PNG written into the run folder (``trainer.log_dir``); also logged to
                TensorBoard as the image ``checks/lr_curve``.
            start_tolerance: With a warmup, step 0's lr must be below this fraction of the peak.
            min_lr_ratio: Expected final lr / peak; null = the module's ``schedule_cfg.min_lr_ratio``
                (when neither is known, the end of the curve is not checked).
            rtol: Relative tolerance (of the peak) for "reaches the peak" and "ends at min_lr".
        """
        self.filename, self.start_tolerance = filename, start_tolerance
        self.min_lr_ratio, self.rtol = min_lr_ratio, rtol
        self.result: CheckItem | None = None
        self.curves: dict[str, np.ndarray] = {}
        self.curves_for: tuple[int, int] | None = None
        self.path: Path | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        self.curves_for = None
        self.result = self.check(trainer, pl_module)
        self.result.seconds = time.perf_counter() - start
        if self.result.status == "fail":
            raise SanityCheckError(self.result.detail)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> CheckItem:
        key, title = "lr_curve", "lr curve"
        if not trainer.optimizers or trainer.max_steps is None or trainer.max_steps <= 0:
            return CheckItem(key, title, "skip", "needs an optimizer and trainer.max_steps")
        opt = trainer.optimizers[0]
        self.curves = lr_curves(opt, trainer.lr_scheduler_configs, trainer.max_steps)
        self.curves_for = (id(opt), trainer.max_steps)  # lets the Checklist reuse them
        ratio = self.min_lr_ratio if self.min_lr_ratio is not None else _min_lr_ratio(pl_module)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank
        if trainer.is_global_zero:
            self._render(trainer, folder)
        by_problem: dict[str, list[str]] = {}  # one line per problem, naming the groups it hits
        for g, (name, lrs) in zip(opt.param_groups, self.curves.items()):
            peak = g.get("initial_lr")
            min_lr = None if ratio is None or peak is None else peak * ratio
            for p in lr_curve_problems(lrs, peak, min_lr, self.start_tolerance, self.rtol):
                by_problem.setdefault(p, []).append(name)
        problems = [f"{p} (group {', '.join(names)})" for p, names in by_problem.items()]
        s = curve_shape(next(iter(self.curves.values())))
        where = f" ({self.path})" if self.path else ""
        detail = (
            f"{s.start:.1e} -> peak {s.peak:.2e} at step {s.warmup_steps} -> {s.end:.2e} at step "
            f"{trainer.max_steps - 1}, never rising after warmup{where}"
        )
        if problems:
            return CheckItem(
                key,
                title,
                "fail",
                "lr curve check failed: " + "; ".join(problems) + f". See the curve{where}; fix the "
                "schedule (schedule.warmup_steps, min_lr_ratio, trainer.max_steps) or the scheduler code.",
            )
        return CheckItem(key, title, "pass", detail)

    def _render(self, trainer: pl.Trainer, folder: Path) -> None:
        fig = render_lr_curve(self.curves, f"lr schedule: {trainer.max_steps} steps")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.filename
        fig.savefig(self.path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("checks/lr_curve", fig, global_step=0, close=False)


# --------------------------------------------------------------------------------------------------
# Guards and the checklist
# --------------------------------------------------------------------------------------------------


def decay_groups_item(module: nn.Module, optimizer: torch.optim.Optimizer) -> CheckItem:
    """Two groups, embeddings and norms (and biases) at weight decay 0."""
    key, title = "decay_groups", "weight decay"
    wd = {id(p): g.get("weight_decay", 0.0) for g in optimizer.param_groups for p in g["params"]}
    exempt: dict[int, tuple[int, str]] = {}  # (kind, name): embeddings first in the message
    for mname, m in module.named_modules():
        kind = 0 if isinstance(m, nn.Embedding) else 1 if "norm" in type(m).__name__.lower() else 2
        for pname, p in m.named_parameters(recurse=False):
            if kind < 2 or pname == "bias":
                exempt.setdefault(id(p), (kind, f"{mname}.{pname}"))
    decayed = [name for pid, (_, name) in sorted(exempt.items(), key=lambda e: e[1]) if wd.get(pid, 0.0) > 0]
    if decayed:
        shown = _shorten(decayed, 4)
        return CheckItem(
            key,
            title,
            "fail",
            f"weight decay is applied to embedding/norm/bias parameters ({shown}); they must be in a "
            f"group with weight_decay 0 (decay weight matrices only, see gptmini.optim.param_groups).",
        )
    groups = []
    for i, g in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in g["params"])
        groups.append(
            f"{g.get('name', f'pg{i + 1}')} {g.get('weight_decay', 0.0):g} on {len(g['params'])} tensors ({_num(n)})"
        )
    detail = "; ".join(groups)
    if not any(g.get("weight_decay", 0.0) > 0 for g in optimizer.param_groups):
        return CheckItem(key, title, "note", f"no weight decay at all: {detail}")
    return CheckItem(key, title, "pass", f"{detail}; embeddings/norms at 0")


def clipping_item(clip_val: float | None, recipe: float = 1.0) -> CheckItem:
    key, title = "no_clipping", "grad clipping"
    if not clip_val:
        return CheckItem(
            key,
            title,
            "warn",
            "no gradient clipping: one bad batch can blow the run up; set trainer.gradient_clip_val: 1.0",
        )
    if float(clip_val) != recipe:
        return CheckItem(key, title, "note", f"norm {clip_val:g} (recipe: {recipe:g})")
    return CheckItem(key, title, "pass", f"norm {clip_val:g}")


def betas_item(optimizer: torch.optim.Optimizer) -> CheckItem:
    key, title = "betas", "betas"
    betas = optimizer.param_groups[0].get("betas")
    if betas is None:
        return CheckItem(key, title, "skip", f"{type(optimizer).__name__} has no betas")
    betas = tuple(float(b) for b in betas)
    if betas[1] >= 0.999:
        return CheckItem(
            key,
            title,
            "warn",
            f"{betas}: beta2 {betas[1]} adapts too slowly to loss spikes in LM pretraining; use (0.9, 0.95) "
            f"(model.optim.betas)",
        )
    return CheckItem(key, title, "pass" if betas == (0.9, 0.95) else "note", str(betas))


def peak_lr_item(module: nn.Module, optimizer: torch.optim.Optimizer, limit: float, small: int) -> CheckItem:
    key, title = "peak_lr", "peak lr"
    peak = max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
    n = sum(p.numel() for p in _unique_params(module))
    detail = f"{peak:.2e} for {_num(n)} parameters"
    if n <= small and peak > limit:
        return CheckItem(
            key,
            title,
            "warn",
            f"peak lr {peak:.2e} > {limit:g} for a model of {_num(n)} parameters (<= {_num(small)}): "
            f"expect loss spikes; lower model.optim.lr",
        )
    return CheckItem(key, title, "pass", detail)


def interval_item(scheduler_configs: Sequence[Any]) -> CheckItem:
    key, title = "scheduler_interval", "lr per step"
    if not scheduler_configs:
        return CheckItem(key, title, "note", "no lr scheduler: constant lr")
    bad = [c for c in scheduler_configs if c.interval != "step"]
    if bad:
        names = ", ".join(c.name or type(c.scheduler).__name__ for c in bad)
        return CheckItem(
            key,
            title,
            "fail",
            f"lr scheduler {names} steps once per epoch (interval='{bad[0].interval}'): warmup and decay "
            f"would advance once per epoch, not per optimizer step; return "
            f'{{"scheduler": ..., "interval": "step"}} from configure_optimizers.',
        )
    c = scheduler_configs[0]
    return CheckItem(
        key,
        title,
        "pass",
        f"{c.name or type(c.scheduler).__name__} steps every {c.frequency} optimizer step(s)",
    )


def warmup_items(
    lrs: np.ndarray, start_tolerance: float, lo: float, hi: float, peak_lr: float | None = None
) -> list[CheckItem]:
    """no_warmup (warn), warmup_total (fail) and the warmup fraction (note); ``peak_lr`` is the
    configured peak (null: unknown)."""
    s = curve_shape(lrs)
    n = len(lrs)
    items = []
    if _warmup_unfinished(s, n, peak_lr):
        items.append(
            CheckItem(
                "warmup_total",
                "warmup < total",
                "fail",
                f"warmup >= total steps: the lr is still rising at the last step ({n - 1}) and never "
                f"decays; set schedule.warmup_steps to 1-5% of trainer.max_steps ({n}).",
            )
        )
        return items
    items.append(CheckItem("warmup_total", "warmup < total", "pass", f"peak at step {s.warmup_steps} of {n}"))
    if s.warmup_steps == 0 or not _starts_near_zero(s, start_tolerance):
        items.append(
            CheckItem(
                "no_warmup",
                "warmup",
                "warn",
                f"no warmup: step 0 already runs at {s.start:.2e} (peak {s.peak:.2e}); Adam's first steps "
                f"are noisy, set schedule.warmup_steps to 1-5% of trainer.max_steps",
            )
        )
        return items
    frac = s.warmup_steps / n
    status = "pass" if lo <= frac <= hi else "note"
    items.append(
        CheckItem(
            "no_warmup",
            "warmup",
            status,
            f"{s.warmup_steps} steps = {frac:.1%} of {n} (want {lo:.0%}-{hi:.0%})",
        )
    )
    return items


def _shorten(names: list[str], n: int) -> str:
    """The first n names, and how many more there are."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def eval_mode_item(module: nn.Module) -> CheckItem:
    key, title = "eval_mode", "train mode"
    names = [name or "<root>" for name, m in module.named_modules() if not m.training]
    if names:
        shown = _shorten(names, 5)
        return CheckItem(
            key,
            title,
            "fail",
            f"training would run in eval mode: {len(names)} module(s) are in eval mode ({shown}); "
            f"something called .eval() (in __init__, setup or a hook) without .train() afterwards.",
        )
    return CheckItem(key, title, "pass", f"all {sum(1 for _ in module.modules())} modules in training mode")


class Checklist(Callback):
    def __init__(
        self,
        disable: list[GuardName] | None = None,
        peak_lr_limit: float = 1e-3,
        small_model_params: int = 20_000_000,
        warmup_range: tuple[float, float] = (0.01, 0.05),
        start_tolerance: float = 0.1,
        max_epochs: float = 4.0,
    ) -> None:
        """The recipe's guards (before training) and the pre-training checklist (at step 0).

        At fit start every guard is evaluated on the real optimizer, scheduler and trainer: errors
        stop the run, warnings are emitted. At the first training batch the batch checks among the
        callbacks (:class:`InitialLossCheck`, :class:`OverfitCheck`) run, and the checklist is
        printed with a tick or a cross per item.

        Args:
            disable: Guards to turn off (each is logged as disabled): peak_lr, decay_groups,
                no_warmup, no_clipping, betas, scheduler_interval, warmup_total, eval_mode.
            peak_lr_limit: Warn when the peak lr is above this for a small model.
            small_model_params: "Small model" for ``peak_lr``: at most this many parameters.
            warmup_range: Warmup as a fraction of trainer.max_steps that gets a tick.
            start_tolerance: A warmup must start below this fraction of the peak lr.
            max_epochs: Passes over the training tokens that still get a tick (repeating data up to
                ~4 epochs is about as good as fresh data; far more and the model memorises it).
        """
        self.disable = list(disable or [])
        unknown = sorted(set(self.disable) - set(GUARDS))
        if unknown:
            raise ValueError(f"Checklist.disable: unknown guard(s) {unknown}; choose from {list(GUARDS)}.")
        self.peak_lr_limit, self.small_model_params = peak_lr_limit, small_model_params
        self.warmup_range, self.start_tolerance, self.max_epochs = (
            tuple(warmup_range),
            start_tolerance,
            max_epochs,
        )
        self.items: dict[str, CheckItem] = {}
        self.text = ""
        self.guard_seconds = 0.0
        self._started = False

    # -- guards ---------------------------------------------------------------------------------
    def _apply(self, trainer: pl.Trainer, items: list[CheckItem]) -> None:
        """Record items; switched-off guards become 'off', warnings are emitted, failures raised."""
        failures = []
        for item in items:
            if item.key in self.disable:
                item = CheckItem(item.key, item.title, "off", f"guard '{item.key}' disabled by config")
                rank_zero_warn(f"[checks] guard '{item.key}' is disabled by config (Checklist.disable).")
            elif item.status == "warn":
                rank_zero_warn(f"[checks] {item.detail}")
            elif item.status == "fail":
                failures.append(item.detail)
            self.items[item.key] = item
        if failures:
            raise SanityCheckError("pre-training guard failed: " + " | ".join(failures))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.items, self.text, self._started = {}, "", False
        start = time.perf_counter()
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
        self.guard_seconds = time.perf_counter() - start
        self._apply(trainer, items)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, [eval_mode_item(pl_module)])

    # -- the checklist --------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started:
            return
        self._started = True
        checks = [cb for cb in trainer.callbacks if isinstance(cb, _FirstBatchCheck)]
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
        lines.append(f"  (guards, items without a time: {self.guard_seconds:.2f}s)")
        self.text = "\n".join(["Pre-training checklist (gptmini.checks):", *lines])
        _say(trainer, self.text)
        fails = [item.detail for item in ordered if item.status == "fail"]
        if fails:
            raise SanityCheckError(" | ".join(fails))

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
                    f"device(s)) = {_num(max_steps * per_step)} tokens = {epochs:.3g} epoch(s) of "
                    f"{_num(train_tokens)} training tokens (1 epoch = {one_epoch:,.0f} steps)"
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
            n = cb._every_n_train_steps
            if n:
                parts.append(f"checkpoint every {n} steps" + (" + last" if cb.save_last else ""))
                if max_steps > 0 and n > max_steps:
                    status = "note"
            else:
                parts.append("checkpoint after validation/epoch" + (" + last" if cb.save_last else ""))
        return CheckItem("frequency", "logging/ckpt", status, ", ".join(parts))
