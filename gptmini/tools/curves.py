"""Read a run's TensorBoard event files and draw its curves to a PNG.

``python scripts/plot_curves.py runs/tiny/version_0 -o docs/curves.png`` draws loss, learning rate,
gradient norm and speed (whichever the run logged) from the event files themselves, so the picture
is exactly what ``tensorboard --logdir runs`` shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

Series = tuple[list[int], list[float]]


def read_scalars(logdir: str | Path) -> dict[str, Series]:
    """Every scalar tag in the event files of ``logdir`` (one run's folder) -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    if not any(logdir.glob("events.out.tfevents.*")):
        raise ValueError(
            f"{logdir} holds no TensorBoard event files; give a run folder such as runs/tiny/version_0."
        )
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0 = keep every point
    acc.Reload()
    out: dict[str, Series] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = ([e.step for e in events], [e.value for e in events])
    return out


def style_axis(ax, title: str, logy: bool) -> None:
    """Shared look of every curve panel: step on x, readable ticks on a log y axis, a legend."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def last(series: Series) -> float:
    return series[1][-1]


def tail_mean(series: Series, frac: float = 0.1) -> float:
    """Mean of the last ``frac`` of the logged points (at least one): a less noisy "final" value."""
    values = series[1]
    n = max(1, int(len(values) * frac))
    return sum(values[-n:]) / n


def _speed_tags(scalars: dict[str, Series]) -> list[str]:
    # One speed curve: the whole job's tokens/s when logged, else whatever throughput/ holds.
    if "throughput/tokens_per_sec" in scalars:
        return ["throughput/tokens_per_sec"]
    return sorted(t for t in scalars if t.startswith("throughput/"))


def _panels(scalars: dict[str, Series]) -> list[tuple[str, list[str], bool]]:
    """(title, tags, log-y) for each panel the run has data for, in reading order."""
    tags = sorted(scalars)
    panels = [
        ("loss", [t for t in ("train/loss", "val/loss") if t in scalars], False),
        (
            "learning rate",
            [t for t in tags if t == "lr" or t.startswith("lr/") or t.startswith("lr-")],
            False,
        ),
        ("gradient norm (before clipping)", [t for t in ("train/grad_norm",) if t in scalars], True),
        ("throughput", _speed_tags(scalars), False),
    ]
    return [p for p in panels if p[1]]


def plot_run(logdir: str | Path, out: str | Path, title: str | None = None, dpi: int = 80) -> Path:
    """Draw the run in ``logdir`` to ``out`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(logdir)
    panels = _panels(scalars)
    if not panels:
        raise ValueError(f"{logdir} holds none of train/loss, val/loss, lr*, train/grad_norm, throughput/*.")
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, tags, logy) in zip(axes.flat, panels):
        for tag in tags:
            steps, values = scalars[tag]
            ax.plot(steps, values, label=tag, marker="o" if len(steps) < 20 else None, markersize=3)
        style_axis(ax, name, logy)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title or str(logdir))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logdir", help="a run folder holding event files, e.g. runs/tiny/version_0")
    p.add_argument("-o", "--out", default="curves.png", help="PNG to write (default: curves.png)")
    p.add_argument("--title", default=None, help="figure title (default: the run folder)")
    p.add_argument("--dpi", type=int, default=80, help="resolution; 80 keeps the PNG small")
    a = p.parse_args(args)
    try:
        print(plot_run(a.logdir, a.out, a.title, a.dpi))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
