"""A second run into the same folder never overwrites the first run's config or checkpoints, runs
started together each get their own folder, and `validate` checks the weights it was pointed at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import callbacks_args, cli_env, tiny_cli_args

from gptmini.cli import main, make_cli
from gptmini.core.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("no_attribute_docstrings")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def args(tmp_path: Path, corpus_file: Path, data_cache: Path, *callbacks: dict) -> list[str]:
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True},
    }
    return tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=2) + [
        *callbacks_args(tmp_path, [*callbacks, checkpoint]),
        "--trainer.limit_val_batches=0",
        "--model.schedule.warmup_steps=1",
    ]


def files(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_rerun_gets_a_new_version_folder(tmp_path, corpus_file, data_cache):
    main(args(tmp_path, corpus_file, data_cache))
    first = tmp_path / "runs" / "tiny" / "version_0"
    before = files(first)
    assert first / "config.yaml" in before and first / "checkpoints" / "last.ckpt" in before
    main(args(tmp_path, corpus_file, data_cache))  # LightningCLI's config save works on the rerun
    second = tmp_path / "runs" / "tiny" / "version_1"
    assert (second / "config.yaml").is_file() and (second / "checkpoints" / "last.ckpt").is_file()
    assert files(first) == before


def test_rerun_into_a_fixed_version_is_refused_before_any_work(tmp_path, corpus_file, data_cache, capsys):
    fixed = args(tmp_path, corpus_file, data_cache) + ["--trainer.logger.init_args.version=mine"]
    main(fixed)
    folder = tmp_path / "runs" / "tiny" / "mine"
    before = files(folder)
    with pytest.raises(SystemExit) as info:
        main(fixed)
    assert info.value.code == 2
    assert "already holds a run (config.yaml); refusing to overwrite" in capsys.readouterr().err
    assert files(folder) == before


def test_runs_started_together_get_their_own_versions(tmp_path, corpus_file, data_cache):
    """A sweep: three runs of one name at once, through the installed `gptmini` script."""
    meet = tmp_path / "rendezvous"
    meet.mkdir()
    rendezvous = {"class_path": "fault_injection.Rendezvous", "init_args": {"folder": str(meet), "parties": 3}}
    script = Path(sys.executable).with_name("gptmini")  # what `pip install` made of [project.scripts]
    cmd = [str(script), *args(tmp_path, corpus_file, data_cache, rendezvous)]
    procs = [
        subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for e in errors]  # 0: finished
    runs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1", "version_2"]
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_validate_last_uses_the_newest_checkpoint(tmp_path, corpus_file, data_cache, capsys):
    fit = args(tmp_path, corpus_file, data_cache)
    main(fit)
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    validate = ["validate", *fit[1:], "--trainer.limit_val_batches=2"]
    cli = make_cli([*validate, "--ckpt_path=last"])
    assert cli.trainer.ckpt_path == str(last)
    trained = read_checkpoint(last)["state_dict"]
    assert all(torch.equal(v, trained[k]) for k, v in cli.model.state_dict().items())
    assert "val/loss" in cli.trainer.callback_metrics

    with pytest.raises(SystemExit) as info:  # untrained weights would be a meaningless val loss
        main(validate)
    assert info.value.code == 2
    assert "validate needs trained weights: add --ckpt_path last" in capsys.readouterr().err


def test_runs_claiming_at_the_same_moment_get_distinct_versions(tmp_path, monkeypatch):
    """The race itself, forced: two runs list the log folder (both see no version yet), then both
    claim. Exactly one may take version_0; the other must move on, not share it. (The 3-process
    test above rarely reaches the claim at the same moment.)"""
    import os
    import threading

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from gptmini.train.run_folder import claim_version

    def trainer() -> pl.Trainer:
        logger = TensorBoardLogger(tmp_path / "runs", name="tiny", default_hp_metric=False)
        return pl.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, max_steps=1)

    trainers = [trainer(), trainer()]
    root = Path(trainers[0].loggers[0].root_dir)
    both_listed = threading.Barrier(2, timeout=30)
    real_listdir, listed = os.listdir, []

    def listdir_then_wait(path="."):
        names = real_listdir(path)
        if Path(path) == root and len(listed) < 2:
            listed.append(names)
            both_listed.wait()  # neither claims before both have listed
        return names

    monkeypatch.setattr(os, "listdir", listdir_then_wait)
    errors = []

    def claim(t: pl.Trainer) -> None:
        try:
            claim_version(t)
        except BaseException as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(t,)) for t in trainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert listed == [[], []]  # the race was forced: both saw an empty folder
    assert sorted(t.loggers[0].version for t in trainers) == [0, 1]
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
