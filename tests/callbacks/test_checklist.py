"""gptmini.callbacks.checklist: the step-0 checks together on a healthy tiny run (untouched weights,
optimizer and RNG streams), the printed checklist, and the configs that turn them on. Each check's own
tests: test_first_batch.py, test_lr_curve.py, test_recipe_checks.py."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from check_helpers import SMOKE, Recorder, all_checks, fit, make_module, tb

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import SanityCheckError
from gptmini.callbacks.first_batch import InitialLossCheck, OverfitCheck
from gptmini.callbacks.lr_curve import LRCurveCheck
from gptmini.cli import main, make_cli
from gptmini.core.model import ModelConfig
from gptmini.core.optim import OptimConfig
from gptmini.core.schedule import ScheduleConfig
from gptmini.train.module import GPTMiniModule

# -- healthy run ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_healthy_tiny_run_passes_every_check_and_prints_the_checklist(
    tiny_data, tiny_model_cfg, tmp_path, capsys
):
    rec = Recorder()
    callbacks = all_checks()
    trainer = fit(make_module(tiny_model_cfg, lr=1e-2), tiny_data, [*callbacks, rec], tmp_path)
    lr_check, init_check, overfit, checklist = callbacks
    assert init_check.result.status == "pass" and overfit.result.status == "pass"
    assert lr_check.result.status == "pass"
    assert abs(init_check.loss - np.log(384)) < 1.0
    assert overfit.losses[-1] < 0.5 < overfit.losses[0]
    # The initial-loss check saw the first training batch: its eval-mode loss is step 0's loss.
    assert init_check.loss == pytest.approx(rec.losses[0], abs=1e-5)
    assert rec.all_training  # train mode restored after the eval-mode check
    assert trainer.global_step == 4  # the run went on

    out = capsys.readouterr().out
    assert "Step-0 checklist" in out
    for title in (
        "initial loss",
        "overfit one batch",
        "lr curve",
        "weight decay",
        "betas",
        "steps vs tokens",
    ):
        assert f"ok   {title}" in out, out
    assert "WARN peak lr" in out  # 1e-2 on a 37k-parameter model: a warning, not a stop
    assert "[step-0 checks] overfit step   20/200" in out  # one line every 20 steps
    assert {i.status for i in checklist.items.values()} <= {"pass", "warn", "note"}

    run = Path(trainer.log_dir)
    assert (run / "lr_curve.png").stat().st_size > 1000
    acc = tb(run)
    assert "checks/lr_curve" in acc.Tags()["images"]
    scalars = acc.Tags()["scalars"]
    assert {"checks/initial_loss", "checks/ln_vocab", "checks/overfit_loss"} <= set(scalars)
    assert len(acc.Scalars("checks/overfit_loss")) == len(overfit.losses)


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_checks_leave_weights_optimizer_and_rng_streams_untouched(tiny_data, tiny_model_cfg, tmp_path):
    class Noisy(GPTMiniModule):
        """Draws from torch, numpy and python generators every step, so any stolen draw shows."""

        def training_step(self, batch, batch_idx):
            noise = torch.rand(()).item() + np.random.rand() + random.random()
            return super().training_step(batch, batch_idx) * (1 + 1e-2 * noise)

    def run(callbacks, name):
        pl.seed_everything(7, verbose=False)
        module = Noisy(
            arch=tiny_model_cfg, optim=OptimConfig(lr=3e-3), schedule=ScheduleConfig(warmup_steps=2)
        )
        rec = Recorder()
        fit(module, tiny_data, [*callbacks, rec], tmp_path / name, max_steps=4)
        return rec

    # Threshold high and no early stop: the copy trains all 15 steps, drawing from every generator.
    on = run(
        [InitialLossCheck(), OverfitCheck(steps=15, threshold=100.0, stop_early=False), LRCurveCheck()], "on"
    )
    off = run([], "off")
    assert on.weights.keys() == off.weights.keys()
    assert all(torch.equal(on.weights[k], off.weights[k]) for k in on.weights)
    assert (
        torch.equal(on.rng[0], off.rng[0])
        and np.array_equal(on.rng[1], off.rng[1])
        and on.rng[2] == off.rng[2]
    )
    assert on.losses == off.losses and len(on.losses) == 4
    assert all(torch.equal(on.final[k], off.final[k]) for k in on.final)
    for i, state in off.opt_state.items():
        assert torch.equal(on.opt_state[i]["exp_avg"], state["exp_avg"])


def test_checklist_prints_then_raises_and_skips_the_overfit_after_a_failed_initial_loss(
    tiny_data, tiny_model_cfg, tmp_path, capsys
):
    cfg = ModelConfig(**{**tiny_model_cfg.__dict__, "init_std": 1.0})
    overfit = OverfitCheck()
    with pytest.raises(SanityCheckError, match="initial loss check failed"):
        fit(
            make_module(cfg),
            tiny_data,
            [Checklist(disable=["peak_lr"]), InitialLossCheck(), overfit],
            tmp_path,
        )
    out = capsys.readouterr().out
    assert "FAIL initial loss" in out and "skip overfit one batch  not run: initial loss failed" in out
    assert overfit.losses == []


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_checklist_flags_a_run_that_repeats_its_data(tiny_data, tiny_model_cfg, tmp_path, capsys):
    # README: the checklist flags a run that would repeat its corpus many times (10m on the
    # embedded corpus: ~2,700 epochs). Here 3 steps are ~0.02 epochs, over a cap of 0.001.
    fit(make_module(tiny_model_cfg), tiny_data, [Checklist(max_epochs=0.001)], tmp_path, max_steps=3)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "steps vs tokens" in x]
    assert line.lstrip().startswith("note") and "epoch(s) of" in line, line


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_a_resumed_run_skips_the_step_0_checks(tiny_data, tiny_model_cfg, tmp_path, capsys):
    # A trained model's loss is far below ln(vocab): the initial-loss check would stop every resume.
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpts = tmp_path / "ckpts"
    first = [ModelCheckpoint(dirpath=ckpts, save_last=True)]
    fit(make_module(tiny_model_cfg), tiny_data, first, tmp_path, max_steps=3, enable_checkpointing=True)
    capsys.readouterr()
    checks = all_checks(steps=3, threshold=100.0)  # were it run, it would pass
    trainer = fit(
        make_module(tiny_model_cfg), tiny_data, [*checks, ModelCheckpoint(dirpath=ckpts, save_last=True)],
        tmp_path, max_steps=4, enable_checkpointing=True, ckpt_path=str(ckpts / "last.ckpt"),
    )
    assert trainer.global_step == 4
    _, init_check, overfit, _ = checks
    assert init_check.result.status == "skip" and overfit.result.status == "skip"
    assert "resumed at step 3" in init_check.result.detail and not overfit.losses
    assert "[step-0 checks] overfit step" not in capsys.readouterr().out


# -- configs ---------------------------------------------------------------------------------------------------


def test_tiny_config_runs_the_checks_and_the_smoke_preset_combines(cli_args, tmp_path, capsys):
    args = cli_args(max_steps=5)
    main(args)
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    assert (run / "lr_curve.png").is_file()
    out = capsys.readouterr().out
    assert "ok   initial loss" in out and "ok   overfit one batch" in out
    assert "off  peak lr            recipe check 'peak_lr' disabled by config" in out

    # The smoke preset goes after the main config; the test's small-model overrides still follow.
    args = cli_args(max_steps=30)  # the lr horizon; max_epochs stops the smoke run at 10 steps
    smoke = args[:3] + ["--config", str(SMOKE)] + args[3:]
    cli = make_cli(smoke)
    assert cli.trainer.overfit_batches == 1 and cli.trainer.global_step == 10  # max_epochs 10 x 1 batch
    (run,) = (tmp_path / "runs" / "smoke").iterdir()
    assert (run / "lr_curve.png").is_file()
    assert "overfit_batches is set: smoke run" in capsys.readouterr().out
