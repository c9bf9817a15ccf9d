"""A second run into the same folder never overwrites the first run's config or checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_cli_args

from gptmini.cli import main

pytestmark = pytest.mark.usefixtures("no_attribute_docstrings")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def args(tmp_path: Path, corpus_file: Path, data_cache: Path) -> list[str]:
    extra = tmp_path / "callbacks.yaml"
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True},
    }
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [checkpoint]}}))
    return tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=2) + [
        "--config",
        str(extra),
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
