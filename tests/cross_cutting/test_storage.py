"""Storage on the user's path: crash-safe checkpoint files, a full disk, unwritable folders, a damaged
newest checkpoint, and checkpoints of earlier versions (issue 16 items 1-4).

The kill test puts ``runs/`` on /dev/shm (tmpfs) with ``TMPDIR`` on the disk, the setup where
Lightning's own save (temp file in ``$TMPDIR``, then a move = a copy) left a 0-byte ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import attribute_docstrings_off, cli_env, tiny_cli_args
from test_resume import REPO, compare, reference, run_args, run_subprocess, wait_for  # noqa: F401 (reference: a fixture)

from gptmini.cli import main
from gptmini.core import atomic
from gptmini.core.checkpoint import read_checkpoint

FIXTURES = Path(__file__).parent.parent / "fixtures"
SHM = Path("/dev/shm")


@pytest.fixture
def shm_root(tmp_path):
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp dir")
    root = Path(tempfile.mkdtemp(prefix="gptmini-storage-", dir=SHM))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def plugin(class_path: str, **init_args) -> str:
    return "--trainer.plugins=" + json.dumps({"class_path": class_path, "init_args": init_args})


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_sigkill_inside_saves_resumes_exactly(reference, shm_root, tmp_path, corpus_file, data_cache):  # noqa: F811
    """Kill points: before each real save, forked copies of the fit process start the same save
    and are SIGKILLed at 0/25/50/75/100% of the bytes written; then the fit process itself is
    SIGKILLed (from outside, its whole group) halfway through overwriting last.ckpt at step 12."""
    report, marker = tmp_path / "kills.jsonl", tmp_path / "paused"
    args = run_args(shm_root, corpus_file, data_cache) + [
        plugin("storage_hooks.KillInsideSaves", report=str(report), pause_at_save=6, marker=str(marker))
    ]
    log = tmp_path / "fit.log"
    env = {**cli_env(), "TMPDIR": str(tmp_path)}  # the temp dir on the disk, runs/ on tmpfs
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gptmini.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(marker.exists, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    kills = [json.loads(line) for line in report.read_text().splitlines()]
    # saves 1-6: step=4, last, step=8, last, step=12, last; 5 kill points each
    assert len(kills) == 6 * 5, kills
    assert all(k["reached"] for k in kills), [k for k in kills if not k["reached"]]
    assert all(k["unchanged"] for k in kills), [k for k in kills if not k["unchanged"]]
    assert all(k["all_load"] for k in kills), [k for k in kills if not k["all_load"]]
    ckpts = shm_root / "runs" / "tiny" / "version_0" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    temps = [n for n in names if atomic.is_temp(n)]
    assert len(temps) == 31, names  # every killed write left its temp file, hidden...
    assert [n for n in names if not atomic.is_temp(n)] == sorted(
        ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=1-step=12.ckpt", "last.ckpt"]
    )
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 8  # ...and no partial last.ckpt
    print(f"\n{len(kills)} forked kill points + 1 kill of the fit process: every checkpoint intact")

    # `--ckpt_path last` is the newest checkpoint by step: the intact step=12 file saved just before
    # the killed overwrite, not the older last.ckpt (step 8).
    with attribute_docstrings_off():
        main(run_args(shm_root, corpus_file, data_cache) + ["--ckpt_path=last"])
    assert not [p for p in ckpts.iterdir() if atomic.is_temp(p.name)]  # cleaned by the next run
    compare(reference, shm_root / "runs" / "tiny" / "version_1", 12)


def test_disk_full_during_a_save(tmp_path, corpus_file, data_cache):
    args = run_args(tmp_path, corpus_file, data_cache) + [plugin("storage_hooks.FullDisk", fail_at_save=3)]
    proc = run_subprocess(args)
    ckpts = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: disk full: writing epoch=1-step=8.ckpt in {ckpts} needs ")
    size = len((ckpts / "last.ckpt").read_bytes())
    assert f"needs {size / 1e6:.1f} MB, " in line and " MB free there; nothing partial was left" in line
    assert f"the last intact checkpoint is {ckpts / 'last.ckpt'}." in line
    assert line.endswith("--ckpt_path last") and "resume with: python -m gptmini.cli fit --config" in line
    # Nothing truncated under a checkpoint name, no temp file left; the step-4 files load.
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 4


def _readonly_folder() -> Path | None:
    """A folder on a filesystem that refuses new files even to root (sysfs)."""
    for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
        if candidate.is_dir():
            try:
                (candidate / "gptmini-probe").touch()
            except OSError:
                return candidate
    return None


@pytest.mark.parametrize("setting", ["save_dir", "cache_dir"])
def test_unwritable_runs_or_cache_is_one_line_before_any_work(
    tmp_path, corpus_file, data_cache, capsys, no_attribute_docstrings, setting
):
    readonly = _readonly_folder()
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder is expected")
    args = tiny_cli_args(tmp_path, corpus_file, data_cache, 4)
    cases = [blocker / "runs"] + ([readonly / "gptmini-runs", readonly] if readonly else [])
    for bad in cases:
        if setting == "save_dir":
            extra = [f"--trainer.logger.init_args.save_dir={bad}"]
        else:  # a cache to prepare (a prepared one is only read, so read-only is fine)
            extra = [f"--data.cache_dir={bad}"]
        with pytest.raises(SystemExit) as info:
            main(args + extra)
        assert info.value.code == 2
        (line,) = error_lines(capsys.readouterr().err)
        name = "trainer.logger.init_args.save_dir" if setting == "save_dir" else "data.cache_dir"
        assert line.startswith(f"error: {name} {bad} is not writable ("), line
    assert not (tmp_path / "runs").exists()  # nothing written, no data prepared


def test_free_space_below_the_checkpoints_needs_warns_before_step_0(
    tmp_path, corpus_file, data_cache, monkeypatch, no_attribute_docstrings
):
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1_000_000)  # a nearly full disk
    args = tiny_cli_args(tmp_path, corpus_file, data_cache, 4) + ["--trainer.limit_val_batches=0"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main(args) or None
    del cli
    (msg,) = [str(w.message) for w in caught if "the configured checkpoints need" in str(w.message)]
    # tiny.yaml: ModelCheckpoint every 200 steps (max_steps 4 -> 1 file) + last, BestCheckpoint top 1,
    # + 1 for the new file beside the old during a save: 4 files of 12 bytes per parameter.
    n_params = 384 * 32 + 2 * (4 * 32 * 32 + 2 * 4 * 32 * 32 + 2 * 32) + 32
    size = int(n_params * 12 * 1.01)
    assert msg.startswith(f"{tmp_path / 'runs' / 'tiny' / 'version_0'} has 1.0 MB free"), msg
    assert (
        f"need about {4 * size / 1e6:.1f} MB (4 files of ~{size / 1e6:.1f} MB: {n_params:,} parameters" in msg
    )


def test_ckpt_path_last_skips_a_damaged_newest_file(
    reference,  # noqa: F811
    tmp_path,
    capsys,
    corpus_file,
    data_cache,
    no_attribute_docstrings,
):
    run = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(reference["run"] / "checkpoints", run / "checkpoints")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")  # what a kill during Lightning's cross-filesystem move left
    args = [
        a.replace("fit", "validate") if a == "fit" else a for a in run_args(tmp_path, corpus_file, data_cache)
    ]
    with pytest.warns(UserWarning, match="newest readable") as caught:
        main(args + ["--ckpt_path=last"])
    (msg,) = [str(w.message) for w in caught if "newest readable" in str(w.message)]
    newest = run / "checkpoints" / "epoch=2-step=16.ckpt"
    assert msg.startswith(f"--ckpt_path last: {last} cannot be read (0 bytes, truncated or corrupt")
    assert msg.endswith(f"using {newest}, the newest readable checkpoint of this run.")
    # None readable: one line listing what was found.
    for p in (run / "checkpoints").iterdir():
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(SystemExit) as info:
        main(args + ["--ckpt_path=last"])
    assert info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(
        f"error: --ckpt_path last: no readable checkpoint of this run: {last} cannot be read (0 bytes"
    )
    assert line.count("bytes, truncated or corrupt") == 5 and f"{newest} cannot be read (100 bytes" in line


def fixture_args(tmp_path: Path, corpus_file: Path, data_cache: Path, sub: str, max_steps: int) -> list[str]:
    """The model of tests/fixtures/pre_arch_rename.ckpt (1 layer, width 16), today's keys."""
    args = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps, lr=None)  # the lr it was trained at
    args = [a for a in args if not a.startswith(("--model.arch.", "--model.schedule."))]
    return [
        sub,
        *args[1:],
        "--model.arch.n_layer=1",
        "--model.arch.n_head=2",
        "--model.arch.n_embd=16",
        "--model.schedule.warmup_steps=2",
    ]


