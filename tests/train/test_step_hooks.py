"""gptmini.train.step_hooks: Lightning stops dispatching empty per-step hooks and the step-0 checks after
step 0, while every hook that does work still runs, and checkpoints and later fits are unchanged."""

from __future__ import annotations

from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from check_helpers import all_checks, fit, make_module
from conftest import fit_cli
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from gptmini.callbacks.best import BestCheckpoint
from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.fault_guard import FaultGuard
from gptmini.callbacks.first_batch import FirstBatchCheck
from gptmini.callbacks.nonfinite import NonFiniteStop
from gptmini.core.guard import NonFiniteGuard
from gptmini.core.schedule import ScheduleConfig
from gptmini.train.module import GPTMiniModule
from gptmini.train.step_hooks import STEP_HOOKS, SkipUnusedStepHooks, skipped_step_hooks


class StepSpy(Callback):
    """Defines one per-step hook: Lightning must call it every step."""

    def __init__(self) -> None:
        self.ends = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends += 1


def count_calls(monkeypatch) -> Counter:
    """Count Lightning's calls of the empty per-step hooks (Callback's own) and of the step-0 checks'
    on_train_batch_start, by (class name, hook)."""
    calls: Counter = Counter()

    def counting(hook, original):
        def wrapper(self, *args, **kwargs):
            calls[type(self).__name__, hook] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for hook in STEP_HOOKS:
        monkeypatch.setattr(Callback, hook, counting(hook, getattr(Callback, hook)))
    for cls in (FirstBatchCheck, Checklist):
        original = cls.on_train_batch_start
        monkeypatch.setattr(cls, "on_train_batch_start", counting("on_train_batch_start", original))
    return calls


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_tiny_fit_dispatches_only_hooks_that_work_and_checkpoints_every_callback_state(
    cli_args, tmp_path, monkeypatch, capsys
):
    calls = count_calls(monkeypatch)
    spy = StepSpy()
    steps = 6
    cli = fit_cli(cli_args(max_steps=steps), spy)  # configs/tiny.yaml: every callback, validation at 3 and 6
    trainer = cli.trainer
    assert trainer.global_step == steps and spy.ends == steps  # a defined per-step hook: every step
    out = capsys.readouterr().out
    assert "ok   initial loss" in out and "ok   overfit one batch" in out  # the checks did run, at step 0
    # The step-0 checks were dispatched to once (step 0), not on the 5 steps after it.
    checks = {name for name, _ in calls if name in {"InitialLossCheck", "OverfitCheck", "Checklist"}}
    assert checks == {"InitialLossCheck", "OverfitCheck", "Checklist"}
    assert {k: n for k, n in calls.items() if k[0] in checks} == {(c, "on_train_batch_start"): 1 for c in checks}
    # No empty per-step hook of any callback (Lightning's, ours, the spy's other five) was called.
    assert not [k for k in calls if k[0] not in checks], calls
    # Every callback is still in the list, none hides a hook once the fit is over.
    names = [type(cb).__name__ for cb in trainer.callbacks]
    for name in ("LRCurveCheck", "InitialLossCheck", "OverfitCheck", "Checklist", "SkipUnusedStepHooks"):
        assert name in names
    assert all(skipped_step_hooks(cb) == [] for cb in trainer.callbacks)
    # The checkpoint holds the state of every callback that has one, as Lightning keys it.
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    ckpt = torch.load(last, weights_only=False)
    with_state = {cb.state_key for cb in trainer.callbacks if cb.state_dict()}
    assert set(ckpt["callbacks"]) == with_state and any("FaultGuard" in k for k in with_state)


@pytest.mark.filterwarnings("ignore:.*peak lr")
@pytest.mark.parametrize("with_checklist", [False, True])
def test_step_0_checks_run_again_in_a_second_fit_of_the_same_callbacks(
    with_checklist, tiny_data, tiny_model_cfg, tmp_path
):
    # A plain Trainer (no SkipUnusedStepHooks to restore them): the checks show their hooks again
    # themselves. Without the Checklist each first-batch check runs from its own hook.
    checks = all_checks(steps=3, threshold=100.0)[: 4 if with_checklist else 3]
    init_check, overfit = checks[1], checks[2]
    fit(make_module(tiny_model_cfg), tiny_data, checks, tmp_path, max_steps=3)
    assert all(skipped_step_hooks(cb) == list(STEP_HOOKS) for cb in checks[1:])  # retired after step 0
    first = init_check.result
    fit(make_module(tiny_model_cfg), tiny_data, checks, tmp_path, max_steps=3)
    assert init_check.result is not first and init_check.result.status == "pass"
    assert overfit.result.status == "pass"
    if with_checklist:
        assert "initial_loss" in checks[3].items  # the checklist ran its first batch again


