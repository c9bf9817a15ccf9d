"""The run-level progress bar, and step metrics logged only on the steps Lightning writes."""

from __future__ import annotations

import functools
import importlib.util
import sys

import pytest
import torch
from conftest import scalars_by_step
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from gptmini.callbacks.progress import LossProgressBar
from gptmini.cli import make_cli
from gptmini.train.module import GPTMiniModule


class _StepLosses(Callback):
    """Every step's loss and pre-clip grad norm, and (optionally) a stop request after one step."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_after = stop_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        if batch_idx == self.stop_after:
            trainer.should_stop = True  # as Lightning's Timer does, mid-step


@pytest.mark.parametrize("stop_after", [None, 4])
def test_step_curves_are_written_at_every_log_step_with_that_steps_value(
    stop_after, tiny_data, tiny_model_cfg, tmp_path
):
    """GPTMiniModule calls self.log only on written steps: the curves keep every written point and
    its value, including the extra point Lightning writes when a callback stops the run mid-step."""
    module = GPTMiniModule(tiny_model_cfg)
    module.schedule_cfg.warmup_steps = 2
    rec = _StepLosses(stop_after)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=10,
        log_every_n_steps=3,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[rec],
    )
    trainer.fit(module, datamodule=tiny_data)
    curves = scalars_by_step(trainer.logger.log_dir)
    expected = [2, 5, 8] if stop_after is None else [2, 4]
    assert sorted(curves["train/loss"]) == expected
    assert sorted(curves["train/grad_norm"]) == expected
    for step in expected:
        assert curves["train/loss"][step] == pytest.approx(rec.losses[step], rel=1e-6)


def test_bar_counts_run_steps_and_tokens_and_flags_a_long_run(cli_args):
    """The bar spans the run (step / max_steps, tokens seen) and, once the first steps are timed,
    says in one line when the whole run would take longer than long_run_hours."""
    args = [a for a in cli_args(max_steps=8) if "enable_progress_bar" not in a]
    args += [
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=gptmini.callbacks.progress.LossProgressBar",
        "--trainer.callbacks.min_interval_s=0",
        "--trainer.callbacks.long_run_hours=1e-9",
    ]
    cli = make_cli(args=[a for a in args if a != "fit"], run=False)
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, LossProgressBar)
    with pytest.warns(UserWarning, match=r"remaining [\d,]+ steps take about .* on cpu: .*tiny.yaml"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert bar.train_progress_bar.total == 8 and bar.train_progress_bar.n == 8
    metrics = bar.get_metrics(cli.trainer, cli.model)
    tokens_per_step = cli.datamodule.batch_size * cli.datamodule.block_size
    assert metrics["tokens"] == "2.05k" and 8 * tokens_per_step == 2048  # 8 steps x B8 x T32
    assert float(metrics["loss"]) == pytest.approx(cli.model.last_loss.item(), abs=1e-3)
    assert torch.isfinite(cli.model.last_loss)


@pytest.mark.parametrize("captured", [False, True], ids=["closure", "captured-twin"])
def test_no_host_sync_between_logging_steps(cli_args, monkeypatch, captured):
    """Lightning, the module, the configs' callbacks and LossProgressBar read tensors only on log
    steps (every 5 here), never on the steps between: on a GPU each read is a sync. Also on the
    captured step's path (its eager twin on this CPU: the same calls a graph replays)."""
    args = [a for a in cli_args(max_steps=10) if "enable_progress_bar" not in a and "log_every" not in a]
    if captured:
        from gptmini.core.captured import CAPTURED, StepPath
        from gptmini.train import module

        monkeypatch.setattr(module, "choose_step_path", lambda *a, **k: StepPath(CAPTURED, "test"))
        args.append("--model.optim.fused=true")
    args += [
        "--trainer.log_every_n_steps=5",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=gptmini.callbacks.progress.LossProgressBar",
        "--trainer.callbacks.refresh_rate=5",
    ]
    if importlib.util.find_spec("gptmini.callbacks.fault_guard"):
        # FaultGuard's finite-loss check is one sync per check (issue 5); align it with logging.
        args.append("--fault_guard.check_every_n_steps=5")
    state = {"step": None, "reads": []}

    class Where(Callback):
        def on_train_batch_start(self, trainer, *_):
            state["step"] = trainer.global_step + 1  # the step now running, 1-based

        def on_train_end(self, *_):
            state["step"] = None

    def spy(name):
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            # torch's own optimizer reads its CPU-side step counter: not a device sync.
            if state["step"] is not None and f"torch{'/'}optim" not in caller:
                state["reads"].append((state["step"], name, caller))
            return original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        spy(name)
    cli = make_cli(args=[a for a in args if a != "fit"], run=False)
    # First: the running step is labelled before any callback reads (LearningRateMonitor reads the
    # lr, a device tensor on the captured path, at the start of its log steps).
    cli.trainer.callbacks.insert(0, Where())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.step_path.captured is captured
    assert isinstance(cli.trainer.progress_bar_callback, LossProgressBar)
    # FaultGuard (issue 5) checks for a finite loss every fault_guard.check_every_n_steps, at a step's
    # start, and its final checkpoint at the end: a few steps, not every step.
    # The step-0 checks read on purpose, at the first batch's start, before the first update.
    checks = ("first_batch.py", "checklist.py", "recipe_checks.py", "lr_curve.py", "checks_shared.py")
    state["reads"] = [r for r in state["reads"] if not (r[0] == 1 and r[2].endswith(checks))]
    guard = ("callbacks/fault_guard.py", "callbacks/nonfinite.py", "core/guard.py")  # FaultGuard's guard, its counters
    guard_steps = {r[0] for r in state["reads"] if r[2].endswith(guard)}
    assert len(guard_steps) <= 3, guard_steps
    steps = {step for step, _, caller in state["reads"] if not caller.endswith(guard)}
    assert steps <= {5, 10}, [r for r in state["reads"] if r[0] not in (5, 10)]
    assert steps == {5, 10}  # the spy works: log steps do read the loss


def test_cli_swaps_default_bar_for_loss_bar(cli_args):
    args = [a for a in cli_args(max_steps=1) if "enable_progress_bar" not in a]
    cli = make_cli(args=[a for a in args if a != "fit"], run=False)
    assert type(cli.trainer.progress_bar_callback) is LossProgressBar
