"""scripts/gpu_check.py, the one prepared GPU check, kept runnable between GPU runs: its --cpu-smoke
mode runs every part on CPU at toy sizes (no timing asserted), and a part that overruns its limit is
killed while the evidence already written stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


def test_cpu_smoke_runs_every_part_and_prints_the_summary_last(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(out), "--cpu-smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())["parts"]
    assert list(status) == ["prepare", "bench", "gpu_tests", "fit"]
    assert all(p["rc"] == 0 and not p["timed_out"] for p in status.values()), status
    summary = (out / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())  # the Markdown summary is printed last
    assert "CPU SMOKE" in summary and "PASS" not in summary and "FAIL" not in summary
    bench = json.loads((out / "bench.json").read_text())
    assert bench["complete"] and list(bench["variants"]) == ["default", "cudagraphs", "eager", "guard1"]
    for v in bench["variants"].values():
        assert v["paths"]["lightning"]["tokens_per_sec"] > 0 and v["paths"]["plain"]["tokens_per_sec"] > 0
    assert bench["variants"]["guard1"]["variant_settings"] == ["fault_guard.check_every_n_steps=1"]
    assert (out / "gpu_tests.xml").is_file() and "GPU tests" in summary
    assert (out / "fit.png").stat().st_size > 10_000
    assert "throughput/tokens_per_sec (ThroughputLogger)" in summary and "val/loss" in summary


def test_a_part_past_its_limit_is_killed_and_the_evidence_stays(tmp_path):
    plan = gpu_check.plan_for(smoke=True)
    plan.limits["prepare"], plan.reserves["fit"] = 1, 0
    check = gpu_check.Check(tmp_path, plan, tmp_path / "corpus.txt", smoke=True)
    check.run(
        "prepare", [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"], []
    )
    part = json.loads((tmp_path / "status.json").read_text())["parts"]["prepare"]
    assert part["timed_out"] and part["seconds"] < 30
    assert "started" in (tmp_path / "prepare.log").read_text()
    assert "| prepare | timed out |" in (tmp_path / "summary.md").read_text()


def test_sigterm_kills_the_running_part_and_still_prints_the_summary(tmp_path):
    """The caller's own time limit (SIGTERM) mid-bench: the bench's process group dies with it (it
    runs in its own session), status.json records it, and the summary is still printed last."""
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_check.py"),
            str(out),
            "--cpu-smoke",
            "--parts=bench,fit",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "bench.log").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    bench = ["pgrep", "-f", "--", f"--json={out}/bench.json"]
    assert subprocess.run(bench, capture_output=True).returncode == 0  # the bench is running now
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-2000:]
    parts = json.loads((out / "status.json").read_text())["parts"]
    assert parts["bench"]["timed_out"] and "fit" not in parts
    assert stdout.rstrip().endswith((out / "summary.md").read_text().rstrip())
    survivors = subprocess.run(bench, capture_output=True, text=True)
    assert survivors.returncode == 1, survivors.stdout  # pgrep: no such process left
