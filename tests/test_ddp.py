"""DDP on CPU (gloo) through the CLI matches one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import callbacks_args, scalars_by_step, tiny_cli_args

from gptmini.cli import main
from gptmini.core.checkpoint import load_model

REPO = Path(__file__).parent.parent
MAX_STEPS = 6

pytestmark = pytest.mark.usefixtures("no_attribute_docstrings")


def args(root: Path, corpus_file: Path, data_cache: Path, batch_size: int) -> list[str]:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "gptmini.callbacks.throughput.ThroughputLogger"},
    ]
    return tiny_cli_args(root, corpus_file, data_cache, MAX_STEPS) + [
        *callbacks_args(root, callbacks),
        f"--data.batch_size={batch_size}",
        "--trainer.val_check_interval=6",
        "--trainer.limit_val_batches=4",
    ]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(tmp_path, corpus_file, data_cache):
    torch.set_num_threads(1)
    main(args(tmp_path / "single", corpus_file, data_cache, batch_size=8))
    ddp = args(tmp_path / "ddp", corpus_file, data_cache, batch_size=4) + [
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "gptmini.cli", *ddp],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    (single,) = (tmp_path / "single" / "runs" / "tiny").iterdir()
    (multi,) = (tmp_path / "ddp" / "runs" / "tiny").iterdir()
    a = load_model(single / "checkpoints" / "last.ckpt").state_dict()
    b = load_model(multi / "checkpoints" / "last.ckpt").state_dict()
    weight_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    s, m = scalars_by_step(single), scalars_by_step(multi)
    val_diff = abs(s["val/loss"][MAX_STEPS - 1] - m["val/loss"][MAX_STEPS - 1])
    print(
        f"\nDDP 2x4 vs 1x8 after {MAX_STEPS} steps: max |weight diff| {weight_diff:.3g}, |val loss diff| {val_diff:.3g}"
    )
    assert weight_diff < 1e-5
    assert val_diff < 1e-5
    # val/bpb sums nats and bytes over both ranks' shards (BitsPerByte's synced states)
    assert m["val/bpb"][MAX_STEPS - 1] == pytest.approx(s["val/bpb"][MAX_STEPS - 1], rel=1e-5)
    # and the run record counts both processes' tokens
    tokens = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["gptmini_run"]["tokens_seen"] for r in (single, multi)]
    assert tokens[0] == tokens[1] > 0
    assert m["lr/decay"] == s["lr/decay"]
    # Throughput counts both processes.
    for step, total in m["throughput/tokens_per_sec"].items():
        assert total == pytest.approx(2 * m["throughput/tokens_per_sec_per_device"][step], rel=1e-6)
