"""DDP on CPU (gloo, 2 processes Lightning starts) through the CLI, with the shipped configs as shipped
(every callback on, FaultGuard included): it finishes, matches one process with the same global
batch, logs the mean of the ranks' losses, and stops on SIGTERM with one save that resumes bitwise.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import attribute_docstrings_off, scalars_by_step
from shipped_runs import (
    DDP,
    MAX_STEPS,
    TIMEOUT,
    assert_no_traceback_of_ours,
    cli,
    log_text,
    only_run,
    run_config_callbacks,
    saved_lines,
    shipped_args,
    shipped_callbacks,
    start,
    wait_all,
    wait_for_file,
)

from gptmini.cli import main
from gptmini.core.checkpoint import load_model, read_checkpoint


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_with_every_shipped_callback(ddp_reference, tmp_path, corpus_file, data_cache):
    torch.set_num_threads(1)
    with attribute_docstrings_off():
        main(shipped_args(tmp_path / "single", corpus_file, data_cache, batch_size=8))
    single, multi = only_run(tmp_path / "single"), ddp_reference["run"]
    out = ddp_reference["out"]

    # Every callback of the shipped config ran, on the ranks it should (gptmini.train.ranks).
    assert run_config_callbacks(multi) == shipped_callbacks("tiny.yaml")
    assert (multi / "lr_curve.png").is_file()  # LRCurveCheck: every rank read the folder, rank 0 drew
    assert out.count("Step-0 checklist") == 1  # Checklist printed by rank 0 only...
    assert out.count("[step-0 checks] initial loss") == 1 and "overfit one batch" in out  # ...after both checks
    ckpts = sorted(p.name for p in (multi / "checkpoints").iterdir())
    assert ckpts == [f"best-step={MAX_STEPS}.ckpt", "last.ckpt"]  # BestCheckpoint, ModelCheckpoint(save_last)
    assert out.count("best checkpoint (val/loss") == 1
    assert b"samples/0" in b"".join(p.read_bytes() for p in multi.glob("events.out.tfevents.*"))  # TextSamples
    assert_no_traceback_of_ours(out)

    a = load_model(single / "checkpoints" / "last.ckpt").state_dict()
    b = load_model(multi / "checkpoints" / "last.ckpt").state_dict()
    weight_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    s, m = scalars_by_step(single), ddp_reference["scalars"]
    val_diff = abs(s["val/loss"][MAX_STEPS - 1] - m["val/loss"][MAX_STEPS - 1])
    # train/loss: each rank's loss is the mean over its 4 rows; their mean is the one process's
    # loss over the same 8 rows (rank 0's own share differs from it by ~0.05).
    loss_diff = max(abs(s["train/loss"][k] - m["train/loss"][k]) for k in s["train/loss"])
    print(f"\nDDP 2x4 vs 1x8 after {MAX_STEPS} steps: max |weight diff| {weight_diff:.3g}, "
          f"|val loss diff| {val_diff:.3g}, max |train loss diff| {loss_diff:.3g}")
    assert sorted(m["train/loss"]) == sorted(s["train/loss"]) == list(range(MAX_STEPS))
    assert loss_diff < 1e-5
    assert weight_diff < 1e-5
    assert val_diff < 1e-5
    # val/bpb sums nats and bytes over both ranks' shards (BitsPerByte's synced states)
    assert m["val/bpb"][MAX_STEPS - 1] == pytest.approx(s["val/bpb"][MAX_STEPS - 1], rel=1e-5)
    # and the run record counts both processes' tokens
    tokens = [read_checkpoint(r / "checkpoints" / "last.ckpt")["gptmini_run"]["tokens_seen"] for r in (single, multi)]
    assert tokens[0] == tokens[1] > 0
    assert m["lr/decay"] == s["lr/decay"]
    # Throughput counts both processes.
    for step, total in m["throughput/tokens_per_sec"].items():
        assert total == pytest.approx(2 * m["throughput/tokens_per_sec_per_device"][step], rel=1e-6)


def assert_resumed_bitwise(ref: dict, runs: Path) -> None:
    got = scalars_by_step(runs / "version_1")
    assert sorted(got["train/loss"]) == [3, 4, 5]
    for tag in ("train/loss", "val/loss"):
        for step, value in got[tag].items():
            assert value == ref[tag][step], (tag, step)  # bitwise: same processes, same order


@pytest.mark.slow
def test_ddp_sigterm_saves_once_and_resumes_bitwise(ddp_reference, tmp_path, corpus_file, data_cache):
    # Rank 1 pauses after step 3 (rank 0 waits for it inside a collective); SIGTERM goes to the
    # whole process group (Lightning's launcher and its child), as `timeout` or a terminal does.
    marker = tmp_path / "paused"
    fault = {"at_step": 2, "kind": "pause", "marker": str(marker), "rank": 1}
    proc = start(cli(shipped_args(tmp_path, corpus_file, data_cache, fault=fault) + DDP), tmp_path / "stop.log")
    try:
        wait_for_file(marker, [proc], tmp_path)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        Path(f"{marker}.go").touch()
    finally:
        status = wait_all([proc], TIMEOUT)
    out = log_text(tmp_path)
    assert status == [128 + signal.SIGTERM], out[-4000:]
    assert_no_traceback_of_ours(out)
    runs = tmp_path / "runs" / "tiny"
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = saved_lines(out)  # once: rank 0 says it for both
    assert line.startswith(f"SIGTERM: saved {last} at step 3; resume with: python -m gptmini.cli fit")
    assert read_checkpoint(last)["global_step"] == 3

    proc = start(cli(shipped_args(tmp_path, corpus_file, data_cache) + DDP + ["--ckpt_path", "last"]), tmp_path / "resume.log")
    assert wait_all([proc], TIMEOUT) == [0], log_text(tmp_path)[-4000:]
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    assert_resumed_bitwise(ddp_reference["scalars"], runs)


@pytest.mark.slow
def test_10m_config_every_callback_on_two_cpu_processes(tmp_path, corpus_file, data_cache):
    # configs/10m.yaml's own callback settings (full-batch overfit check, checklist with every
    # item, 128-token samples), bf16-mixed and 2 loader workers per rank; 2 steps of a tiny model.
    args = shipped_args(tmp_path, corpus_file, data_cache, config="10m.yaml", max_steps=2, batch_size=2)
    # 128 wide: its 100-step full-batch overfit check needs that much width at lr 6e-4 (2 rows x 32 tokens).
    args += ["--trainer.val_check_interval=2", "--model.schedule.warmup_steps=1", "--model.arch.n_embd=128"]
    proc = start(cli(args + DDP), tmp_path / "10m.log")
    assert wait_all([proc], TIMEOUT) == [0], log_text(tmp_path)[-4000:]
    run = only_run(tmp_path)
    out = log_text(tmp_path)
    assert run_config_callbacks(run) == shipped_callbacks("10m.yaml")
    assert (run / "lr_curve.png").is_file()
    assert out.count("Step-0 checklist") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-step=2.ckpt", "last.ckpt"]
    assert_no_traceback_of_ours(out)


@pytest.mark.slow
def test_a_step0_check_failing_on_one_rank_stops_every_rank(tmp_path, corpus_file, data_cache):
    # Each rank checks its own first batch; when only rank 1's check fails, both stop before step 0
    # (agreed: gptmini.train.ranks.failed_on_any_rank), instead of rank 0 waiting in step 0's all-reduce.
    fail = {"class_path": "fault_injection.FailInitialLossCheckOnRank", "init_args": {"rank": 1}}
    args = shipped_args(tmp_path, corpus_file, data_cache) + ["--trainer.callbacks+=" + json.dumps(fail)]
    proc = start(cli(args + DDP), tmp_path / "fail.log")
    (status,) = wait_all([proc], TIMEOUT)
    out = log_text(tmp_path)
    assert status not in (0, "hung"), out[-4000:]
    assert "initial loss check failed" in out  # rank 1's own message
    assert "a step-0 check failed in another process of this run" in out  # rank 0's
    assert "Connection closed by peer" not in out and "loss=" not in out  # no step was started
