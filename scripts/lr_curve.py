"""Draw and check the learning-rate schedule of any config, without training (seconds, no data needed).

    python scripts/lr_curve.py --config configs/10m.yaml
    python scripts/lr_curve.py --config configs/tiny.yaml --out /tmp/tiny_lr.png
    python scripts/lr_curve.py --config configs/10m.yaml -- --trainer.max_steps=20000 --model.schedule.warmup_steps=400

The config is parsed exactly as ``gptmini.cli fit`` parses it (anything after ``--`` is passed on as
overrides); the module's own ``configure_optimizers`` builds the real optimizer and scheduler, and a
copy of the scheduler is stepped to ``trainer.max_steps``, as :class:`gptmini.callbacks.lr_curve.LRCurveCheck`
does at fit start. It writes the PNG, prints the shape checks and the warmup/peak-lr recipe checks, and
exits 1 when the curve has a shape error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.lr_curve import curve_shape, lr_curve_problems, lr_curves, render_lr_curve
from gptmini.callbacks.recipe_checks import interval_item, peak_lr_item, warmup_items
from gptmini.callbacks.report import CheckItem
from gptmini.cli import make_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="config file(s), as for fit")
    parser.add_argument("--out", default=None, help="PNG path (default: lr_curve_<config>.png here)")
    parser.add_argument("overrides", nargs="*", help="CLI overrides after --, e.g. --trainer.max_steps=1000")
    args = parser.parse_args(argv)

    cli_args = [a for c in args.config for a in ("--config", c)] + args.overrides
    # Builds trainer, module and datamodule objects only: no data is read, nothing is trained.
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from cli_args only
    cli = make_cli(cli_args, run=False)
    trainer, module = cli.trainer, cli.model
    module.trainer = trainer  # configure_optimizers reads trainer.max_steps and the precision
    optimizers, scheduler_configs = _init_optimizers_and_lr_schedulers(module)
    max_steps = trainer.max_steps
    curves = lr_curves(optimizers[0], scheduler_configs, max_steps)

    out = Path(args.out or f"lr_curve_{Path(args.config[-1]).stem}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    render_lr_curve(curves, f"{' + '.join(Path(c).name for c in args.config)}: {max_steps} steps").savefig(
        out
    )

    ratio = getattr(getattr(module, "schedule_cfg", None), "min_lr_ratio", None)
    problems = []
    for group, (name, lrs) in zip(optimizers[0].param_groups, curves.items()):
        peak = group.get("initial_lr")
        min_lr = None if ratio is None or peak is None else peak * ratio
        problems += [f"[{name}] {p}" for p in lr_curve_problems(lrs, peak, min_lr)]
    lrs = next(iter(curves.values()))
    s = curve_shape(lrs)
    print(f"lr curve -> {out}")
    for step in sorted(
        {0, s.warmup_steps // 2, s.warmup_steps, (s.warmup_steps + max_steps) // 2, max_steps - 1}
    ):
        print(f"  step {step:>7}: {lrs[step]:.3e}")
    # The config's own Checklist settings (thresholds, disabled recipe checks), else the defaults.
    cl = next((cb for cb in trainer.callbacks if isinstance(cb, Checklist)), None) or Checklist()
    peak = optimizers[0].param_groups[0].get("initial_lr")
    warmup = warmup_items(lrs, cl.start_tolerance, *cl.warmup_range, peak_lr=peak)
    items = [interval_item(scheduler_configs), *warmup]
    items.append(peak_lr_item(module, optimizers[0], cl.peak_lr_limit, cl.small_model_params))
    items = [
        CheckItem(i.key, i.title, "off", "disabled by config") if i.key in cl.disable else i for i in items
    ]
    for item in items:
        print(item.line())
    shape = CheckItem(
        "lr_curve",
        "shape",
        "fail" if problems else "pass",
        "; ".join(problems) or "starts near 0, peaks at the lr, only decays, ends at min_lr",
    )
    print(shape.line())
    bad = bool(problems) or any(i.status == "fail" for i in items)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
