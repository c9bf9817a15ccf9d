"""Exact resume through the CLI: SIGTERM, Ctrl-C and SIGKILL mid-run, `--ckpt_path last`, same losses and lr.

Epochs are cut to 6 batches (limit_train_batches) so the runs cross epoch boundaries, and
checkpoints come every 4 steps: the SIGKILL case resumes from step 12, the last batch of an epoch,
the SIGTERM and Ctrl-C cases from the checkpoint the guard writes at steps 7 or 9, in the middle of
one. The "-group" cases signal the whole process group from outside, as `timeout`, `scancel` and a
terminal's Ctrl-C do, with DataLoader workers running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import attribute_docstrings_off, callbacks_args, cli_env, scalars_by_step, tiny_cli_args

from gptmini.callbacks.fault_guard import resume_command
from gptmini.cli import main
from gptmini.core.checkpoint import load_model, read_checkpoint
from gptmini.train import run_folder

MAX_STEPS = 16
EVERY = 4
TESTS_DIR = Path(__file__).parent.parent
REPO = TESTS_DIR.parent


def run_args(root: Path, corpus_file: Path, data_cache: Path, fault: dict | None = None) -> list[str]:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": EVERY, "save_last": True, "save_top_k": -1},
        },
    ]
    if fault:
        callbacks.append({"class_path": "fault_injection.InjectFault", "init_args": fault})
    return tiny_cli_args(root, corpus_file, data_cache, MAX_STEPS) + [
        *callbacks_args(root, callbacks),
        "--trainer.limit_train_batches=6",
        "--trainer.val_check_interval=5",
        "--trainer.limit_val_batches=2",
        "--data.window_offset=random_per_epoch",  # the grid moves each epoch: resume must still be exact
    ]


def run_subprocess(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m gptmini.cli ARGS`` in a child process of this checkout, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gptmini.cli", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def signal_group_when_paused(args: list[str], marker: Path, *signums: int) -> tuple[int, str]:
    """Run the CLI as a job of its own (new process group), wait for InjectFault's pause, send each
    signal to the whole group, then let the run go on. Returns (exit status, output)."""
    log = marker.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gptmini.cli", *args],
            cwd=REPO,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A terminal's default, even when the tests run in the background (where SIGINT is ignored).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(lambda: marker.exists(), proc, log)
        for i, signum in enumerate(signums):
            if i:  # the next Ctrl-C only once the first one has been handled
                wait_for(lambda: "Ctrl-C: finishing the current step" in log.read_text(), proc, log)
            os.killpg(proc.pid, signum)
        Path(f"{marker}.go").touch()
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return status, log.read_text()


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited with {proc.returncode} too early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine it costs 10x.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_file, data_cache) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference")
    with attribute_docstrings_off():
        main(run_args(root, corpus_file, data_cache))
    (run,) = (root / "runs" / "tiny").iterdir()
    return {"run": run, "scalars": scalars_by_step(run)}


def compare(reference: dict, resumed_run: Path, resumed_from: int) -> float:
    ref, got = reference["scalars"], scalars_by_step(resumed_run)
    steps = sorted(got["train/loss"])
    # The resumed run logs exactly the steps after the checkpoint: none repeated, none skipped.
    assert steps == [s for s in sorted(ref["train/loss"]) if s >= resumed_from], steps
    worst = 0.0
    for s in steps:
        a, b = ref["train/loss"][s], got["train/loss"][s]
        worst = max(worst, abs(a - b) / abs(a))
    assert worst <= 1e-5, f"largest relative loss difference {worst:.3g}"
    lr_tags = [t for t in ref if t.startswith("lr")]
    assert lr_tags
    for tag in lr_tags:
        for s, v in got[tag].items():
            assert v == pytest.approx(ref[tag][s], rel=1e-12, abs=0), (tag, s)
        assert set(got[tag]) == {s for s in ref[tag] if s >= resumed_from}
    print(f"\nresumed from step {resumed_from}: largest relative loss difference {worst:.3g}")
    return worst


def test_checkpoint_contents(reference):
    ckpts = reference["run"] / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert "last.ckpt" in names and len(names) == MAX_STEPS // EVERY + 1, names  # every 4 steps + last
    ckpt = read_checkpoint(ckpts / "last.ckpt")
    assert ckpt["global_step"] == MAX_STEPS
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"][0]["last_epoch"] == MAX_STEPS
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["epoch"] == (MAX_STEPS - 1) // 6 and loader_state["batches_done"] == MAX_STEPS % 6
    config = yaml.safe_load(ckpt["gptmini_config"])
    assert config["trainer"]["max_steps"] == MAX_STEPS and config["model"]["arch"]["n_embd"] == 32
    assert not [k for k in ckpt["state_dict"] if "_orig_mod." in k]
    model = load_model(ckpts / "last.ckpt")
    assert model.cfg.n_embd == 32 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("kind", "at_step", "resumed_from"),
    [("sigkill", 13, 12), ("sigterm", 6, 7), ("SIGTERM-group", 8, 9), ("SIGINT-group", 6, 7)],
)
def test_exact_resume_after_interrupt(
    reference, tmp_path, corpus_file, data_cache, kind, at_step, resumed_from
):
    args = run_args(tmp_path, corpus_file, data_cache, fault={"at_step": at_step, "kind": kind})
    first = tmp_path / "runs" / "tiny" / "version_0"
    last = first / "checkpoints" / "last.ckpt"
    if kind == "sigkill":  # a hard kill needs a process of its own
        proc = run_subprocess(args)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    elif kind == "sigterm":  # SIGTERM is handled by Lightning: in this process, through the same main()
        with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 143  # 128 + SIGTERM: the process reports "stopped", not "finished"
    else:  # to the whole process group from outside (timeout, scancel, Ctrl-C), workers running
        signum = getattr(signal, kind.split("-")[0])
        marker = tmp_path / "paused"
        fault = {"at_step": at_step, "kind": "pause", "marker": str(marker)}
        args = run_args(tmp_path, corpus_file, data_cache, fault) + ["--data.num_workers=2"]
        status, out = signal_group_when_paused(args, marker, signum)
        assert status == 128 + signum, out[-3000:]  # 143 or 130
        assert "DataLoader worker" not in out
        # One line: where the checkpoint is and the command that resumes from it.
        (line,) = [line for line in out.splitlines() if f"saved {last}" in line]
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        assert line.startswith(f"{what}: saved {last} at step {resumed_from}; resume with: python -m gptmini.cli fit")
        assert line.endswith("--data.num_workers=2 --ckpt_path last")
    assert read_checkpoint(last)["global_step"] == resumed_from
    # The run files, not the stale run.lock a SIGKILLed run leaves: the resume takes it over and removes it.
    before = {
        p: p.read_bytes()
        for p in first.rglob("*")
        if p.is_file() and "events" not in p.name and p.name != run_folder.LOCK_FILE
    }

    with attribute_docstrings_off():
        main(run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path=last"])

    # The resumed run writes a new version folder; the interrupted run's files are untouched.
    assert {p: p.read_bytes() for p in before} == before
    resumed = tmp_path / "runs" / "tiny" / "version_1"
    saved = yaml.safe_load((resumed / "config.yaml").read_text())
    assert saved["ckpt_path"] == str(first / "checkpoints" / "last.ckpt")
    compare(reference, resumed, resumed_from)


def test_second_ctrl_c_aborts_without_saving(tmp_path, corpus_file, data_cache):
    marker = tmp_path / "paused"
    fault = {"at_step": 1, "kind": "pause", "marker": str(marker)}  # before the first checkpoint
    args = run_args(tmp_path, corpus_file, data_cache, fault) + ["--data.num_workers=2"]
    status, out = signal_group_when_paused(args, marker, signal.SIGINT, signal.SIGINT)
    assert status == 1, out[-3000:]  # Lightning's KeyboardInterrupt shutdown
    assert "Detected KeyboardInterrupt" in out and "saved" not in out
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tiny_data, tiny_model_cfg):
    # nohup or `cmd &` in a script: SIGINT is ignored from the start, and a Ctrl-C meant for the
    # shell must not stop the run (FaultGuard takes SIGINT over only when it was not ignored).
    import lightning.pytorch as pl

    from gptmini.callbacks.fault_guard import FaultGuard
    from gptmini.core.optim import OptimConfig
    from gptmini.core.schedule import ScheduleConfig
    from gptmini.train.module import GPTMiniModule

    class CtrlC(pl.Callback):
        def __init__(self) -> None:
            self.handlers: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.handlers.append(signal.getsignal(signal.SIGINT))
            if trainer.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    ctrl_c = CtrlC()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[FaultGuard(), ctrl_c],
    )
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer.fit(module, datamodule=tiny_data)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # and left as it was
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.global_step == 3 and ctrl_c.handlers == [signal.SIG_IGN] * 3


def test_resume_command_repeats_the_command_line_with_ckpt_path_last():
    argv = ["/venv/bin/gptmini", "fit", "-c", "a b.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=x"]
    assert resume_command(argv) == "gptmini fit -c 'a b.yaml' --ckpt_path last"
    assert resume_command(["/src/gptmini/cli.py", "fit"]) == "python -m gptmini.cli fit --ckpt_path last"
