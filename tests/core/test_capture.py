"""The captured training step (gptmini.core.captured, gptmini.core.step.guarded_step): its eager twin
on a CPU matches today's step; where it applies and why not; on a GPU, the graph matches eager."""

from __future__ import annotations

import contextlib
import functools
import io
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gptmini.callbacks.checks_shared import CheckItem
from gptmini.callbacks.fault_guard import FaultGuard
from gptmini.callbacks.first_batch import OverfitCheck
from gptmini.core import captured
from gptmini.core.captured import (
    CAPTURED,
    EAGER,
    CapturedStep,
    StepPath,
    capturable,
    choose_step_path,
    lr_tensors,
    lrs_on_device,
)
from gptmini.core.config import ConfigError
from gptmini.core.guard import NonFiniteGuard
from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, build_scheduler
from gptmini.core.step import guarded_step
from gptmini.train import module as module_mod
from gptmini.train.module import GPTMiniModule

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
STEPS, NAN_AT, SAVE_AT, CLIP = 12, 5, 7, 0.05


def batches(n: int, seed: int = 0, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, CFG.vocab_size, (4, CFG.block_size + 1), generator=g)
        out.append((t[:, :-1].to(device), t[:, 1:].to(device)))
    return out


def build(device: str = "cpu", state: dict | None = None, fused: bool = True):
    torch.manual_seed(0)
    model = GPTMini(CFG).to(device)
    opt = build_adamw(model, OptimConfig(lr=3e-3, fused=fused), device)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=3), STEPS)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    return model, opt, sched


class SimulatedGraph:
    """What a CUDA graph does, on a CPU: recording runs nothing; each replay runs the recorded step
    on the same static buffers and writes its loss into the same output tensor."""

    def __init__(self, fn) -> None:
        self.fn, self.out, self.replays = fn, torch.zeros(()), 0

    def replay(self) -> None:
        self.out.copy_(self.fn())
        self.replays += 1


class SimulatedCapture(CapturedStep):
    """CapturedStep's own warmup / capture / replay / fallback logic, with SimulatedGraph for CUDA."""

    def __init__(self, step, capture_context=contextlib.nullcontext, graphs=True, fail=None) -> None:
        super().__init__(step, capture_context=capture_context, graphs=True)
        self.fail, self.recorded_in_context = fail, None

    def _side_stream(self, fn):
        return fn()

    def _record(self, fn):
        if self.fail:
            raise RuntimeError(self.fail)
        opt = getattr(self, "optimizer", None)
        self.recorded_in_context = opt is None or all(g["capturable"] for g in opt.param_groups)
        graph = SimulatedGraph(fn)
        return graph, graph.out


def round_trip(model, opt, sched) -> dict:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def today(data, clip=CLIP, fused=True):
    """The step before this change, line for line: Lightning's zero_grad (to None), training_step,
    backward, FaultGuard's own norm and a new found_inf (fused) or a host-read skip (unfused),
    configure_gradient_clipping's rebuilt list and second norm, step; checkpoint round trip at SAVE_AT."""
    model, opt, sched = build(fused=fused)
    losses, norms = [], []
    for i, (x, y) in enumerate(data):
        if i == SAVE_AT:
            model, opt, sched = build(state=round_trip(model, opt, sched), fused=fused)
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)[1] * (float("nan") if i == NAN_AT else 1.0)
        loss.backward()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads)) | ~torch.isfinite(loss.detach()).all()
        if fused:
            opt.found_inf = bad.float()
        elif bool(bad):
            opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.tensor(float("nan")))
        opt.step()
        sched.step()
        losses.append(loss.detach().clone())
    return torch.stack(losses), torch.stack(norms), model, opt


