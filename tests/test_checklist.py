"""Pre-training checks: each passes on a healthy tiny setup and fails, naming the problem, on a broken one."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import SanityCheckError
from gptmini.callbacks.first_batch import InitialLossCheck, OverfitCheck
from gptmini.callbacks.lr_curve import LRCurveCheck, lr_curve_problems
from gptmini.callbacks.recipe_checks import (
    betas_item,
    clipping_item,
    decay_groups_item,
    eval_mode_item,
    interval_item,
    peak_lr_item,
    warmup_items,
)
from gptmini.cli import main, make_cli
from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, lr_multiplier
from gptmini.train.module import GPTMiniModule

SMOKE = Path(__file__).parent.parent / "configs" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    # Toy models gain nothing from a second thread, and on a shared 2-core machine two OpenMP
    # threads per process thrash (see tests/test_speed.py).
    torch.set_num_threads(1)


def make_module(cfg: ModelConfig, lr: float = 3e-3, warmup: int = 2, **optim) -> GPTMiniModule:
    pl.seed_everything(1234, verbose=False)
    return GPTMiniModule(
        arch=cfg, optim=OptimConfig(lr=lr, **optim), schedule=ScheduleConfig(warmup_steps=warmup)
    )


def fit(module, data, callbacks, tmp_path, max_steps: int = 4, ckpt_path: str | None = None, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "logger": TensorBoardLogger(tmp_path, name="t"),
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "gradient_clip_val": 1.0,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "callbacks": callbacks,
            **kwargs,
        }
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def all_checks(**overfit) -> list[pl.Callback]:
    return [
        LRCurveCheck(),
        InitialLossCheck(),
        OverfitCheck(**{"steps": 200, "rows": 2, **overfit}),
        Checklist(),
    ]


class Recorder(pl.Callback):
    """Listed last: sees the run right after the checks, at the first batch, and its first losses."""

    def __init__(self) -> None:
        self.weights = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.weights is None:
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
            self.all_training = all(m.training for m in pl_module.modules())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, pl_module):
        self.final = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.opt_state = trainer.optimizers[0].state_dict()["state"]


def tb(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


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


# -- initial loss ---------------------------------------------------------------------------------------


def test_initial_loss_check_stops_a_run_whose_init_is_broken(tiny_data, tiny_model_cfg, tmp_path):
    cfg = ModelConfig(**{**tiny_model_cfg.__dict__, "init_std": 1.0})  # logits far from uniform
    module = make_module(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(SanityCheckError, match=r"initial loss check failed: .* vs ln\(384\).*init"):
        fit(module, tiny_data, [InitialLossCheck()], tmp_path)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # stopped before step 0


def test_initial_loss_check_stops_a_loss_far_below_chance(tiny_data, tiny_model_cfg, tmp_path):
    class Leaky(GPTMiniModule):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 0.01  # as if the model saw the targets

    module = Leaky(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=2))
    with pytest.raises(SanityCheckError, match="better than chance .*sees the targets"):
        fit(module, tiny_data, [InitialLossCheck(), Checklist(disable=["peak_lr"])], tmp_path)


# -- overfit ----------------------------------------------------------------------------------------------


def test_overfit_check_fails_with_lr_zero(tiny_data, tiny_model_cfg, tmp_path, capsys):
    module = make_module(tiny_model_cfg)
    module.optim_cfg.lr = 0.0  # OptimConfig refuses 0; this is the bug the check must catch
    with pytest.raises(
        SanityCheckError, match=r"overfit check failed: .*peak lr 0\.00e\+00.*the model cannot learn"
    ):
        fit(module, tiny_data, [OverfitCheck(steps=10)], tmp_path)
    assert "[step-0 checks] overfit step    0/10" in capsys.readouterr().out


def test_overfit_check_fails_for_a_frozen_model(tiny_data, tiny_model_cfg, tmp_path):
    module = make_module(tiny_model_cfg)
    module.model.requires_grad_(False)
    with pytest.raises(SanityCheckError, match="no trainable parameter .frozen model"):
        fit(module, tiny_data, [OverfitCheck(steps=10)], tmp_path)


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


# -- lr curve -----------------------------------------------------------------------------------------------


def _curve(steps: int, warmup: int, horizon: int | None = None, ratio: float = 0.1) -> np.ndarray:
    return np.array([lr_multiplier(k, warmup, horizon or steps, ratio) for k in range(steps)])


def test_lr_curve_shape_checks():
    assert lr_curve_problems(_curve(600, 30), peak_lr=1.0, min_lr=0.1) == []
    assert (
        lr_curve_problems(_curve(50, 0), peak_lr=1.0, min_lr=0.1) == []
    )  # no warmup is a recipe check, not a shape error
    rising = _curve(600, 30)
    rising[400:] += 0.05
    (problem,) = lr_curve_problems(rising, 1.0, None)
    assert "rises again after warmup, at step 400" in problem
    (problem,) = lr_curve_problems(_curve(600, 30, horizon=1000), 1.0, 0.1)  # cosine horizon != max_steps
    assert "not min_lr" in problem and "horizon" in problem
    high_start = _curve(600, 30) * 0.5 + 0.5
    assert any("not near 0" in p for p in lr_curve_problems(high_start, 1.0, None))
    assert any("warmup >= total" in p for p in lr_curve_problems(_curve(100, 200), None, 0.1))
    assert any("warmup >= total" in p for p in lr_curve_problems(_curve(100, 200), 1.0, 0.1))
    # warmup = max_steps - 1 reaches the peak at the last step: a zero-length decay, not an error.
    assert lr_curve_problems(_curve(4, 3), 1.0, 0.1) == []
    assert warmup_items(_curve(4, 3), 0.1, 0.01, 0.05, peak_lr=1.0)[0].status == "pass"
    assert warmup_items(_curve(4, 10), 0.1, 0.01, 0.05, peak_lr=1.0)[0].status == "fail"
    assert any("not the configured lr" in p for p in lr_curve_problems(_curve(600, 30) * 0.5, 1.0, 0.05))


class CustomSchedule(GPTMiniModule):
    """configure_optimizers with a hand-written multiplier (and no horizon validation)."""

    def __init__(self, fn, interval="step", **kwargs):
        super().__init__(**kwargs)
        self.fn, self.interval = fn, interval

    def configure_optimizers(self):
        opt = build_adamw(self.model, self.optim_cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


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


# -- recipe checks --------------------------------------------------------------------------------------------------


@pytest.fixture
def micro() -> GPTMini:
    return GPTMini(ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))


def test_recipe_checks_pass_on_the_recipe(micro):
    opt = build_adamw(micro, OptimConfig(lr=6e-4))
    assert decay_groups_item(micro, opt).status == "pass"
    assert betas_item(opt).status == "pass"
    assert clipping_item(1.0).status == "pass"
    assert peak_lr_item(micro, opt, 1e-3, 20_000_000).status == "pass"
    assert [i.status for i in warmup_items(_curve(1000, 30), 0.1, 0.01, 0.05)] == ["pass", "pass"]
    assert eval_mode_item(micro).status == "pass"


def test_weight_decay_on_embeddings_or_norms_is_an_error(micro):
    opt = torch.optim.AdamW(micro.parameters(), lr=1e-3, weight_decay=0.1)  # one group: everything decays
    item = decay_groups_item(micro, opt)
    assert item.status == "fail"
    assert "weight decay is applied to embedding/norm" in item.detail and "tok_emb.weight" in item.detail


def test_recipe_check_warnings_name_the_problem(micro):
    opt = build_adamw(micro, OptimConfig(lr=3e-3, betas=(0.9, 0.999)))
    assert betas_item(opt).status == "warn" and "0.999" in betas_item(opt).detail
    item = peak_lr_item(micro, opt, 1e-3, 20_000_000)
    assert item.status == "warn" and "peak lr 3.00e-03 > 0.001" in item.detail
    assert clipping_item(None).status == "warn" and "no gradient clipping" in clipping_item(None).detail
    statuses = {i.key: i for i in warmup_items(_curve(1000, 0), 0.1, 0.01, 0.05)}
    assert statuses["no_warmup"].status == "warn" and "no warmup" in statuses["no_warmup"].detail
    micro.blocks[1].eval()
    item = eval_mode_item(micro)
    assert item.status == "fail" and "eval mode" in item.detail and "blocks.1" in item.detail


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


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_betas_0999_warn_at_fit_start_and_the_check_can_be_switched_off(tiny_data, tiny_model_cfg, tmp_path):
    with pytest.warns(UserWarning, match=r"\(0.9, 0.999\): beta2 0.999"):
        fit(make_module(tiny_model_cfg, betas=(0.9, 0.999)), tiny_data, [Checklist()], tmp_path)
    checklist = Checklist(disable=["betas"])
    with pytest.warns(UserWarning, match="recipe check 'betas' is disabled by config") as record:
        fit(make_module(tiny_model_cfg, betas=(0.9, 0.999)), tiny_data, [checklist], tmp_path)
    assert not any("beta2 0.999" in str(w.message) for w in record)
    assert checklist.items["betas"].status == "off"


def test_scheduler_stepping_per_epoch_is_an_error(tiny_data, tiny_model_cfg, tmp_path):
    module = CustomSchedule(lambda k: 1.0, interval="epoch", arch=tiny_model_cfg)
    with pytest.raises(SanityCheckError, match="steps once per epoch"):
        fit(module, tiny_data, [Checklist(disable=["peak_lr"])], tmp_path)
    assert interval_item([]).status == "note"


def test_training_in_eval_mode_is_an_error(tiny_data, tiny_model_cfg, tmp_path):
    module = make_module(tiny_model_cfg, lr=6e-4)
    module.eval()
    with pytest.raises(SanityCheckError, match="training would run in eval mode"):
        fit(module, tiny_data, [Checklist()], tmp_path)


def test_unknown_recipe_check_name_is_refused():
    with pytest.raises(ValueError, match="unknown recipe check"):
        Checklist(disable=["no_such_check"])


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


def test_lr_curve_script_draws_any_config_without_training(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).parent.parent / "scripts" / "plot_lr_schedule.py"
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
