"""The chapter's four exercises (§8), one command each.

    python -m gptmini.tools.exercises lr       # lr sweep on a single-batch overfit, 200 steps
    python -m gptmini.tools.exercises min_lr   # min_lr / peak_lr = 0.0, 0.1, 0.5 on the same budget
    python -m gptmini.tools.exercises betas    # (0.9, 0.999) vs (0.9, 0.95), 1000 steps
    python -m gptmini.tools.exercises wd       # weight decay 0.0, 0.1, 0.5: val loss and parameter norm
    python -m gptmini.tools.exercises all

Each variant is an ordinary gptmini run, built by the same LightningCLI as ``gptmini.cli fit`` from
the same YAML configs plus a few overrides (the swept setting, the step budget, logging), and trained
by a Lightning ``Trainer``. By default the configs are ``configs/tiny.yaml`` + ``configs/exercises_cpu.yaml``
(a CPU preset, minutes on 2 cores); ``--config configs/10m.yaml`` runs the full-size model. Any
further ``--section.key=value`` argument is passed on to every variant (e.g. ``--data.batch_size=8``).

Each exercise writes, under ``--out`` (default ``runs/exercises``) in a new ``<exercise>/version_N``:
one TensorBoard run per variant (``tensorboard --logdir runs/exercises/lr/version_0`` overlays them),
``<exercise>.png`` with the variants side by side, and ``<exercise>.md``, the table it prints.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gptmini.tools.curves import Series, read_scalars, style_axis
from gptmini.tools.exercise_table import EXERCISES, Exercise, scalar_tag

# torch and Lightning are imported by the first run (run_variant), not here: --help takes 0.05 s, not 3.7.

# Shipped inside the package (configs/ at the repo root links here), so an installed copy finds them.
CONFIG_DIR = Path(str(resources.files("gptmini") / "configs"))
DEFAULT_CONFIGS = [CONFIG_DIR / "tiny.yaml", CONFIG_DIR / "exercises_cpu.yaml"]


# -- running ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    logdir: Path
    scalars: dict[str, Series]
    extra: dict[str, float]
    seconds: float


@dataclass
class ExerciseResult:
    exercise: str
    out_dir: Path
    runs: list[RunResult]
    table: str
    png: Path
    series_per_panel: list[int]  # lines drawn in each panel of the PNG


def _next_version(root: Path) -> Path:
    """A fresh ``root/version_N``: a rerun never writes into (or mixes its curves with) an old one."""
    n = 0
    while (root / f"version_{n}").exists():
        n += 1
    return root / f"version_{n}"


def _overrides(ex: Exercise, value, steps: int, warmup: int, save_dir: Path, label: str) -> list[str]:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        }
    ]
    if ex.param_norm:
        callbacks.append({"class_path": "gptmini.callbacks.param_norm.ParamNorm"})
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(save_dir), "name": "", "version": label, "default_hp_metric": False},
    }
    args = [
        f"--trainer.max_steps={steps}",
        f"--model.schedule.warmup_steps={warmup}",
        f"--trainer.log_every_n_steps={max(1, steps // 100)}",
        # The exercise's callbacks replace the config's: no checkpoints, no pre-flight checks per
        # variant, only what the comparison needs.
        f"--trainer.callbacks={json.dumps(callbacks)}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        f"--{ex.setting}={json.dumps(value)}",
    ]
    if ex.n_val > 0:
        # Validate n_val times, the last at the final step; epochs do not matter here.
        interval = max(1, math.ceil(steps / ex.n_val))
        while steps % interval:
            interval += 1
        args += [f"--trainer.val_check_interval={interval}", "--trainer.check_val_every_n_epoch=null"]
    return args + ex.fixed


def run_variant(
    ex: Exercise,
    value,
    configs: list[str | Path],
    extra_args: list[str],
    steps: int,
    warmup: int,
    save_dir: Path,
) -> RunResult:
    from gptmini.callbacks.param_norm import param_norm
    from gptmini.cli import make_cli
    from gptmini.train.compat import attribute_docstrings_off

    label = ex.label(value)
    args = [a for c in configs for a in ("--config", str(c))]
    # The user's overrides first, then the exercise's: the swept setting and budget must win.
    args += extra_args + _overrides(ex, value, steps, warmup, save_dir, label)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), attribute_docstrings_off():
        # Lightning warns when args= is used while sys.argv has arguments (ours, not the CLI's).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = make_cli(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - t0
    logdir = Path(cli.trainer.logger.log_dir)
    extra = {"param_norm": param_norm(cli.model.model)}
    return RunResult(label, logdir, read_scalars(logdir), extra, seconds)


def markdown_table(ex: Exercise, runs: list[RunResult]) -> str:
    headers = [ex.setting.rsplit(".", 1)[-1]] + [c.header for c in ex.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for run in runs:
        cells = [run.label.split("=", 1)[1]]
        for col in ex.columns:
            v = col.value(run.scalars, run.extra)
            cells.append("—" if v is None or (isinstance(v, float) and math.isnan(v)) else col.fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ema(values: list[float], factor: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else factor * acc + (1 - factor) * v
        out.append(acc)
    return out


def plot(ex: Exercise, runs: list[RunResult], out: Path, subtitle: str = "") -> list[int]:
    """The variants side by side, one panel per quantity; returns the number of lines per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ex.panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    counts = []
    for ax, panel in zip(axes[0], ex.panels):
        for run in runs:
            tag = scalar_tag(run.scalars, panel.tag)
            if tag is None:
                continue
            steps, values = run.scalars[tag]
            if panel.smooth:
                values = _ema(values, panel.smooth)
            ax.plot(steps, values, label=run.label, marker="o" if len(steps) <= 10 else None, markersize=3)
        counts.append(len(ax.get_lines()))
        style_axis(ax, panel.title, panel.logy)
    fig.suptitle(f"{ex.title} {subtitle}".strip())
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return counts