def twin(data, device="cpu", graphs=False, clip=CLIP, runner_class=CapturedStep, **runner_kwargs):
    """The captured step's path: lr tensors refreshed from LambdaLR, static batch, guarded_step; the
    NaN comes from a device tensor (a graph cannot see a Python value change)."""
    model, opt, sched = build(device)
    poison = torch.ones((), device=device)
    losses, norms = [], []

    def start(model, opt):
        guard = NonFiniteGuard(opt)  # after the restore, as GPTMiniModule.on_train_start does
        lrs = lr_tensors(opt)

        def step(batch):
            return guarded_step(lambda: model(*batch)[1] * poison, opt, guard, clip=clip)

        runner = runner_class(step, capture_context=lambda: capturable(opt), graphs=graphs, **runner_kwargs)
        runner.optimizer = opt
        return guard, lrs, runner

    guard, lrs, runner = start(model, opt)
    for i, batch in enumerate(data):
        if i == SAVE_AT:
            model, opt, sched = build(device, round_trip(model, opt, sched))
            guard, lrs, runner = start(model, opt)
        poison.fill_(float("nan") if i == NAN_AT else 1.0)
        runner.load_batch(batch)
        with lrs_on_device(opt, lrs):
            losses.append(runner().clone())
        norms.append(guard.norm.clone())
        sched.step()
    twin.runner = runner
    return torch.stack(losses), torch.stack(norms), model, opt, guard


def test_eager_twin_matches_todays_step_across_lr_clipping_nan_skip_and_a_round_trip():
    data = batches(STEPS)
    ref_losses, ref_norms, ref_model, ref_opt = today(data)
    losses, norms, model, opt, guard = twin(data)
    assert torch.isnan(losses[NAN_AT]) and torch.isfinite(losses[NAN_AT + 1 :]).all()
    finite = torch.isfinite(ref_norms)
    assert (ref_norms[finite] > CLIP).all()  # clipping decided every update
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=1e-6, equal_nan=True)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    # The skipped step left AdamW's step count one behind, in both; the lr followed the schedule.
    assert {int(s["step"]) for s in opt.state.values()} == {STEPS - 1}
    assert {int(s["step"]) for s in ref_opt.state.values()} == {STEPS - 1}
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
    assert guard.read() == (0, -1)  # a fresh guard after the restore: the skip was before it


def test_captured_steps_logic_with_a_simulated_graph_matches_todays_step():
    """CapturedStep's warmup (3 eager steps), capture (capturable only then) and replays over the
    static batch, the graph simulated on a CPU: the same losses and weights as today's step."""
    data = batches(STEPS)
    ref_losses, ref_norms, ref_model, _ = today(data)
    losses, norms, model, _, _ = twin(data, runner_class=SimulatedCapture)
    runner = twin.runner  # the one built after the restore at SAVE_AT
    assert runner.eager_steps == captured.WARMUP_STEPS and runner.recorded_in_context
    assert runner.graph.replays == STEPS - SAVE_AT - captured.WARMUP_STEPS
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=1e-6, equal_nan=True)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_a_failed_capture_warns_and_trains_on_eagerly():
    data = batches(STEPS)
    ref_losses, _, ref_model, _ = today(data)
    with pytest.warns(UserWarning, match=r"capture failed \(RuntimeError: no graphs here\); this run continues"):
        losses, _, model, _, _ = twin(data, runner_class=SimulatedCapture, fail="no graphs here")
    assert twin.runner.graph is None and twin.runner.failure == "RuntimeError: no graphs here"
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6, equal_nan=True)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_eager_twin_matches_the_unfused_cpu_default_without_a_nan():
    """The CPU default (foreach AdamW, no found_inf) and the fused kernel the step uses agree to 1e-6."""
    global NAN_AT
    data = batches(STEPS)
    saved, NAN_AT = NAN_AT, -1
    try:
        ref_losses, _, ref_model, _ = today(data, fused=False)
        losses, _, model, _, _ = twin(data)
    finally:
        NAN_AT = saved
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_guard_counts_bad_steps_and_names_the_first():
    data = batches(STEPS)
    *_, guard = twin(data[:SAVE_AT])
    assert guard.read() == (1, NAN_AT)
    assert guard.read() == (1, -1)  # the first bad step is reported once


