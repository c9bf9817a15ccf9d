"""Cluster launches on one machine: README's torchrun command as 2 nodes x 1 process (gloo, CPU),
SLURM's requeue signals with srun's environment and a stand-in ``scontrol``, and FSDP on CPU.

Every run is a real CLI process (or a launcher of such processes) signalled from outside, as a
scheduler does: no in-process shortcuts.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import attribute_docstrings_off, cli_env, scalars_by_step
from shipped_runs import (
    DDP,
    PACKAGE,
    REPO,
    TIMEOUT,
    assert_no_traceback_of_ours,
    cli,
    free_port,
    log_text,
    our_frames,
    saved_lines,
    shipped_args,
    start,
    wait_all,
    wait_for_file,
)
from test_resume import run_subprocess

from gptmini.callbacks.fault_guard import resume_command
from gptmini.cli import main
from gptmini.core.checkpoint import read_checkpoint


def run_args(root: Path, corpus_file: Path, data_cache: Path, fault: dict | None = None) -> list[str]:
    """configs/tiny.yaml as shipped (every callback on), tiny sizes, 6 steps (tests/shipped_runs.py)."""
    return shipped_args(root, corpus_file, data_cache, fault=fault)


# -- torchrun: 2 nodes x 1 process on localhost ---------------------------------------------------
def doc_block(containing: str) -> str:
    """The fenced code block of docs/clusters.md that holds ``containing``."""
    blocks = (REPO / "docs" / "clusters.md").read_text().split("```")[1::2]
    (block,) = [b for b in blocks if containing in b]
    return block.split("\n", 1)[1]  # without the fence's language tag


def torchrun_command() -> list[str]:
    """The one-machine torchrun line of docs/clusters.md, as arguments."""
    lines = doc_block("127.0.0.1:29500").replace("\\\n", " ").splitlines()
    (line,) = [line for line in lines if line.startswith("torchrun") and "127.0.0.1:29500" in line]
    return shlex.split(line)


def torchrun_two_nodes(args: list[str], logs: Path) -> list[subprocess.Popen]:
    """docs/clusters.md's torchrun line, once per "node", each launcher a job of its own (own process
    group), with a free port, and the test's settings (``args``, after ``fit``) appended."""
    port = free_port()
    command = [a.replace("127.0.0.1:29500", f"127.0.0.1:{port}") for a in torchrun_command()]
    assert command[0] == "torchrun" and "fit" in command
    # `python -m torch.distributed.run` is what the `torchrun` script runs.
    command = [sys.executable, "-m", "torch.distributed.run", *command[1:], *args[1:]]
    return [start(command, logs / f"node{node}.log") for node in range(2)]


def test_traceback_helper_keys_on_our_source_folder(tmp_path):
    venv = tmp_path / "gptmini-venv" / "lib" / "python3.11" / "site-packages" / "lightning" / "trainer.py"
    ours = PACKAGE / "callbacks" / "lr_curve.py"
    out = f'Traceback (most recent call last):\n  File "{venv}", line 1, in fit\n'
    assert our_frames(out) == []  # a path that merely contains "gptmini" is not ours
    out += f'  File "{ours}", line 207, in check\nRuntimeError: x\n'
    assert our_frames(out) == [f'File "{ours}", line 207, in check']


@pytest.mark.slow
def test_torchrun_two_nodes_sigterm_saves_once_and_resumes_bitwise(ddp_reference, tmp_path, corpus_file, data_cache):
    # Rank 1 pauses after step 3, so rank 0 waits inside a collective (gloo) for it; then SIGTERM
    # goes to both launchers' process groups (what a scheduler's stop does), and each launcher
    # forwards it to its worker: one worker gets it in Python, the other inside the collective.
    marker = tmp_path / "paused"
    fault = {"at_step": 2, "kind": "pause", "marker": str(marker), "rank": 1}
    procs = torchrun_two_nodes(run_args(tmp_path, corpus_file, data_cache, fault), tmp_path)
    try:
        wait_for_file(marker, procs, tmp_path)
        time.sleep(0.5)  # rank 0 reaches the collective
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        time.sleep(1)  # the launchers forward it
        Path(f"{marker}.go").touch()
    finally:
        statuses = wait_all(procs, TIMEOUT)
    out = log_text(tmp_path)
    # torchrun reports the signal it got (its own SignalException), not the workers' status.
    assert statuses == [1, 1] and out.count("SignalException: Process") == 2, out[-4000:]
    assert_no_traceback_of_ours(out)
    runs = tmp_path / "runs" / "tiny"
    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = saved_lines(out)  # once: rank 0 says it for both
    assert line.startswith(f"SIGTERM: saved {last} at step 3; resume with: torchrun <the same torchrun options> -m gptmini.cli fit")
    assert sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # one run folder: rank 0 writes for both nodes
    assert read_checkpoint(last)["global_step"] == 3

    resumed = run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path", "last"]
    assert wait_all(torchrun_two_nodes(resumed, tmp_path), TIMEOUT) == [0, 0], log_text(tmp_path)[-4000:]
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    got = runs / "version_1"
    assert sorted(p.name for p in (got / "checkpoints").iterdir()) == ["best-step=6.ckpt", "last.ckpt"]
    # Bitwise the uninterrupted 2-process run's (Lightning's DDP: the same world, batch and order).
    ref, got = ddp_reference["scalars"], scalars_by_step(got)
    assert sorted(got["train/loss"]) == [3, 4, 5]
    for tag in ("train/loss", "val/loss"):
        for step, value in got[tag].items():
            assert value == ref[tag][step], (tag, step)


