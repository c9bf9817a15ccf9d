"""Draw and check the learning-rate schedule of any config, without training (seconds, no data needed).

    python scripts/plot_lr_schedule.py --config configs/10m.yaml
    python scripts/plot_lr_schedule.py --config configs/tiny.yaml --out /tmp/tiny_lr.png
    python scripts/plot_lr_schedule.py --config configs/10m.yaml -- --trainer.max_steps=20000 --model.schedule.warmup_steps=400

The config is parsed exactly as ``gptmini.cli fit`` parses it (anything after ``--`` is passed on as
overrides); the module's own ``configure_optimizers`` builds the real optimizer and scheduler, and a
copy of the scheduler is stepped to ``trainer.max_steps``. The checks are the run's own, called here:
:class:`gptmini.callbacks.lr_curve.LRCurveCheck` (the curve's shape) and the recipe checks of
:class:`gptmini.callbacks.checklist.Checklist`, with the config's settings for both. It writes the
PNG, prints the checks, and exits 1 when one fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import CheckItem
from gptmini.callbacks.lr_curve import LRCurveCheck
from gptmini.cli import make_cli
from gptmini.train.compat import init_optimizers


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
    # As Lightning does at fit start: the trainer holds the module's optimizer and schedulers.
    trainer.strategy.optimizers, trainer.strategy.lr_scheduler_configs = init_optimizers(module)
    max_steps = trainer.max_steps

    out = Path(args.out or f"lr_curve_{Path(args.config[-1]).stem}.png")
    # The config's own check settings (tolerances, disabled recipe checks), else the defaults.
    lr_check = next((cb for cb in trainer.callbacks if isinstance(cb, LRCurveCheck)), None) or LRCurveCheck()
    checklist = next((cb for cb in trainer.callbacks if isinstance(cb, Checklist)), None) or Checklist()
    result = lr_check.check(trainer, module, png=out)
    lrs = next(iter(lr_check.curves.values()))
    print(f"lr curve -> {out}")
    warmup = int(lrs.argmax())
    for step in sorted({0, warmup // 2, warmup, (warmup + max_steps) // 2, max_steps - 1}):
        print(f"  step {step:>7}: {lrs[step]:.3e}")
    items = [checklist.switched_off(i) for i in checklist.recipe_items(trainer, module)]
    items.append(CheckItem(result.key, "shape", result.status, result.detail))
    for item in items:
        print(item.line())
    return 1 if any(i.status == "fail" for i in items) else 0


if __name__ == "__main__":
    sys.exit(main())