def test_no_host_read_inside_the_step(monkeypatch):
    """A graph cannot hold a host read: none while the step runs (the spy of tests/callbacks/test_progress.py)."""
    model, opt, sched = build()
    guard = NonFiniteGuard(opt)
    lrs = lr_tensors(opt)
    runner = CapturedStep(lambda b: guarded_step(lambda: model(*b)[1], opt, guard, clip=CLIP), graphs=False)
    reads = []
    inside = [False]

    def spy(name):
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def wrapper(self, *a, **k):
            if inside[0]:
                reads.append((name, sys._getframe(1).f_code.co_filename))
            return original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy", "__index__"):
        spy(name)
    for batch in batches(4):
        runner.load_batch(batch)
        inside[0] = True
        with lrs_on_device(opt, lrs):
            runner()
        inside[0] = False
        sched.step()
    assert runner.eager_steps == 4
    assert reads == []
    inside[0] = True
    bool(guard.norm > 0)  # the spy works
    assert reads


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_lr_tensors_take_the_schedules_lr_for_the_step_only():
    model, opt, sched = build()
    lrs = lr_tensors(opt)
    for _ in range(5):
        sched.step()
        with lrs_on_device(opt, lrs):
            assert all(g["lr"] is t for g, t in zip(opt.param_groups, lrs))  # what fused AdamW reads
        assert [float(t) for t in lrs] == pytest.approx(sched.get_last_lr())  # filled in place
        # Outside the step: floats, for the scheduler, LearningRateMonitor and checkpoints.
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
        assert all(isinstance(g["lr"], float) for g in opt.param_groups)


def test_static_batch_keeps_its_buffers_and_runs_other_shapes_eagerly():
    seen = []
    runner = CapturedStep(lambda b: seen.append(b) or torch.zeros(()), graphs=False)
    a, b = batches(2)
    runner.load_batch(a)
    runner()
    runner.load_batch(b)
    runner()
    assert seen[0] is seen[1] is runner.static_batch and torch.equal(seen[1][0], b[0])
    short = (b[0][:2], b[1][:2])
    runner.load_batch(short)
    runner()
    assert seen[2] is short


def test_capturable_only_during_the_capture():
    _, opt, _ = build()
    with capturable(opt):
        assert all(g["capturable"] for g in opt.param_groups)
    assert not any(g["capturable"] for g in opt.param_groups)  # no warning on eager steps, none saved


# -- where it applies -------------------------------------------------------------------------------

APPLIES = dict(device="cuda", precision="bf16-mixed")


def test_captured_where_it_applies():
    path = choose_step_path(None, **APPLIES)
    assert path.captured and path.line().startswith("training step: captured (model.capture=null")
    assert choose_step_path(None, device="cuda", precision="32-true").captured


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(device="cpu"), "CUDA graphs need a CUDA device, this run is on cpu"),
        (dict(accumulate_grad_batches=4), "trainer.accumulate_grad_batches=4"),
        (dict(precision="16-mixed", grad_scaler=True), "fp16 with a grad scaler"),
        (dict(precision="bf16-true"), "precision bf16-true"),
        (dict(world_size=2), "several processes"),
        (dict(single_device=False), "several processes or a distributed strategy"),
        (dict(fused=False), "model.optim.fused=false"),
        (dict(clip_algorithm="value"), "gradient_clip_algorithm=value"),
        (dict(compile_mode="reduce-overhead"), "model.compile_mode=reduce-overhead"),
        (dict(closure_hooks=["InjectFault.on_before_backward"]), "InjectFault.on_before_backward would run"),
    ],
)
def test_each_fallback_names_its_reason(kwargs, reason):
    path = choose_step_path(None, **{**APPLIES, **kwargs})
    assert path.name == EAGER and reason in path.reason, path.reason
    assert path.line() == f"training step: eager ({path.reason})"
    with pytest.raises(ConfigError, match=r"model.capture=true cannot apply: .*Set model.capture: null"):
        choose_step_path(True, **{**APPLIES, **kwargs})


def test_capture_false_is_eager_everywhere():
    assert choose_step_path(False, **APPLIES) == StepPath(EAGER, "model.capture=false")
    assert choose_step_path(True, **APPLIES).reason == "model.capture=true"


def test_captured_path_constants():
    assert captured.WARMUP_STEPS >= 1 and CAPTURED != EAGER


# -- on a GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_graph_replay_matches_eager_in_bf16_over_50_steps():
    """The same step, captured (after 3 warmup steps) vs eager, bf16 autocast, 50 steps with a NaN
    skip and a restore: losses and weights within bf16 tolerance; the graph was really replayed."""
    global STEPS, SAVE_AT, NAN_AT
    saved = STEPS, SAVE_AT, NAN_AT
    STEPS, SAVE_AT, NAN_AT = 50, 20, 30
    try:
        data = batches(STEPS, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            eager_losses, _, eager_model, _, _ = twin(data, device="cuda", graphs=False, clip=1.0)
            losses, norms, model, _, guard = twin(data, device="cuda", graphs=True, clip=1.0)
    finally:
        STEPS, SAVE_AT, NAN_AT = saved
    assert torch.isnan(losses[30]) and torch.isfinite(losses[31:]).all()
    torch.testing.assert_close(losses, eager_losses, rtol=2e-2, atol=2e-2, equal_nan=True)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)
    assert guard.read() == (1, 30 - 20)  # counted from the restore at step 20


