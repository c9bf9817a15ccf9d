"""The chapter's four exercises as data: the setting each sweeps, its values, budget, plots and table
columns (run by :mod:`gptmini.tools.exercises`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gptmini.tools.curves import Series, last, tail_mean


@dataclass
class Column:
    header: str
    value: Callable[[dict[str, Series], dict[str, float]], float | None]
    fmt: str = "{:.4f}"


@dataclass
class Panel:
    title: str
    tag: str  # a scalar tag, or a prefix ending in "/" (the first tag under it is plotted)
    logy: bool = False
    smooth: float = 0.0  # EMA factor for noisy per-step curves; 0 = raw


@dataclass
class Exercise:
    name: str
    title: str
    setting: str  # the swept key, as on the gptmini command line
    values: list
    steps: int
    fixed: list[str] = field(default_factory=list)  # extra overrides for every variant
    panels: list[Panel] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    n_val: int = 5  # at most this many validations per run, the last at the final step
    param_norm: bool = False

    def label(self, value) -> str:
        short = self.setting.rsplit(".", 1)[-1]
        if isinstance(value, float):
            return f"{short}={value:g}"
        if isinstance(value, (list, tuple)):
            return f"{short}=({', '.join(f'{v:g}' for v in value)})"
        return f"{short}={value}"


def scalar_tag(scalars: dict[str, Series], tag: str) -> str | None:
    if not tag.endswith("/"):
        return tag if tag in scalars else None
    under = sorted(t for t in scalars if t.startswith(tag))
    return under[0] if under else None


def _get(
    tag: str, fn: Callable[[Series], float]
) -> Callable[[dict[str, Series], dict[str, float]], float | None]:
    def value(scalars: dict[str, Series], extra: dict[str, float]) -> float | None:
        t = scalar_tag(scalars, tag)
        return fn(scalars[t]) if t is not None else None

    return value


def _first_below(threshold: float) -> Callable[[Series], float]:
    def fn(series: Series) -> float:
        return next((s for s, v in zip(*series) if v < threshold), math.nan)

    return fn


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in [
        Exercise(
            name="lr",
            title="peak lr on a single-batch overfit",
            setting="model.optim.lr",
            values=[1e-3, 6e-4, 3e-4, 1e-4],
            steps=200,
            # One fixed batch; validation would only measure memorisation, so skip it.
            fixed=["--trainer.overfit_batches=1", "--trainer.limit_val_batches=0"],
            panels=[Panel("train loss (one batch)", "train/loss", logy=True), Panel("learning rate", "lr/")],
            columns=[
                Column("final train loss", _get("train/loss", last)),
                Column("min train loss", _get("train/loss", lambda s: min(s[1]))),
                Column("first step < 0.5", _get("train/loss", _first_below(0.5)), "{:.0f}"),
            ],
            n_val=0,
        ),
        Exercise(
            name="min_lr",
            title="min_lr / peak_lr at the same step budget",
            setting="model.schedule.min_lr_ratio",
            values=[0.0, 0.1, 0.5],
            steps=400,
            panels=[
                Panel("train loss (EMA 0.9)", "train/loss", smooth=0.9),
                Panel("val loss", "val/loss"),
                Panel("learning rate", "lr/"),
            ],
            columns=[
                Column("final val loss", _get("val/loss", last)),
                Column("best val loss", _get("val/loss", lambda s: min(s[1]))),
                Column("train loss (last 10%)", _get("train/loss", tail_mean)),
                Column("final lr", _get("lr/", last), "{:.2e}"),
            ],
        ),
        Exercise(
            name="betas",
            title="AdamW betas",
            setting="model.optim.betas",
            values=[[0.9, 0.999], [0.9, 0.95]],
            steps=1000,
            panels=[
                Panel("train loss (EMA 0.9)", "train/loss", smooth=0.9),
                Panel("val loss", "val/loss"),
                Panel("grad norm (before clipping)", "train/grad_norm", logy=True, smooth=0.9),
            ],
            columns=[
                Column("train loss (last 10%)", _get("train/loss", tail_mean)),
                Column("final val loss", _get("val/loss", last)),
                Column("max grad norm", _get("train/grad_norm", lambda s: max(s[1])), "{:.3f}"),
            ],
        ),
        Exercise(
            name="wd",
            title="weight decay",
            setting="model.optim.weight_decay",
            values=[0.0, 0.1, 0.5],
            steps=400,
            panels=[
                Panel("train loss (EMA 0.9)", "train/loss", smooth=0.9),
                Panel("val loss", "val/loss"),
                Panel("sum(p.norm() for p in model.parameters())", "train/param_norm"),
            ],
            columns=[
                Column("final val loss", _get("val/loss", last)),
                Column("train loss (last 10%)", _get("train/loss", tail_mean)),
                Column("param norm", lambda scalars, extra: extra["param_norm"], "{:.2f}"),
            ],
            param_norm=True,
        ),
    ]
}


