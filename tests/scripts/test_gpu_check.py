"""scripts/gpu_check.py, the one prepared GPU check, kept runnable between GPU runs: its --cpu-smoke
mode runs every part on CPU at toy sizes (no timing asserted), and a part that overruns its limit is
killed while the evidence already written stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_cpu_smoke_runs_every_part_and_prints_the_summary_last(tmp_path):
    """From another folder, with another gptmini ahead on the path: the script imports gptmini from
    its own checkout (a GPU machine has none installed), and its bundle is what a device machine
    sends back."""
    out, bundle = tmp_path / "check", tmp_path / "bundle"
    # An installed gptmini that must not be used: the checkout's own has to come first.
    poison = tmp_path / "site" / "gptmini"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('an installed gptmini was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(poison.parent)}
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(out), "--cpu-smoke", f"--bundle={bundle}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=700,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())["parts"]
    assert list(status) == gpu_check.PARTS
    assert all(p["rc"] == 0 and not p["timed_out"] for p in status.values()), status
    summary = (out / "summary.md").read_text()
    assert res.stdout.rstrip().endswith(summary.rstrip())  # the Markdown summary is printed last
    assert "CPU SMOKE" in summary and "PASS" not in summary and "FAIL" not in summary
    assert "could not read" not in summary, summary
    bench = json.loads((out / "bench.json").read_text())
    assert bench["complete"] and list(bench["variants"]) == ["default", "nocapture"]
    for v in bench["variants"].values():
        assert v["paths"]["lightning"]["tokens_per_sec"] > 0 and v["paths"]["plain"]["tokens_per_sec"] > 0
    levers = json.loads((out / "levers.json").read_text())
    assert levers["complete"] and list(levers["variants"]) == ["default", "chunked_ce"]
    assert levers["variants"]["chunked_ce"]["variant_settings"] == ["model.kernels.loss_chunk_tokens=64"]
    assert all(list(v["paths"]) == ["lightning"] for v in levers["variants"].values())
    assert "No viable backend" in levers["failed"]["sdpa_efficient"]  # CPU lacks it; the rest still ran
    (gen,) = json.loads((out / "generate.json").read_text())
    assert gen["cached_tok_s_wall"] > 0 and gen["static_tok_s_wall"] > 0 and gen["uncached_tok_s_wall"] > 0
    assert json.loads((out / "eval.json").read_text())["tokens_per_sec"] > 0
    profile = json.loads((out / "profile.json").read_text())
    assert profile["own"]["lightning"] > 0 and "shared: model forward" in profile["components"]
    for section in ("### GPU-side levers", "### Generate", "### Eval", "### Host time per step", "### GPU tests"):
        assert section in summary, section
    assert "resume exactness on CUDA (tests/cross_cutting/test_gpu.py): skipped" in summary
    assert (out / "fit.png").stat().st_size > 10_000
    assert "throughput/tokens_per_sec (ThroughputLogger)" in summary and "val/loss" in summary
    assert "- step-0 checks: " in summary and ", 0 failed" in summary and "fit / bench (default" in summary
    # The bundle: at most 8 files, the rest in one tarball without checkpoints or the token cache.
    names = sorted(p.name for p in bundle.iterdir())
    assert len(names) <= 8 and "summary.md" in names and "evidence.tar.gz" in names, names
    with tarfile.open(bundle / "evidence.tar.gz") as tar:
        members = tar.getnames()
    assert "gpu_tests.log" in members and "profile.json" in members
    assert any("events.out.tfevents" in m for m in members)
    assert not any(m.endswith(".ckpt") or m.startswith("data_cache") for m in members)


def test_the_summary_names_the_versions_the_parts_import():
    # Read from the installed files (the driver imports neither): the same as importing them says.
    import lightning
    import torch

    assert gpu_check.versions() == f"torch {torch.__version__} (CUDA {torch.version.cuda}); lightning {lightning.__version__}"


def test_a_cuda_summary_of_a_half_written_bench_json_still_renders(tmp_path, monkeypatch):
    # A bench killed mid-write: the header's device falls back to nvidia-smi (absent here).
    (tmp_path / "bench.json").write_text('{"variants": {"default": {"dev')
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    summary = gpu_check.Summary(tmp_path, gpu_check.plan_for(False), None, False, {}, time.monotonic())
    assert "- device: cuda (name unknown);" in summary.text()


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