def _config_file(path: str | Path) -> Path:
    """``path``, or the shipped preset of that name (``configs/10m.yaml`` works from an installed copy,
    where there is no ``configs/`` folder next to the user)."""
    if Path(path).is_file():
        return Path(path)
    shipped = CONFIG_DIR / Path(path).name
    if shipped.is_file():
        return shipped
    raise ValueError(
        f"config file {path} does not exist; give --config with an existing YAML file or a shipped "
        f"preset ({', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))})."
    )


def run_exercise(
    name: str,
    configs: list[str | Path] | None = None,
    extra_args: list[str] | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    out: str | Path = "runs/exercises",
    verbose: bool = True,
) -> ExerciseResult:
    """Run every variant of exercise ``name``; write TensorBoard runs, the PNG and the table."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {', '.join(EXERCISES)} or 'all'.")
    ex = EXERCISES[name]
    configs = [_config_file(c) for c in configs] if configs else list(DEFAULT_CONFIGS)
    steps = ex.steps if steps is None else steps
    if steps < 2:
        raise ValueError(f"--steps must be >= 2, got {steps}.")
    # 5% warmup by default: inside the chapter's 1-5% rule and valid for any budget (the configs'
    # own warmup, e.g. 1000 steps for 10m, can exceed a short exercise's whole budget).
    warmup = max(1, round(0.05 * steps)) if warmup_steps is None else warmup_steps
    if not 0 <= warmup < steps:
        raise ValueError(f"--warmup_steps must be in [0, steps={steps}), got {warmup}.")
    out_dir = _next_version(Path(out) / ex.name)
    out_dir.mkdir(parents=True)
    runs = []
    for value in ex.values:
        run = run_variant(ex, value, configs, list(extra_args or []), steps, warmup, out_dir)
        runs.append(run)
        if verbose:
            print(
                f"[{ex.name}] {run.label}: {steps} steps in {run.seconds:.1f} s -> {run.logdir}", flush=True
            )
    table = markdown_table(ex, runs)
    png = out_dir / f"{ex.name}.png"
    counts = plot(ex, runs, png, subtitle=f"({steps} steps, {', '.join(Path(c).stem for c in configs)})")
    (out_dir / f"{ex.name}.md").write_text(f"{ex.title}, {steps} steps\n\n{table}\n")
    if verbose:
        print(f"\n{ex.title}, {steps} steps ({' + '.join(str(c) for c in configs)})\n\n{table}\n")
        print(f"figure: {png}\ntensorboard --logdir {out_dir}\n", flush=True)
    return ExerciseResult(ex.name, out_dir, runs, table, png, counts)


def main(args: list[str] | None = None) -> list[ExerciseResult]:
    p = argparse.ArgumentParser(
        prog="python -m gptmini.tools.exercises",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("exercise", choices=[*EXERCISES, "all"])
    p.add_argument(
        "--config",
        action="append",
        default=None,
        help="a gptmini YAML config, repeatable (default: configs/tiny.yaml + configs/exercises_cpu.yaml)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per variant (default: lr 200, min_lr 400, betas 1000, wd 400)",
    )
    p.add_argument(
        "--warmup_steps", type=int, default=None, help="warmup per variant (default: 5%% of steps)"
    )
    p.add_argument("--out", default="runs/exercises", help="output root (default: runs/exercises)")
    known, extra = p.parse_known_args(args)
    bad = [a for a in extra if not a.startswith("--") and "=" not in a]
    if bad:
        p.error(f"unexpected arguments {bad}; pass config overrides as --section.key=value")
    names = list(EXERCISES) if known.exercise == "all" else [known.exercise]
    try:
        return [
            run_exercise(n, known.config, extra, known.steps, known.warmup_steps, known.out) for n in names
        ]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
