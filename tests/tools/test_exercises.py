"""Each §8 exercise runs at a micro size: TensorBoard runs, a PNG with one line per variant, a table."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from gptmini.tools import exercises as exe
from gptmini.tools.curves import read_scalars
from tests.conftest import TINY_LR, tiny_cli_args


@pytest.fixture
def micro(tmp_path, corpus_file, data_cache) -> list[str]:
    """Overrides for the micro size: the conftest's tiny model and corpus, 2 val batches."""
    args = tiny_cli_args(tmp_path, corpus_file, data_cache)
    assert args[:2] == ["fit", "--config"]
    return args[3:] + ["--trainer.limit_val_batches=2"]


def table_rows(table: str) -> list[dict[str, str]]:
    lines = table.splitlines()
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) == {"-"}
    return [dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def check_outputs(result: exe.ExerciseResult, n_variants: int, n_panels: int) -> list[dict[str, str]]:
    assert result.png.is_file() and result.png.suffix == ".png"
    height, width = matplotlib.image.imread(result.png).shape[:2]
    assert width > height > 100  # panels side by side
    assert result.series_per_panel == [n_variants] * n_panels
    assert (result.out_dir / f"{result.exercise}.md").read_text().strip().endswith(result.table)
    for run in result.runs:  # one TensorBoard run each, readable back
        assert run.logdir.parent == result.out_dir
        assert "train/loss" in read_scalars(run.logdir)
    rows = table_rows(result.table)
    assert len(rows) == n_variants
    return rows


def swept_value(run: exe.RunResult, key: str):
    cfg = yaml.safe_load((run.logdir / "config.yaml").read_text())
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_lr_sweep_cli(micro, tmp_path, capsys):
    tiny = str(exe.CONFIG_DIR / "tiny.yaml")
    (result,) = exe.main(["lr", "--steps=12", f"--out={tmp_path / 'ex'}", f"--config={tiny}", *micro])
    rows = check_outputs(result, n_variants=4, n_panels=2)
    assert [swept_value(r, "model.optim.lr") for r in result.runs] == [1e-3, 6e-4, 3e-4, 1e-4]
    losses = [float(r["final train loss"]) for r in rows]
    assert losses[0] < losses[-1]  # on one batch, the largest lr goes down fastest
    assert result.table in capsys.readouterr().out
    # A rerun never mixes its curves into the first run's folder.
    assert result.out_dir.name == "version_0"
    assert exe._next_version(result.out_dir.parent).name == "version_1"


def test_min_lr(micro, tmp_path):
    result = exe.run_exercise(
        "min_lr", [exe.CONFIG_DIR / "tiny.yaml"], micro, steps=8, out=tmp_path, verbose=False
    )
    rows = check_outputs(result, n_variants=3, n_panels=3)
    for row, ratio in zip(rows, [0.0, 0.1, 0.5]):
        assert math.isclose(float(row["final lr"]), TINY_LR * ratio, abs_tol=1e-6)
        assert math.isfinite(float(row["final val loss"]))


def test_betas(micro, tmp_path):
    result = exe.run_exercise(
        "betas", [exe.CONFIG_DIR / "tiny.yaml"], micro, steps=8, out=tmp_path, verbose=False
    )
    check_outputs(result, n_variants=2, n_panels=3)
    assert [swept_value(r, "model.optim.betas") for r in result.runs] == [[0.9, 0.999], [0.9, 0.95]]


def test_weight_decay(micro, tmp_path):
    result = exe.run_exercise(
        "wd", [exe.CONFIG_DIR / "tiny.yaml"], micro, steps=8, out=tmp_path, verbose=False
    )
    check_outputs(result, n_variants=3, n_panels=3)
    norms = [r.extra["param_norm"] for r in result.runs]  # unrounded: 8 steps move the 3rd digit
    assert norms[0] > norms[1] > norms[2]  # decay shrinks the weights, more decay more
    assert "train/param_norm" in result.runs[0].scalars


def test_bad_exercise_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown exercise"):
        exe.run_exercise("momentum", out=tmp_path)
    with pytest.raises(ValueError, match="--warmup_steps"):
        exe.run_exercise("lr", steps=10, warmup_steps=10, out=tmp_path)
    with pytest.raises(ValueError, match="config file"):
        exe.run_exercise("lr", [tmp_path / "nope.yaml"], out=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the error


def test_default_configs_exist():
    assert all(Path(c).is_file() for c in exe.DEFAULT_CONFIGS)


def test_gptmini_exercises_subcommand_runs_the_exercises_tool(capsys, monkeypatch):
    """`gptmini exercises ...` (the console script) is `python -m gptmini.tools.exercises ...`."""
    from gptmini.cli import main

    calls = []
    monkeypatch.setattr(exe, "main", lambda args: calls.append(args))
    assert main(["exercises", "lr", "--steps", "2"]) == 0  # the exit status
    assert calls == [["lr", "--steps", "2"]]