# -- in Lightning: the seam is GPTMiniModule.optimizer_step ------------------------------------------

LIGHTNING_NAN_AT = 3


class Record(pl.Callback):
    """Loss, pre-clip grad norm and lr of every step; a NaN poured into step LIGHTNING_NAN_AT's loss."""

    captured_step_aware = True  # it touches nothing between backward and the optimizer step

    def __init__(self) -> None:
        self.losses, self.norms, self.lrs, self.paths, self.grads = [], [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if hasattr(pl_module, "poison"):
            pl_module.poison.fill_(float("nan") if trainer.global_step == LIGHTNING_NAN_AT else 1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].clone())
        self.norms.append(trainer.callback_metrics["train/grad_norm"].clone())
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])
        self.paths.append(pl_module.runs_own_step())
        self.grads.append(tuple(p.grad.data_ptr() for p in pl_module.parameters()))


@pytest.fixture
def poisoned(monkeypatch):
    """batch_loss times a device tensor the Record callback sets: how a NaN reaches a graph."""
    original = GPTMiniModule.batch_loss

    def batch_loss(self, batch):
        if not hasattr(self, "poison"):
            self.poison = torch.ones((), device=self.device)
        return original(self, batch) * self.poison

    monkeypatch.setattr(GPTMiniModule, "batch_loss", batch_loss)


def force_twin(monkeypatch) -> list:
    """The captured path on a CPU: CapturedStep's warmup, capture and replays with SimulatedGraph
    (every replay runs guarded_step eagerly: its eager twin). Returns the runners built."""
    runners = []

    def simulated(step, capture_context, graphs):
        runners.append(SimulatedCapture(step, capture_context))
        return runners[-1]

    monkeypatch.setattr(module_mod, "choose_step_path", lambda *a, **k: StepPath(CAPTURED, "test: eager twin"))
    monkeypatch.setattr(module_mod, "CapturedStep", simulated)
    return runners


def lightning_fit(args, tmp_path, name, ckpt_path=None):
    from gptmini.cli import make_cli

    rec = Record()
    ck = ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=6, save_top_k=-1)
    cli = make_cli(args=[a for a in args if a != "fit"], run=False)
    cli.trainer.callbacks.extend([rec, ck])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli, rec


