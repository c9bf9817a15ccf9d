"""The multi-process tests' runs: configs/*.yaml as shipped (every callback on), only sizes and steps
set on the command line, on the session's prepared data cache; and the helpers to launch, signal
and read them (tests/cross_cutting/test_ddp.py, tests/cross_cutting/test_cluster.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import TINY_LR, TINY_SHAPE, cli_env, scalars_by_step

import gptmini

REPO = Path(__file__).parent.parent
PACKAGE = Path(gptmini.__file__).parent  # the project's own source folder
MAX_STEPS = 6
VAL_EVERY = 3
# The CPU DDP shape of docs/clusters.md, on one machine.
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
# A hang is a failure after this long, not a stuck suite (each run takes ~10-30 s).
TIMEOUT = 240


def shipped_args(
    root: Path,
    corpus_file: Path,
    data_cache: Path,
    config: str = "tiny.yaml",
    max_steps: int = MAX_STEPS,
    batch_size: int = 4,
    fault: dict | None = None,
) -> list[str]:
    """``fit`` with configs/<config> as shipped, its callbacks and fault_guard untouched: only
    sizes (conftest's TINY_SHAPE, with the lr that suits them), steps and the output folder are set
    (and ``fault``, an InjectFault, appended to the callbacks, never replacing them)."""
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / config),
        f"--trainer.max_steps={max_steps}",
        f"--trainer.val_check_interval={VAL_EVERY}",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",  # a point per step: the curves are compared step by step
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        *TINY_SHAPE,
        f"--model.optim.lr={TINY_LR}",
        "--model.schedule.warmup_steps=3",
        f"--data.data={corpus_file}",
        f"--data.cache_dir={data_cache}",
        f"--data.batch_size={batch_size}",
    ]
    if fault:
        args.append("--trainer.callbacks+=" + json.dumps({"class_path": "fault_injection.InjectFault", "init_args": fault}))
    return args


def only_run(root: Path) -> Path:
    (run,) = (root / "runs").glob("*/version_*")
    return run


def reference_run(root: Path, corpus_file: Path, data_cache: Path) -> dict:
    """configs/tiny.yaml on 2 CPU processes (Lightning's DDP), 6 steps, uninterrupted: its run folder,
    output and scalars. The reference of every 2-process resume (DDP, torchrun, srun): the same world
    size, global batch and order, so the same numbers bit for bit (conftest's ``ddp_reference``)."""
    proc = start(cli(shipped_args(root, corpus_file, data_cache) + DDP), root / "ddp.log")
    assert wait_all([proc], TIMEOUT) == [0], log_text(root)[-4000:]
    run = only_run(root)
    return {"run": run, "out": log_text(root), "scalars": scalars_by_step(run)}


def shipped_callbacks(config: str) -> list[str]:
    """The callback classes configs/<config> lists."""
    cfg = yaml.safe_load((REPO / "configs" / config).read_text())
    return [cb["class_path"] for cb in cfg["trainer"]["callbacks"]]


def run_config_callbacks(run: Path) -> list[str]:
    """The callback classes the run really had (its config.yaml, written by the CLI)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return [cb["class_path"] for cb in cfg["trainer"]["callbacks"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A job of its own (own process group, as a shell or a scheduler starts it), output to ``log``."""
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env or cli_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "gptmini.cli", *args]


def wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[int | str]:
    """Exit statuses, "hung" for a process still running at the timeout: it is killed with its
    process group (a hang fails the test's assertion, with the log, and never sticks)."""
    deadline = time.monotonic() + timeout
    statuses: list[int | str] = []
    try:
        for p in procs:
            try:
                statuses.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                statuses.append("hung")
    finally:
        for p in procs:
            if p.poll() is None:
                # torchrun's workers live in sessions of their own: killed by pid, before their launcher.
                for pid in descendants(p.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return statuses


def descendants(pid: int) -> list[int]:
    """Every process started under ``pid`` (Linux /proc), children first."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        children = [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []
    return [p for c in children for p in (c, *descendants(c))]


def log_text(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(logs.glob("*.log")))


def wait_for_file(path: Path, procs: list[subprocess.Popen], logs: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), f"exited too early:\n{log_text(logs)[-4000:]}"
        assert time.monotonic() < deadline, log_text(logs)[-4000:]
        time.sleep(0.05)


def our_frames(out: str, package: Path = PACKAGE) -> list[str]:
    """Traceback lines (``File "..."``) of a file inside the project's own source folder."""
    root = str(package.resolve()) + os.sep
    frames = [line.strip() for line in out.splitlines() if line.strip().startswith('File "')]
    return [f for f in frames if str(Path(f.split('"')[1]).resolve()).startswith(root)]


def assert_no_traceback_of_ours(out: str) -> None:
    assert not our_frames(out), out[-4000:]


def saved_lines(out: str) -> list[str]:
    """FaultGuard's "<signal>: saved ..." lines (the shipped progress bar may precede one on its line)."""
    return re.findall(r"(?:SIG[A-Z0-9]+|Ctrl-C): saved [^\r\n]*", out)
