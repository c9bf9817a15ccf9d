"""Bad input fails fast through the CLI: non-zero exit, a message naming the setting, nothing lost.

Every case runs ``gptmini.cli fit`` on the tiny setup next to an earlier run's folder (config,
checkpoint) and the shared token cache; afterwards those must be byte-for-byte unchanged and no
checkpoint may have been written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_cli_args

from gptmini.cli import main
from gptmini.commands import TRACEBACK_ENV
from gptmini.core.config import ConfigError
from gptmini.train import setting_checks

pytestmark = pytest.mark.usefixtures("no_attribute_docstrings")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def truncated_cache(tmp: Path, data_cache: Path) -> str:
    copy = tmp / "cache_copy"
    shutil.copytree(data_cache, copy)
    (train_bin,) = copy.glob("*/train.bin")
    with open(train_bin, "r+b") as f:
        f.truncate(train_bin.stat().st_size - 10)
    return str(copy)


EMPTY = b"  \n"
SHORT = b"To be or not.\n"
LATIN1 = "café au lait\n".encode("latin-1") * 50
TYPO = b"trainer:\n  max_step: 10\n"
JSONL_BODY = b'{"body": "Once upon a time."}\n' * 50

# id -> (extra args builder(tmp, corpus_file, data_cache), text the message must contain)
CASES = {
    "data path missing": (lambda t, c, d: [f"--data.data={t / 'missing.txt'}"], "data.data path"),
    "empty corpus": (
        lambda t, c, d: [f"--data.data={write(t / 'empty.txt', EMPTY)}", f"--data.cache_dir={t / 'c'}"],
        "corpus is empty: data.data",
    ),
    "corpus shorter than a window": (
        lambda t, c, d: [f"--data.data={write(t / 'short.txt', SHORT)}", f"--data.cache_dir={t / 'c'}"],
        "data.block_size + 1",
    ),
    "non-UTF-8 corpus": (
        lambda t, c, d: [f"--data.data={write(t / 'latin1.txt', LATIN1)}"],
        "not valid UTF-8",
    ),
    "JSONL records without data.text_field": (
        lambda t, c, d: [f"--data.data={write(t / 'x.jsonl', JSONL_BODY)}", f"--data.cache_dir={t / 'c'}"],
        "has no text under data.text_field='text' (found: ['body'])",
    ),
    "truncated token file": (
        lambda t, c, d: [f"--data.cache_dir={truncated_cache(t, d)}"],
        "(truncated or corrupt). Delete the folder",
    ),
    "model vocab set apart from the tokenizer": (
        lambda t, c, d: ["--model.arch.vocab_size=100"],
        "model.arch.vocab_size",
    ),
    "tokenizer smaller than data.vocab_size": (
        lambda t, c, d: ["--data.vocab_size=20000", f"--data.cache_dir={t / 'c'}"],
        "data.vocab_size is 20000",
    ),
    "block_size beyond the model context": (
        lambda t, c, d: ["--model.arch.block_size=16"],
        "model.arch.block_size",
    ),
    "n_embd not divisible by n_head": (
        lambda t, c, d: ["--model.arch.n_head=3"],
        "model.arch.n_embd (32) must be divisible",
    ),
    "warmup_steps >= max_steps": (
        lambda t, c, d: ["--model.schedule.warmup_steps=20"],
        "schedule.warmup_steps (20)",
    ),
    "max_steps <= 0": (lambda t, c, d: ["--trainer.max_steps=0"], "trainer.max_steps must be a positive"),
    "lr <= 0": (lambda t, c, d: ["--model.optim.lr=0"], 'key "model.optim.lr": Not of type PositiveFloat'),
    "betas outside [0, 1)": (
        lambda t, c, d: ["--model.optim.betas=[0.9, 1.0]"],
        'key "model.optim.betas": Not of type UnitIntervalRightOpen: 1.0',
    ),
    "weight decay < 0": (
        lambda t, c, d: ["--model.optim.weight_decay=-0.1"],
        'key "model.optim.weight_decay": Not of type NonNegativeFloat',
    ),
    "fault_guard.check_every_n_steps < 1": (
        lambda t, c, d: ["--fault_guard.check_every_n_steps=0"],
        'key "fault_guard.check_every_n_steps": Not of type PositiveInt',
    ),
    "batch_size < 1": (
        lambda t, c, d: ["--data.batch_size=0"],
        'key "data.batch_size": Not of type PositiveInt',
    ),
    "min_lr_ratio outside [0, 1]": (
        lambda t, c, d: ["--model.schedule.min_lr_ratio=1.5"],
        "schedule.min_lr_ratio",
    ),
    "accumulate_grad_batches < 1": (
        lambda t, c, d: ["--trainer.accumulate_grad_batches=0"],
        "trainer.accumulate_grad_batches must be",
    ),
    "unknown key on the command line": (
        lambda t, c, d: ["--model.optim.learning_rate=0.1"],
        "Did you mean model.optim.lr?",
    ),
    "unknown key in a config file": (
        lambda t, c, d: ["--config", write(t / "typo.yaml", TYPO)],
        "Did you mean trainer.max_steps?",
    ),
    # Names of earlier versions (CHANGELOG.md): the error names today's.
    "old key model.model": (lambda t, c, d: ["--model.model.n_layer=2"], "Did you mean model.arch.n_layer?"),
    "old key guard in a config file": (
        lambda t, c, d: ["--config", write(t / "old.yaml", b"guard:\n  max_skipped_steps: 1\n")],
        "Did you mean fault_guard.max_skipped_steps?",
    ),
    "old callback class path": (
        lambda t, c, d: ["--trainer.callbacks+=gptmini.checks.OverfitCheck"],
        "gptmini.checks.OverfitCheck is now gptmini.callbacks.first_batch.OverfitCheck",
    ),
    "bf16 on a device without it": (
        lambda t, c, d: ["--trainer.precision=bf16-mixed"],
        "trainer.precision=bf16-mixed",
    ),
    "ckpt_path pointing at nothing": (lambda t, c, d: [f"--ckpt_path={t / 'nope.ckpt'}"], "--ckpt_path"),
    "ckpt_path last without a checkpoint": (
        lambda t, c, d: ["--ckpt_path=last", "--trainer.logger.init_args.name=other"],
        "--ckpt_path last: no checkpoint found",
    ),
    "corrupt checkpoint": (lambda t, c, d: ["--ckpt_path=last"], "last.ckpt cannot be read"),
}


# Refused while parsing (jsonargparse), before any class is built; the rest fail in GPTMiniCLI.
PARSE_ERRORS = {
    "lr <= 0",
    "batch_size < 1",
    "fault_guard.check_every_n_steps < 1",
    "betas outside [0, 1)",
    "weight decay < 0",
    "min_lr_ratio outside [0, 1]",
    "unknown key on the command line",
    "unknown key in a config file",
    "old key model.model",
    "old key guard in a config file",
    "old callback class path",
}


def snapshot(*roots: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for r in roots for p in r.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_fast_and_keeps_files(case, tmp_path, corpus_file, data_cache, monkeypatch, capsys):
    build, expected = CASES[case]
    # An earlier run in the same folder: its files must survive the failed run.
    old = tmp_path / "runs" / "tiny" / "version_0"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text("earlier run\n")
    (old / "checkpoints" / "last.ckpt").write_bytes(b"an earlier, now corrupt checkpoint")
    before = snapshot(old, data_cache)
    monkeypatch.setattr(setting_checks, "bf16_supported", lambda device: False)  # no device here has none

    args = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=20) + build(
        tmp_path, corpus_file, data_cache
    )
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Parse errors: "error: ..." (the did-you-mean first; jsonargparse's details indented below it)
    # and one tip, no usage; later checks: one "error: ..." line.
    lines = err[err.index("error: ") :].splitlines()
    message = " ".join(err[err.index("error: ") :].split("\ntip: ")[0].split())
    assert expected in message, message
    if case in PARSE_ERRORS:
        assert lines[-1] == "tip: `gptmini fit --help` lists every option.", err
        assert "usage:" not in err and err.count("error: ") == 1, err
        if "Did you mean" in expected:
            assert lines[0].startswith(f"error: {expected}") and len(lines) == 2, err
    else:
        assert [line for line in err.splitlines() if "error" in line.lower()] == [message], err
    print(f"\n{case}: {message}")

    assert snapshot(old, data_cache) == before
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["version_0"]  # none claimed, or removed
    assert [p for p in tmp_path.rglob("*.ckpt") if p != old / "checkpoints" / "last.ckpt"] == []


def test_user_error_is_one_line_and_exit_2_in_a_real_process(tmp_path, corpus_file, data_cache):
    args = tiny_cli_args(tmp_path, corpus_file, data_cache) + ["--model.arch.n_head=3"]
    env = {**os.environ, TRACEBACK_ENV: "0", "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "gptmini.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "error: model.arch.n_embd (32) must be divisible by model.arch.n_head (3); pick n_head from "
        "the divisors of n_embd."
    ], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_misspelled_key_in_a_config_is_two_lines_in_a_real_process(tmp_path, corpus_file, data_cache):
    args = tiny_cli_args(tmp_path, corpus_file, data_cache) + ["--config", write(tmp_path / "typo.yaml", TYPO)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "gptmini.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: Did you mean trainer.max_steps? Subcommand 'fit' does not accept option 'trainer.max_step'",
        "tip: `gptmini fit --help` lists every option.",
    ], proc.stderr


def test_traceback_switch_shows_the_exception(tmp_path, corpus_file, data_cache, monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    args = tiny_cli_args(tmp_path, corpus_file, data_cache) + ["--model.arch.n_head=3"]
    with pytest.raises(ConfigError, match=r"model.arch.n_embd \(32\) must be divisible"):
        main(args)


@pytest.mark.parametrize(
    "arg, key", [("--data.batch_size=-1", "data.batch_size"), ("--model.optim.lr=-1", "model.optim.lr")]
)
def test_print_config_refuses_out_of_range_values(arg, key, capsys):
    config = str(Path(__file__).parent.parent.parent / "configs" / "tiny.yaml")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", config, arg, "--print_config"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f'error: Parser key "{key}":' in err and "does not conform to restriction v>0" in err