WORKER = """
import os, signal, sys, time
from gptmini.train.launcher import follow_launcher
def say(path, text):  # whole or not at all: the test polls for the file
    with open(path + ".part", "w") as f:
        f.write(text)
    os.replace(path + ".part", path)
signal.signal(signal.SIGTERM, lambda s, f: (say(sys.argv[1] + ".got", str(s)), sys.exit(143)))
assert follow_launcher()
say(sys.argv[1], str(os.getpid()))
time.sleep(60)
"""
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)
time.sleep(60)
"""


def test_torchrun_worker_gets_sigterm_when_its_launcher_is_killed(tmp_path):
    # What a torchrun worker sees of its launcher: a parent process that started it in a session
    # of its own, with TORCHELASTIC_RUN_ID set. The parent's process group is SIGKILLed (the worker,
    # in its own session, is not hit); the worker gets SIGTERM, FaultGuard's stop signal.
    ready = tmp_path / "ready"
    env = {**cli_env(), "TORCHELASTIC_RUN_ID": "test"}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER, str(ready)], env=env, start_new_session=True)
    try:
        wait_for_file(ready, [launcher], tmp_path, timeout=60)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    got = Path(f"{ready}.got")
    deadline = time.monotonic() + 10
    while not got.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not got.exists():  # it trains on alone: end it here, not 60 s later
        os.kill(int(ready.read_text()), signal.SIGKILL)
    assert got.exists() and got.read_text() == str(int(signal.SIGTERM))


# -- SLURM: requeue on the time-limit signal and on SIGTERM ---------------------------------------
JOB_ID = "4242"


def slurm_env(tmp_path: Path) -> dict[str, str]:
    """What srun sets for a 1-task job step, and a stand-in ``scontrol`` that records its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    srun = bin_dir / "srun"  # one task: run it here
    srun.write_text('#!/bin/sh\nexec "$@"\n')
    for script in (scontrol, srun):
        script.chmod(0o755)
    return {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": "gptmini-tiny",  # not "bash"/"interactive": a batch job
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "node001",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NODELIST": "node001",
    }


def scontrol_calls(tmp_path: Path) -> list[str]:
    calls = tmp_path / "scontrol.calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory, corpus_file, data_cache) -> dict:
    root = tmp_path_factory.mktemp("one_process")
    with attribute_docstrings_off():
        main(run_args(root, corpus_file, data_cache))
    (run,) = (root / "runs" / "tiny").iterdir()
    return scalars_by_step(run)


def assert_resumed_exactly(ref: dict, tmp_path: Path) -> None:
    got = scalars_by_step(tmp_path / "runs" / "tiny" / "version_1")
    assert sorted(got["train/loss"]) == [3, 4, 5]
    for tag in ("train/loss", "val/loss"):
        for step, value in got[tag].items():
            assert value == ref[tag][step], (tag, step)


