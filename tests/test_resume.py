"""Exact resume through the CLI: SIGTERM and SIGKILL mid-run, `--ckpt_path last`, same losses and lr.

Epochs are cut to 6 batches (limit_train_batches) so the runs cross epoch boundaries, and
checkpoints come every 4 steps: the SIGKILL case resumes from step 12, the last batch of an epoch,
the SIGTERM case from the checkpoint the guard writes at step 7, in the middle of one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import attribute_docstrings_off, callbacks_args, scalars_by_step, tiny_cli_args

from gptmini.cli import main
from gptmini.core.checkpoint import load_model, read_checkpoint

MAX_STEPS = 16
EVERY = 4
TESTS_DIR = Path(__file__).parent
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
    ]


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gptmini.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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


@pytest.mark.parametrize(("kind", "at_step", "resumed_from"), [("sigkill", 13, 12), ("sigterm", 6, 7)])
def test_exact_resume_after_interrupt(
    reference, tmp_path, corpus_file, data_cache, kind, at_step, resumed_from
):
    args = run_args(tmp_path, corpus_file, data_cache, fault={"at_step": at_step, "kind": kind})
    if kind == "sigkill":  # a hard kill needs a process of its own
        proc = run_subprocess(args)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    else:  # SIGTERM is handled by Lightning: in this process, through the same main()
        with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 143  # 128 + SIGTERM: the process reports "stopped", not "finished"
    first = tmp_path / "runs" / "tiny" / "version_0"
    assert read_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == resumed_from
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and "events" not in p.name}

    with attribute_docstrings_off():
        main(run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path=last"])

    # The resumed run writes a new version folder; the interrupted run's files are untouched.
    assert {p: p.read_bytes() for p in before} == before
    resumed = tmp_path / "runs" / "tiny" / "version_1"
    saved = yaml.safe_load((resumed / "config.yaml").read_text())
    assert saved["ckpt_path"] == str(first / "checkpoints" / "last.ckpt")
    compare(reference, resumed, resumed_from)