class FailAt(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            raise RuntimeError("boom")


def test_hidden_hooks_come_back_after_a_fit_that_raised(tiny_data, tiny_model_cfg, tmp_path):
    spy, fail = StepSpy(), FailAt()
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(skipped_step_hooks(spy))

    with pytest.raises(RuntimeError, match="boom"):
        fit(make_module(tiny_model_cfg), tiny_data, [SkipUnusedStepHooks(), spy, Probe(), fail], tmp_path, max_steps=5)
    assert seen[0] == [h for h in STEP_HOOKS if h != "on_train_batch_end"]  # hidden during the fit
    assert skipped_step_hooks(spy) == [] and skipped_step_hooks(fail) == []
    assert callable(spy.on_before_backward) and callable(fail.on_train_batch_start)


class NotRecipe(GPTMiniModule):
    runs_own_step = None  # blocks the recipe interface: FaultGuard keeps and ends its own guard


def count_guard_batch_hooks(monkeypatch) -> Counter:
    calls: Counter = Counter()
    for hook in NonFiniteStop.BATCH_HOOKS:
        original = getattr(NonFiniteStop, hook)

        def wrapper(self, *args, _hook=hook, _original=original, **kwargs):
            calls[_hook] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(NonFiniteStop, hook, wrapper)
    return calls


def test_fault_guard_batch_hooks_retire_for_a_fit_where_they_have_no_work(
    tiny_data, tiny_model_cfg, tmp_path, monkeypatch
):
    # An eager step of GPTMiniModule: batch start (reads a captured step's verdict) and batch end (ends
    # a guard of its own) have nothing to do; each is called at step 0 only, and again in the next fit.
    calls = count_guard_batch_hooks(monkeypatch)
    guard = FaultGuard()
    fit(make_module(tiny_model_cfg), tiny_data, [guard], tmp_path, max_steps=4)
    assert calls == {"on_train_batch_start": 1, "on_train_batch_end": 1}
    assert skipped_step_hooks(guard) == list(NonFiniteStop.BATCH_HOOKS)
    calls.clear()
    fit(make_module(tiny_model_cfg), tiny_data, [guard], tmp_path, max_steps=4)
    assert calls == {"on_train_batch_start": 1, "on_train_batch_end": 1}  # shown again at fit start
    # A module without the recipe interface: the guard is FaultGuard's own, ended after every batch.
    calls.clear()
    ends = Counter()
    monkeypatch.setattr(NonFiniteGuard, "done", lambda self: ends.update([self is guard._guard]))
    pl.seed_everything(1234, verbose=False)
    fit(NotRecipe(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=2)), tiny_data, [guard], tmp_path, max_steps=4)
    assert calls == {"on_train_batch_start": 1, "on_train_batch_end": 4} and ends[True] == 4
    # A module running its own (captured) step: its verdict is read at the start of every batch.
    calls.clear()
    monkeypatch.setattr(GPTMiniModule, "runs_own_step", lambda self: True)
    fit(make_module(tiny_model_cfg), tiny_data, [guard], tmp_path, max_steps=4)
    assert calls == {"on_train_batch_start": 4, "on_train_batch_end": 1}


def test_a_checkpoint_that_cannot_save_at_batch_end_is_not_dispatched_there(
    tiny_data, tiny_model_cfg, tmp_path, monkeypatch
):
    # BestCheckpoint saves at validation only (no every_n_train_steps / train_time_interval): its
    # batch end returns at once every step, so Lightning is not asked to call it; a ModelCheckpoint
    # saving every 2 steps is called every step and saves as before.
    calls: Counter = Counter()
    original = ModelCheckpoint.on_train_batch_end

    def counting(self, *args, **kwargs):
        calls[type(self).__name__] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end", counting)
    best = BestCheckpoint(dirpath=tmp_path / "best")
    every = ModelCheckpoint(dirpath=tmp_path / "every", every_n_train_steps=2, save_top_k=-1)
    hide = SkipUnusedStepHooks()
    fit(make_module(tiny_model_cfg), tiny_data, [hide, best, every], tmp_path, max_steps=4, enable_checkpointing=True)
    assert calls == {"ModelCheckpoint": 4}
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert skipped_step_hooks(best) == []  # shown again at teardown