def test_eager_twin_in_lightning_matches_todays_path_and_resumes(cli_args, tmp_path, monkeypatch, poisoned, caplog):
    """Same CLI fit (fused AdamW, clipping, validation mid-run, a NaN skipped at step 3), today's
    Lightning closure vs the captured path's eager twin: losses, grad norms, lrs, global_step,
    scheduler and weights to 1e-6; a resume from the twin's step-6 checkpoint lands on the same
    weights; either path resumes the other's checkpoint."""
    # tiny.yaml's lr (lr=None): at the test shape's 5x larger steps, 12 steps amplify the two paths'
    # float rounding past 1e-6; the overfit check these steps would shorten is skipped here anyway.
    args = cli_args(max_steps=12, lr=None) + ["--model.optim.fused=true", "--fault_guard.max_skipped_steps=1"]
    # Not this test's subject (its deepcopy of a module with a runner: tests/callbacks/test_progress.py's spy).
    monkeypatch.setattr(OverfitCheck, "run", lambda self, *a: CheckItem(self.key, self.title, "skip", "test"))
    with pytest.warns(UserWarning, match=f"at step {LIGHTNING_NAN_AT}.*update skipped"):
        today_cli, today_rec = lightning_fit(args, tmp_path, "today")
    assert "training step: eager (CUDA graphs need a CUDA device, this run is on cpu)" in caplog.text
    caplog.clear()
    runners = force_twin(monkeypatch)
    with pytest.warns(UserWarning, match=f"at step {LIGHTNING_NAN_AT}.*update skipped"):
        twin_cli, twin_rec = lightning_fit(args, tmp_path, "twin")
    assert "training step: captured (test: eager twin)" in caplog.text
    (runner,) = runners  # warmup, capture after the step-0 checks, then replays over the static batch
    assert runner.eager_steps == captured.WARMUP_STEPS and runner.graph.replays == 12 - captured.WARMUP_STEPS
    assert not any(today_rec.paths) and all(twin_rec.paths)
    # The grads a graph writes stay the same tensors, through the validation after step 6 too.
    assert len(set(twin_rec.grads)) == 1

    def close(a, b):
        torch.testing.assert_close(torch.stack(a), torch.stack(b), rtol=1e-6, atol=1e-6, equal_nan=True)

    assert torch.isnan(twin_rec.losses[LIGHTNING_NAN_AT]) and len(twin_rec.losses) == 12
    close(twin_rec.losses, today_rec.losses)
    close(twin_rec.norms, today_rec.norms)
    assert sum(twin_rec.lrs, []) == pytest.approx(sum(today_rec.lrs, []), rel=1e-6)
    assert len({tuple(lr) for lr in twin_rec.lrs}) > 6  # the lr changed along the way
    assert twin_cli.trainer.global_step == today_cli.trainer.global_step == 12
    assert twin_cli.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 12
    today_weights = today_cli.model.state_dict()
    for k, v in twin_cli.model.state_dict().items():
        torch.testing.assert_close(v, today_weights[k], rtol=1e-6, atol=1e-6, msg=k)

    ckpt = tmp_path / "twin" / "epoch=0-step=6.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    # Lightning's loop counters (optimizer steps, zero_grad calls, batches) as on today's path.
    assert saved["loops"] == torch.load(tmp_path / "today" / "epoch=0-step=6.ckpt", weights_only=True)["loops"]
    assert saved["lr_schedulers"] == torch.load(tmp_path / "today" / "epoch=0-step=6.ckpt", weights_only=True)["lr_schedulers"]
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in saved["optimizer_states"][0]["param_groups"])
    resumed_cli, resumed_rec = lightning_fit(args, tmp_path, "resumed", ckpt_path=ckpt)
    assert all(resumed_rec.paths) and runners[-1].graph.replays == 6 - captured.WARMUP_STEPS  # after the restore
    close(resumed_rec.losses, twin_rec.losses[6:])
    for cli in (today_cli, twin_cli, resumed_cli):  # the skip counted once, and carried by the resume
        (guard,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, FaultGuard)]
        assert guard.state_dict() == {"skipped": 1}
    for k, v in resumed_cli.model.state_dict().items():
        torch.testing.assert_close(v, today_weights[k], rtol=1e-6, atol=1e-6, msg=k)
    monkeypatch.setattr(module_mod, "choose_step_path", choose_step_path)  # today's path resumes it too
    cross_cli, cross_rec = lightning_fit(args, tmp_path, "cross", ckpt_path=ckpt)
    assert not any(cross_rec.paths)
    close(cross_rec.losses, today_rec.losses[6:])


def test_closure_hook_owners_name_who_would_be_skipped(tiny_model_cfg):
    from fault_injection import InjectFault
    from test_module import LoudModule

    trainer = pl.Trainer(
        accelerator="cpu", logger=False,
        callbacks=[InjectFault(at_step=3), FaultGuard(), Record(), ModelCheckpoint()],
    )
    assert module_mod.closure_hook_owners(trainer, GPTMiniModule(tiny_model_cfg)) == [
        "InjectFault.on_before_backward"  # FaultGuard and Record say they know the captured step
    ]
    assert "LoudModule.training_step" in module_mod.closure_hook_owners(trainer, LoudModule(tiny_model_cfg))


def test_fit_start_asks_with_the_trainers_settings(tiny_model_cfg, tiny_data, monkeypatch, caplog):
    from fault_injection import InjectFault

    asked = {}

    def choose(setting, **kwargs):
        asked.update(kwargs, setting=setting)
        return choose_step_path(setting, **kwargs)

    monkeypatch.setattr(module_mod, "choose_step_path", choose)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, max_steps=1, accumulate_grad_batches=2,
        gradient_clip_val=1.0, callbacks=[InjectFault(at_step=99), FaultGuard()],
    )
    module = GPTMiniModule(tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=0))
    trainer.fit(module, datamodule=tiny_data)
    assert asked == dict(
        setting=None, device=torch.device("cpu"), precision="32-true", accumulate_grad_batches=2,
        grad_scaler=False, world_size=1, single_device=True, fused=False, clip_algorithm=None,
        compile_mode=None, closure_hooks=["InjectFault.on_before_backward"],
    )
    assert caplog.text.count("training step: ") == 1  # one line, at fit start
    assert not module.runs_own_step()


