"""The whole learning-rate schedule, rendered (PNG + TensorBoard) and shape-checked at fit start."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from gptmini.callbacks.checks_shared import CheckItem, SanityCheckError
from gptmini.callbacks.interface import recipe_module
from gptmini.core.recipe import START_TOLERANCE, warmup_advice
from gptmini.train.ranks import run_dir

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


def starts_near_zero(s: CurveShape, start_tolerance: float) -> bool:
    """Below start_tolerance x peak, or one linear-warmup increment (peak / warmup) for warmups too
    short to start lower."""
    return s.start <= max(start_tolerance, 1.0 / max(s.warmup_steps, 1)) * s.peak * (1 + 1e-6)


def _warmup_unfinished(s: CurveShape, n: int, peak_lr: float | None, rtol: float = 1e-3) -> bool:
    """Still warming up at the last step: the peak is the last step and below the configured peak
    (reaching it exactly at the last step, warmup = max_steps - 1, is a zero-length decay, allowed)."""
    if n <= 1 or s.warmup_steps < n - 1 or s.start >= s.peak:
        return False
    return peak_lr is None or s.peak < peak_lr * (1 - rtol)


def warmup_unfinished_problem(s: CurveShape, n: int, peak_lr: float | None, rtol: float = 1e-3) -> str | None:
    """The curve's form of the rule ``model.schedule.warmup_steps < trainer.max_steps`` (whose config form is
    :func:`gptmini.core.schedule.validate_horizon`), for any scheduler: the one wording both the lr
    curve check and the checklist's ``warmup_total`` item use."""
    if not _warmup_unfinished(s, n, peak_lr, rtol):
        return None
    return (
        f"warmup >= total steps: the lr is still rising at the last step ({n - 1}) and never decays; "
        f"{warmup_advice(n)}"
    )


def lr_curve_problems(
    lrs: np.ndarray,
    peak_lr: float | None,
    min_lr: float | None,
    start_tolerance: float = START_TOLERANCE,
    rtol: float = 1e-3,
) -> list[str]:
    """Shape checks: starts near 0, peaks at ``peak_lr`` at the end of warmup, never rises after it,
    ends at ``min_lr``. Returns the problems (empty = healthy)."""
    s = curve_shape(lrs)
    n = len(lrs)
    problems = []
    if s.warmup_steps > 0 and not starts_near_zero(s, start_tolerance):
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
    unfinished = warmup_unfinished_problem(s, n, peak_lr, rtol)
    if unfinished:
        problems.append(unfinished)
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
    module = recipe_module(pl_module)
    return module.schedule_cfg.min_lr_ratio if module is not None else None


class LRCurveCheck(Callback):
    def __init__(
        self,
        filename: str = "lr_curve.png",
        start_tolerance: float = START_TOLERANCE,
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

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, png: Path | None = None) -> CheckItem:
        """Draw and check the curve of ``trainer.optimizers[0]``; ``png``: write the picture there
        only (``scripts/plot_lr_schedule.py``), instead of the run folder and TensorBoard."""
        key, title = "lr_curve", "lr curve"
        if not trainer.optimizers or trainer.max_steps is None or trainer.max_steps <= 0:
            return CheckItem(key, title, "skip", "needs an optimizer and trainer.max_steps")
        opt = trainer.optimizers[0]
        self.curves = lr_curves(opt, trainer.lr_scheduler_configs, trainer.max_steps)
        self.curves_for = (id(opt), trainer.max_steps)  # lets the Checklist reuse them
        ratio = self.min_lr_ratio if self.min_lr_ratio is not None else _min_lr_ratio(pl_module)
        if png is not None:
            self._render(trainer, png, log=False)
        else:
            folder = run_dir(trainer)  # a collective (gptmini.train.ranks): every rank, then rank 0 draws
            if trainer.is_global_zero:
                self._render(trainer, folder / self.filename)
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
                "schedule (model.schedule.warmup_steps, model.schedule.min_lr_ratio, trainer.max_steps) or "
                "the scheduler code.",
            )
        return CheckItem(key, title, "pass", detail)

    def _render(self, trainer: pl.Trainer, path: Path, log: bool = True) -> None:
        fig = render_lr_curve(self.curves, f"lr schedule: {trainer.max_steps} steps")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        fig.savefig(self.path)
        for logger in trainer.loggers if log else []:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("checks/lr_curve", fig, global_step=0, close=False)
