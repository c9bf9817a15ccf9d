"""The two stops test_resume.py does not cover: a SIGTERM during validation and one inside a
gradient-accumulation window. Both resume exactly: the same training losses and learning rates as an
uninterrupted run, and the interrupted validation is repeated in full (the same val/loss).

Accumulation is 4 micro-batches per optimizer step; epochs are cut to 12 micro-batches (3 steps)
and validation runs every 8 micro-batches (every 2 steps), across epoch boundaries.
"""

from __future__ import annotations

import signal

import pytest
import torch
from conftest import attribute_docstrings_off, callbacks_args, scalars_by_step, tiny_cli_args
from test_resume import signal_group_when_paused

from gptmini.cli import main
from gptmini.core.checkpoint import read_checkpoint

MAX_STEPS = 6
ACCUMULATE = 4


def run_args(root, corpus_file, data_cache, fault: dict | None = None) -> list[str]:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
    ]
    if fault:
        callbacks.append({"class_path": "fault_injection.InjectFault", "init_args": fault})
    return tiny_cli_args(root, corpus_file, data_cache, MAX_STEPS) + [
        *callbacks_args(root, callbacks),
        f"--trainer.accumulate_grad_batches={ACCUMULATE}",
        "--trainer.limit_train_batches=12",
        "--trainer.val_check_interval=8",
        "--trainer.limit_val_batches=3",
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_file, data_cache) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference")
    with attribute_docstrings_off():
        main(run_args(root, corpus_file, data_cache))
    (run,) = (root / "runs" / "tiny").iterdir()
    return scalars_by_step(run)


def assert_resumed_exactly(ref: dict, root, resumed_from: int) -> None:
    got = scalars_by_step(root / "runs" / "tiny" / "version_1")
    assert sorted(got["train/loss"]) == [s for s in sorted(ref["train/loss"]) if s >= resumed_from]
    for tag in ("train/loss", "val/loss", "lr/decay", "lr/no_decay"):
        assert got[tag], tag
        for s, v in got[tag].items():
            assert v == pytest.approx(ref[tag][s], rel=1e-6, abs=0), (tag, s)
    # Every validation of the uninterrupted run from the stop on, the interrupted one included.
    assert set(got["val/loss"]) == {s for s in ref["val/loss"] if s >= resumed_from - 1}


def test_sigterm_during_validation_repeats_it_and_resumes_exactly(reference, tmp_path, corpus_file, data_cache):
    # After validation batch 0 of 3 of the validation that follows step 2 (global_step 2).
    fault = {"at_step": 1, "kind": "sigterm", "during": "validation", "batch": 0}
    with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
        main(run_args(tmp_path, corpus_file, data_cache, fault))
    assert info.value.code == 143
    first = tmp_path / "runs" / "tiny" / "version_0"
    assert read_checkpoint(first / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert "val/loss" not in scalars_by_step(first)  # stopped before the validation's end

    with attribute_docstrings_off():
        main(run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path=last"])
    assert_resumed_exactly(reference, tmp_path, resumed_from=2)


def test_sigterm_mid_accumulation_finishes_the_window_then_saves(reference, tmp_path, corpus_file, data_cache):
    # SIGTERM to the whole process group after micro-batch 1 (of 0-3) of step 3's window: the
    # window's two remaining micro-batches and its optimizer step run first.
    marker = tmp_path / "paused"
    fault = {"at_step": 3, "kind": "pause", "marker": str(marker), "during": "micro_batch", "batch": 1}
    status, out = signal_group_when_paused(run_args(tmp_path, corpus_file, data_cache, fault), marker, signal.SIGTERM)
    assert status == 143, out[-3000:]
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = [line for line in out.splitlines() if f"saved {last}" in line]
    assert line.startswith(f"SIGTERM: saved {last} at step 4; resume with:")
    assert read_checkpoint(last)["global_step"] == 4

    with attribute_docstrings_off():
        main(run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path=last"])
    assert_resumed_exactly(reference, tmp_path, resumed_from=4)
