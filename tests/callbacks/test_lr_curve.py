"""gptmini.callbacks.lr_curve (and scripts/plot_lr_schedule.py, which calls it): the whole lr schedule,
drawn and shape-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from check_helpers import SMOKE, CustomSchedule, fit, make_module, schedule_curve

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import SanityCheckError
from gptmini.callbacks.lr_curve import LRCurveCheck, lr_curve_problems
from gptmini.callbacks.recipe_checks import (
    warmup_items,
)


def test_lr_curve_shape_checks():
    assert lr_curve_problems(schedule_curve(600, 30), peak_lr=1.0, min_lr=0.1) == []
    assert (
        lr_curve_problems(schedule_curve(50, 0), peak_lr=1.0, min_lr=0.1) == []
    )  # no warmup is a recipe check, not a shape error
    rising = schedule_curve(600, 30)
    rising[400:] += 0.05
    (problem,) = lr_curve_problems(rising, 1.0, None)
    assert "rises again after warmup, at step 400" in problem
    (problem,) = lr_curve_problems(schedule_curve(600, 30, horizon=1000), 1.0, 0.1)  # cosine horizon != max_steps
    assert "not min_lr" in problem and "horizon" in problem
    high_start = schedule_curve(600, 30) * 0.5 + 0.5
    assert any("not near 0" in p for p in lr_curve_problems(high_start, 1.0, None))
    assert any("warmup >= total" in p for p in lr_curve_problems(schedule_curve(100, 200), None, 0.1))
    assert any("warmup >= total" in p for p in lr_curve_problems(schedule_curve(100, 200), 1.0, 0.1))
    # warmup = max_steps - 1 reaches the peak at the last step: a zero-length decay, not an error.
    assert lr_curve_problems(schedule_curve(4, 3), 1.0, 0.1) == []
    assert warmup_items(schedule_curve(4, 3), 0.1, 0.01, 0.05, peak_lr=1.0)[0].status == "pass"
    assert warmup_items(schedule_curve(4, 10), 0.1, 0.01, 0.05, peak_lr=1.0)[0].status == "fail"
    assert any("not the configured lr" in p for p in lr_curve_problems(schedule_curve(600, 30) * 0.5, 1.0, 0.05))


def test_lr_curve_check_stops_a_schedule_that_rises_after_warmup(tiny_data, tiny_model_cfg, tmp_path):
    module = CustomSchedule(
        lambda k: (k + 1) / 3 if k < 3 else (0.5 if k < 10 else 0.8), arch=tiny_model_cfg
    )
    with pytest.raises(
        SanityCheckError, match="lr curve check failed: .*rises again after warmup, at step 10"
    ):
        fit(module, tiny_data, [LRCurveCheck()], tmp_path, max_steps=20)
    assert (Path(tmp_path) / "t" / "version_0" / "lr_curve.png").is_file()  # drawn before stopping


def test_warmup_longer_than_the_run_is_stopped(tiny_data, tiny_model_cfg, tmp_path):
    module = CustomSchedule(lambda k: (k + 1) / 101, arch=tiny_model_cfg)  # 100 warmup steps of 20
    with pytest.raises(SanityCheckError, match="warmup >= total steps"):
        fit(module, tiny_data, [Checklist(disable=["peak_lr"])], tmp_path, max_steps=20)
    # GPTMini's own schedule refuses it even earlier, naming the setting.
    with pytest.raises(ValueError, match="schedule.warmup_steps"):
        fit(make_module(tiny_model_cfg, warmup=50), tiny_data, [Checklist()], tmp_path, max_steps=20)


def test_lr_curve_script_draws_any_config_without_training(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).parent.parent.parent / "scripts" / "plot_lr_schedule.py"
    spec = importlib.util.spec_from_file_location("lr_curve_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "lr.png"
    tiny = str(SMOKE.parent / "tiny.yaml")
    logs = f"--trainer.logger.init_args.save_dir={tmp_path}"
    assert script.main(["--config", tiny, "--out", str(out), "--", "--trainer.max_steps=2000", logs]) == 0
    assert out.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "step    2000" not in printed and "step    1999: 2.000e-04" in printed  # ends at min_lr
    assert "ok   shape" in printed and "ok   warmup             30 steps = 1.5% of 2000" in printed
    assert not (tmp_path / "tiny").exists()  # nothing trained, nothing logged