def test_capture_true_where_it_cannot_apply_is_one_error_line(cli_args, capsys):
    from gptmini.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(max_steps=6) + ["--model.capture=true"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: model.capture=true cannot apply: CUDA graphs need a CUDA device, this run is on cpu. "
        "Set model.capture: null (capture where it applies) or false."
    )


@pytest.mark.gpu
def test_lightning_captured_step_matches_its_closure_path_in_bf16_over_50_steps(cli_args):
    """The CLI fit on CUDA (bf16-mixed, compiled, fused AdamW, every tiny.yaml callback): captured by
    default, and within bf16 noise of the same fit with model.capture=false over 50 steps."""
    from conftest import fit_cli

    args = cli_args(max_steps=50) + ["--trainer.accelerator=cuda", "--trainer.precision=bf16-mixed"]
    runs = {}
    for capture in ("null", "false"):
        rec = Record()
        cli = fit_cli([*args, f"--model.capture={capture}"], rec)
        assert cli.model.step_path.captured is (capture == "null"), cli.model.step_path
        assert all(rec.paths) is (capture == "null") and cli.trainer.global_step == 50
        if capture == "null":
            assert cli.model._runner is None  # released at train end
        runs[capture] = (torch.stack(rec.losses).float().cpu(), cli.model.state_dict())
    (captured_losses, captured_weights), (eager_losses, eager_weights) = runs["null"], runs["false"]
    assert captured_losses[-1] < captured_losses[0]  # it trained
    torch.testing.assert_close(captured_losses, eager_losses, rtol=2e-2, atol=2e-2)
    for k, v in captured_weights.items():
        torch.testing.assert_close(v.float(), eager_weights[k].float(), rtol=5e-2, atol=5e-3, msg=k)


@pytest.mark.gpu
def test_cli_fit_on_the_shipped_10m_config_is_captured_and_resumes(tmp_path):
    """`gptmini.cli fit --config configs/10m.yaml` as shipped (every callback, the embedded corpus),
    40 steps on CUDA in a child process: the captured step is chosen and says so, the run finishes
    with finite weights, and a resume from its step-20 checkpoint (captured again, after the restore)
    ends within bf16 noise of it."""
    import subprocess
    from pathlib import Path

    from conftest import cli_env

    repo = Path(__file__).parent.parent
    ck = tmp_path / "ck"
    args = [
        sys.executable, "-m", "gptmini.cli", "fit", "--config", str(repo / "configs" / "10m.yaml"),
        "--trainer.max_steps=40", "--trainer.val_check_interval=20", "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=10", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--data.cache_dir={tmp_path / 'cache'}", "--model.schedule.warmup_steps=4",
        "--fault_guard.check_every_n_steps=10",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ck}", "--trainer.callbacks.every_n_train_steps=20",
        "--trainer.callbacks.save_top_k=-1",
    ]
    line = "training step: captured (model.capture=null: CUDA, one process, no accumulation)"
    first = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-4000:]
    assert line in first.stderr, first.stderr[-4000:]
    second = subprocess.run(
        [*args, "--ckpt_path", str(ck / "epoch=0-step=20.ckpt")],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    assert line in second.stderr
    runs = tmp_path / "runs" / "10m"
    a = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    b = torch.load(runs / "version_1" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert a["global_step"] == b["global_step"] == 40
    for k, v in a["state_dict"].items():
        assert torch.isfinite(v).all(), k
        torch.testing.assert_close(b["state_dict"][k].float(), v.float(), rtol=5e-2, atol=5e-3, msg=k)


def test_capture_is_a_runtime_setting_on_resume(tmp_path):
    """--ckpt_path with another model.capture resumes (same math, another way to run it)."""
    from gptmini.train.resume import resume_settings

    hparams = {"arch": {"n_embd": 32}, "optim": {"lr": 0.002}, "compile": None, "compile_mode": None, "capture": None}
    settings = resume_settings(str(tmp_path / "x.ckpt"), hparams, {"capture": False}, {"capture": False})
    assert settings["capture"] is False
    old = {k: v for k, v in hparams.items() if k != "capture"}  # a checkpoint from before the field
    assert resume_settings(str(tmp_path / "x.ckpt"), old, {}, {"capture": None})["capture"] is None