def run_job_script(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    """docs/clusters.md's sbatch script, run as SLURM runs it on the first node (its own session)."""
    script = tmp_path / "job.sh"
    script.write_text(doc_block("#SBATCH --signal=USR1@90"))
    assert args[0] == "fit"
    env = {**cli_env(), **slurm_env(tmp_path), "RUN_DIR": str(tmp_path / "runs" / "tiny")}
    # After the script's own settings: the tiny config (it sets every key configs/10m.yaml sets)
    # and this one-task job's shape.
    job_args = [*args[1:], "--trainer.num_nodes=1", "--trainer.devices=1"]
    log = (tmp_path / "job.log").open("a")  # --open-mode=append
    return subprocess.Popen(
        ["bash", str(script), *job_args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def task_of(job: subprocess.Popen) -> int:
    """srun's task: the job script's child (srun's stand-in execs it)."""
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    (pid,) = children
    return int(pid)


def test_slurm_job_script_requeue_signal_saves_requeues_once_and_resumes_exactly(
    one_process_reference, tmp_path, corpus_file, data_cache
):
    # `#SBATCH --signal=USR1@90` sends SIGUSR1 to the job step's tasks (not the batch shell); after
    # `scontrol requeue` SLURM itself sends SIGTERM to the job: one save, one requeue.
    marker = tmp_path / "paused"
    fault = {"at_step": 2, "kind": "pause", "marker": str(marker)}
    job = run_job_script(tmp_path, run_args(tmp_path, corpus_file, data_cache, fault))
    try:
        wait_for_file(marker, [job], tmp_path)
        task = task_of(job)
        os.kill(task, signal.SIGUSR1)
        time.sleep(0.2)
        os.kill(task, signal.SIGTERM)
        Path(f"{marker}.go").touch()
        status = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = (tmp_path / "job.log").read_text()
    assert status == 128 + signal.SIGUSR1, text[-3000:]  # the first signal names the stop
    assert_no_traceback_of_ours(text)
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = saved_lines(text)
    assert line.startswith(
        f"SIGUSR1: saved {last} at step 3; requeued SLURM job {JOB_ID}; the job script resumes with: "
        "srun python -m gptmini.cli fit"
    )
    assert line.endswith("--ckpt_path last")
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue save: not used
    assert read_checkpoint(last)["global_step"] == 3

    # SLURM starts the requeued job: the same script, which now finds last.ckpt.
    job = run_job_script(tmp_path, run_args(tmp_path, corpus_file, data_cache))
    try:
        assert job.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert_resumed_exactly(one_process_reference, tmp_path)
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]  # the finished job is not requeued


def test_slurm_sigterm_saves_requeues_once_and_resumes_exactly(
    one_process_reference, tmp_path, corpus_file, data_cache, monkeypatch
):
    # A plain SIGTERM (the time limit without --signal, a preemption), here after step 3.
    for key, value in slurm_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    fault = {"at_step": 2, "kind": "sigterm"}
    with attribute_docstrings_off(), pytest.raises(SystemExit) as info:
        main(run_args(tmp_path, corpus_file, data_cache, fault))
    assert info.value.code == 143
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 3
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job
    with attribute_docstrings_off():
        main(run_args(tmp_path, corpus_file, data_cache) + ["--ckpt_path", "last"])
    assert_resumed_exactly(one_process_reference, tmp_path)
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]


def test_slurm_two_ranks_save_once_and_only_rank_0_requeues(tmp_path, corpus_file, data_cache):
    # srun's 2 tasks of a 1-node job (SLURM_PROCID 0 and 1), each a job of its own; SIGUSR1 (the
    # --signal=USR1@90 warning) reaches both tasks, rank 1 while rank 0 waits for it in a collective.
    marker = tmp_path / "paused"
    fault = {"at_step": 2, "kind": "pause", "marker": str(marker), "rank": 1}
    args = run_args(tmp_path, corpus_file, data_cache, fault)[1:] + ["--trainer.num_nodes=1", *DDP[1:]]
    port = str(free_port())
    tasks = []
    for rank in range(2):
        env = {
            **cli_env(),
            **slurm_env(tmp_path),
            "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "MASTER_ADDR": "127.0.0.1",  # srun's node name does not resolve here
            "MASTER_PORT": port,
        }
        tasks.append(start(cli(["fit", *args]), tmp_path / f"task{rank}.log", env=env))
    try:
        wait_for_file(marker, tasks, tmp_path)
        time.sleep(0.3)
        for task in tasks:
            os.kill(task.pid, signal.SIGUSR1)
        time.sleep(0.5)
        Path(f"{marker}.go").touch()
    finally:
        statuses = wait_all(tasks, TIMEOUT)
    out = log_text(tmp_path)
    assert statuses == [128 + signal.SIGUSR1] * 2, out[-4000:]
    assert_no_traceback_of_ours(out)
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    (line,) = saved_lines(out)  # rank 0 says it for both
    assert line.startswith(f"SIGUSR1: saved {last} at step 3; requeued SLURM job {JOB_ID}")
    assert scontrol_calls(tmp_path) == [f"requeue {JOB_ID}"]  # once for the job, not once per rank
    assert read_checkpoint(last)["global_step"] == 3


# -- FSDP on CPU ----------------------------------------------------------------------------------
def test_fsdp_on_cpu_is_one_line_error(tmp_path, corpus_file, data_cache):
    args = run_args(tmp_path, corpus_file, data_cache) + ["--trainer.strategy=fsdp", "--trainer.devices=2"]
    proc = run_subprocess(args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: trainer.strategy=fsdp needs CUDA GPUs") and "trainer.strategy=ddp" in line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # before any work


def test_resume_command_under_a_launcher():
    argv = ["/src/gptmini/cli.py", "fit", "--config", "c.yaml", "--ckpt_path=x"]
    assert resume_command(argv, environ={}) == "python -m gptmini.cli fit --config c.yaml --ckpt_path last"
    assert (
        resume_command(argv, environ={"TORCHELASTIC_RUN_ID": "job"})
        == "torchrun <the same torchrun options> -m gptmini.cli fit --config c.yaml --ckpt_path last"
    )
    assert resume_command(argv, environ={"SLURM_STEP_ID": "0"}) == "srun python -m gptmini.cli fit --config c.yaml --ckpt_path last"
