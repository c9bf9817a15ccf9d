"""Bad input fails fast through the CLI: non-zero exit, a message naming the setting, nothing lost.

Every case runs ``gptmini.cli fit`` on the tiny setup next to an earlier run's folder (config,
checkpoint) and the shared token cache; afterwards those must be byte-for-byte unchanged and no
checkpoint may have been written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_cli_args

from gptmini.cli import main
from gptmini.train import preflight

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
    "lr <= 0": (lambda t, c, d: ["--model.optim.lr=0"], "optim.lr must be > 0"),
    "betas outside [0, 1)": (lambda t, c, d: ["--model.optim.betas=[0.9, 1.0]"], "optim.betas must be"),
    "weight decay < 0": (lambda t, c, d: ["--model.optim.weight_decay=-0.1"], "optim.weight_decay must be"),
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
    "bf16 on a device without it": (
        lambda t, c, d: ["--trainer.precision=bf16-mixed"],
        "trainer.precision=bf16-mixed",
    ),
    "ckpt_path pointing at nothing": (lambda t, c, d: [f"--ckpt_path={t / 'nope.ckpt'}"], "--ckpt_path"),
    "ckpt_path last without a checkpoint": (
        lambda t, c, d: ["--ckpt_path=last", "--trainer.logger.init_args.name=other"],
        "--ckpt_path last: no last.ckpt found",
    ),
    "corrupt checkpoint": (lambda t, c, d: ["--ckpt_path=last"], "last.ckpt cannot be read"),
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
    monkeypatch.setattr(preflight, "bf16_supported", lambda device: False)  # no device here has none

    args = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=20) + build(
        tmp_path, corpus_file, data_cache
    )
    with pytest.raises((ValueError, SystemExit)) as info:
        main(args)
    if info.type is SystemExit:  # jsonargparse: usage + "error: ..." on stderr, exit code 2
        assert info.value.code not in (0, None)
        message = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        message = str(info.value)
    assert expected in message, message
    print(f"\n{case}: {message.splitlines()[0]}")

    assert snapshot(old, data_cache) == before
    assert [p for p in tmp_path.rglob("*.ckpt") if p != old / "checkpoints" / "last.ckpt"] == []