def test_checkpoint_from_before_the_arch_rename_validates_and_resumes(
    tmp_path, corpus_file, data_cache, no_attribute_docstrings
):
    """pre_arch_rename.ckpt: written by commit 96bcf96 (before `model.model` became `model.arch`),
    tiny config, 4 steps; its hyper_parameters hold `model: {...}`."""
    old = FIXTURES / "pre_arch_rename.ckpt"
    saved = torch.load(old, weights_only=True)
    assert "model" in saved["hyper_parameters"] and "arch" not in saved["hyper_parameters"]
    main(fixture_args(tmp_path, corpus_file, data_cache, "validate", 4) + [f"--ckpt_path={old}"])
    main(fixture_args(tmp_path, corpus_file, data_cache, "fit", 6) + [f"--ckpt_path={old}"])
    (resumed,) = (tmp_path / "runs" / "tiny").glob("version_*/checkpoints/last.ckpt")
    ckpt = read_checkpoint(resumed)
    assert ckpt["global_step"] == 6 and ckpt["hyper_parameters"]["arch"]["n_embd"] == 16
    trained = {k: v for k, v in ckpt["state_dict"].items()}
    assert any(not torch.equal(trained[k], saved["state_dict"][k]) for k in saved["state_dict"])


def test_cli_saves_through_atomic_checkpoint_io_unless_the_user_gives_one(cli_args, no_attribute_docstrings):
    from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

    from gptmini.cli import make_cli
    from gptmini.train.checkpoint_io import AtomicCheckpointIO

    args = cli_args(4)[1:]  # run=False: no subcommand
    assert type(make_cli(args, run=False).trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    own = make_cli(args + ["--trainer.plugins=lightning.pytorch.plugins.io.TorchCheckpointIO"], run=False)
    assert type(own.trainer.strategy.checkpoint_io) is TorchCheckpointIO  # the user's choice, kept
    wrapped = make_cli(args + ["--trainer.plugins=lightning.pytorch.plugins.io.AsyncCheckpointIO"], run=False)
    io = wrapped.trainer.strategy.checkpoint_io
    assert type(io) is AsyncCheckpointIO and type(io.checkpoint_io) is AtomicCheckpointIO
