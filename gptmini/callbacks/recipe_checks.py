"""The recipe checks, against the recipe's known failure points: one function per checklist item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gptmini.callbacks.checks_shared import CheckItem, human_count
from gptmini.callbacks.lr_curve import curve_shape, starts_near_zero, warmup_unfinished_problem
from gptmini.core.model import count_params
from gptmini.core.recipe import BETAS, warmup_advice

# --------------------------------------------------------------------------------------------------
# The recipe checks, one per checklist item
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
            f"group with weight_decay 0 (decay weight matrices only, see gptmini.core.optim.param_groups).",
        )
    groups = []
    for i, g in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in g["params"])
        groups.append(
            f"{g.get('name', f'pg{i + 1}')} {g.get('weight_decay', 0.0):g} on {len(g['params'])} tensors ({human_count(n)})"
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
            f"{betas}: beta2 {betas[1]} adapts too slowly to loss spikes in LM pretraining; use {BETAS} "
            f"(model.optim.betas)",
        )
    return CheckItem(key, title, "pass" if betas == BETAS else "note", str(betas))


def peak_lr_item(module: nn.Module, optimizer: torch.optim.Optimizer, limit: float, small: int) -> CheckItem:
    key, title = "peak_lr", "peak lr"
    peak = max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
    n = count_params(module)
    detail = f"{peak:.2e} for {human_count(n)} parameters"
    if n <= small and peak > limit:
        return CheckItem(
            key,
            title,
            "warn",
            f"peak lr {peak:.2e} > {limit:g} for a model of {human_count(n)} parameters (<= {human_count(small)}): "
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
    unfinished = warmup_unfinished_problem(s, n, peak_lr)
    if unfinished:
        items.append(CheckItem("warmup_total", "warmup < total", "fail", unfinished + "."))
        return items
    items.append(CheckItem("warmup_total", "warmup < total", "pass", f"peak at step {s.warmup_steps} of {n}"))
    if s.warmup_steps == 0 or not starts_near_zero(s, start_tolerance):
        items.append(
            CheckItem(
                "no_warmup",
                "warmup",
                "warn",
                f"no warmup: step 0 already runs at {s.start:.2e} (peak {s.peak:.2e}); Adam's first steps "
                f"are noisy, {warmup_advice()}",
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
