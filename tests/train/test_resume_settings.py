"""What resume (`--ckpt_path`) and `--init_from` do with the settings the user gives, through main().

One short base run provides the checkpoint: tiny.yaml's lr (0.002) and a non-default MLP width
given on the command line (mlp_ratio 2; not in tiny.yaml, so a resume that leaves it out gets the
parser default 4, which is not the user's value). Resuming must keep its settings, refuse any differing value the user gave (listing
all of them), allow a longer trainer.max_steps, and `--init_from` must start a new run from its
weights with new optimizer/schedule settings.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import attribute_docstrings_off, tiny_cli_args
from test_resume import run_subprocess

from gptmini.cli import main
from gptmini.core.checkpoint import model_state_dict, read_checkpoint

BASE_STEPS = 4
BASE_LR = 0.002  # tiny.yaml's


def args(root: Path, corpus_file: Path, data_cache: Path, max_steps: int = BASE_STEPS) -> list[str]:
    # lr=None: tiny.yaml's, not given (these tests tell the values a user gives from the config's).
    return tiny_cli_args(root, corpus_file, data_cache, max_steps, lr=None) + [
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks=[]",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks+=test_resume_settings.RecordStart",
    ]


class RecordStart(pl.Callback):
    """Records the state a run trains from: step, weights, AdamW state and first lr."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        RecordStart.seen = {
            "step": trainer.global_step,
            "weights": {k: v.clone() for k, v in pl_module.model.state_dict().items()},
            "adam_state": len(trainer.optimizers[0].state),
            "peak_lr": trainer.lr_scheduler_configs[0].scheduler.base_lrs[0],
        }


@pytest.fixture(autouse=True)
def _quiet():
    torch.set_num_threads(1)
    with attribute_docstrings_off():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_file, data_cache) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("base")
    with attribute_docstrings_off():
        main(args(root, corpus_file, data_cache) + ["--model.arch.mlp_ratio=2"])
    run = root / "runs" / "tiny" / "version_0"
    return {"root": root, "ckpt": run / "checkpoints" / "last.ckpt", "run": run}


def fail(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "Traceback" not in err
    return line


def test_resume_refuses_every_differing_value_the_user_gave(base, corpus_file, data_cache, capsys):
    ckpt = base["ckpt"]
    versions = sorted(p.name for p in (base["root"] / "runs" / "tiny").iterdir())
    # mlp_ratio=4 is the parser default, but given: it counts (a value the user set is never dropped).
    given = [
        "--model.optim.lr=1e-5",
        "--model.arch.n_embd=64",
        "--model.arch.n_head=4",
        "--model.arch.mlp_ratio=4",
        "--model.schedule.warmup_steps=7",
        "--model.schedule.min_lr_ratio=0.5",
    ]
    linked = ["--data.block_size=16"]  # model.arch.block_size follows it
    line = fail(
        args(base["root"], corpus_file, data_cache, 8) + [f"--ckpt_path={ckpt}", *given, *linked], capsys
    )
    assert f"--ckpt_path {ckpt} resumes a run exactly, with its own settings, but 7 differ: " in line
    assert "model.arch.n_head: checkpoint 2, given 4" in line
    assert "model.arch.n_embd: checkpoint 32, given 64" in line
    assert "model.arch.mlp_ratio: checkpoint 2, given 4" in line
    assert "data.block_size: checkpoint model.arch.block_size 32, this run 16" in line
    assert "model.optim.lr: checkpoint 0.002, given 1e-05" in line
    assert "model.schedule.warmup_steps: checkpoint 3, given 7" in line
    assert "model.schedule.min_lr_ratio: checkpoint 0.1, given 0.5" in line
    assert f"--config {base['run'] / 'config.yaml'}" in line and f"--init_from {ckpt}" in line
    # `last` is found only in before_fit: the same check there.
    line = fail(args(base["root"], corpus_file, data_cache, 8) + ["--ckpt_path=last", given[0]], capsys)
    assert line.endswith("--ckpt_path.") and "1 differ: model.optim.lr: checkpoint 0.002, given 1e-05" in line
    # A max_steps the checkpoint has already reached leaves nothing to train.
    line = fail(args(base["root"], corpus_file, data_cache) + [f"--ckpt_path={ckpt}"], capsys)
    assert f"is at step {BASE_STEPS}, and trainer.max_steps is {BASE_STEPS}: nothing left" in line
    assert sorted(p.name for p in (base["root"] / "runs" / "tiny").iterdir()) == versions


def test_validate_compares_only_what_changes_its_result(base, corpus_file, data_cache, capsys):
    """validate takes the checkpoint's settings; only a given model shape or data setting that
    differs is refused (in validate's words); its logs go beside the run, not into a new run folder."""
    runs = base["root"] / "runs" / "tiny"
    versions = sorted(p.name for p in runs.iterdir())
    argv = ["validate", *args(base["root"], corpus_file, data_cache)[1:], "--ckpt_path=last"]
    # The schedule and the optimizer cannot change a validation (warmup 3 and lr 2e-3 trained);
    # mlp_ratio, not given, is the checkpoint's 2 (the default 4 would not load).
    proc = run_subprocess(argv + ["--model.schedule.warmup_steps=2", "--model.optim.lr=1e-5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/loss" in proc.stdout
    main(argv)  # validating again: the same folder
    assert sorted(p.name for p in runs.iterdir()) == versions
    logged = base["run"] / "validate"
    assert len(list(logged.glob("events.out.tfevents.*"))) == 2
    assert yaml.safe_load((logged / "config.yaml").read_text())["model"]["schedule"]["warmup_steps"] == 3
    assert not (base["run"] / "run.lock").exists()

    line = fail(argv + ["--model.arch.n_embd=64", "--data.val_fraction=0.2", "--model.optim.lr=1"], capsys)
    assert line.startswith(f"error: validate --ckpt_path {base['ckpt']} scores the checkpoint on the model "
                           "and data it was trained with, but 2 given setting(s) differ: ")
    assert "model.arch.n_embd: checkpoint 32, given 64; data.val_fraction: checkpoint 0.1, given 0.2." in line
    assert f"gptmini eval {base['ckpt']} --data FILE" in line and "resumes" not in line
    assert sorted(p.name for p in runs.iterdir()) == versions


@pytest.mark.parametrize("ckpt_path", ["file", "last"])
def test_resume_keeps_the_checkpoint_settings_and_may_train_longer(
    base, tmp_path, corpus_file, data_cache, ckpt_path
):
    # The same base config without the mlp_ratio flag: the default 4 is not the user's value.
    # (Values the user gives that equal the checkpoint's are fine: lr in tiny.yaml, n_embd=32.)
    root = tmp_path
    (root / "runs" / "tiny").mkdir(parents=True)
    (root / "runs" / "tiny" / "version_0").symlink_to(base["run"], target_is_directory=True)
    path = str(base["ckpt"]) if ckpt_path == "file" else "last"
    main(args(root, corpus_file, data_cache, max_steps=BASE_STEPS + 2) + [f"--ckpt_path={path}"])
    assert RecordStart.seen["step"] == BASE_STEPS and RecordStart.seen["adam_state"] > 0
    assert RecordStart.seen["peak_lr"] == pytest.approx(BASE_LR)
    resumed = root / "runs" / "tiny" / "version_1"
    config = yaml.safe_load((resumed / "config.yaml").read_text())
    assert config["model"]["arch"]["mlp_ratio"] == 2  # what was used
    assert config["model"]["optim"]["lr"] == pytest.approx(BASE_LR)
    assert config["trainer"]["max_steps"] == BASE_STEPS + 2
    assert read_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == BASE_STEPS + 2


def test_init_from_starts_a_new_run_from_the_weights(base, tmp_path, corpus_file, data_cache, capsys):
    new = ["--model.optim.lr=1e-3", "--model.schedule.warmup_steps=1", "--model.optim.weight_decay=0"]
    start = [f"--init_from={base['ckpt']}", "--model.arch.mlp_ratio=2"]  # the shape is the user's to give
    main(args(tmp_path, corpus_file, data_cache, max_steps=2) + start + new)
    seen = RecordStart.seen
    assert seen["step"] == 0 and seen["adam_state"] == 0 and seen["peak_lr"] == pytest.approx(1e-3)
    weights = model_state_dict(read_checkpoint(base["ckpt"]))
    assert seen["weights"].keys() == weights.keys()
    assert all(torch.equal(seen["weights"][k], weights[k]) for k in weights)
    run = tmp_path / "runs" / "tiny" / "version_0"
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["optim"]["lr"] == pytest.approx(1e-3)
    assert yaml.safe_load((run / "config.yaml").read_text())["init_from"] == str(base["ckpt"])

    # The model shape must match; and --init_from is not --ckpt_path.
    line = fail(
        args(tmp_path, corpus_file, data_cache) + [f"--init_from={base['ckpt']}", "--model.arch.n_embd=64"],
        capsys,
    )
    assert "was trained with another model shape (model.arch.n_embd: checkpoint 32 vs config 64; " in line
    assert "model.arch.mlp_ratio: checkpoint 2 vs config 4)" in line
    # Strict: a key the model lacks (of a fitting shape, so the shape check passes) is refused by name.
    ckpt = read_checkpoint(base["ckpt"])
    ckpt["state_dict"]["model.blocks.9.norm_attn.weight"] = ckpt["state_dict"]["model.norm_out.weight"]
    torch.save(ckpt, tmp_path / "extra.ckpt")
    start = [f"--init_from={tmp_path / 'extra.ckpt'}", "--model.arch.mlp_ratio=2"]
    line = fail(args(tmp_path, corpus_file, data_cache) + start, capsys)
    assert "--init_from" in line and "blocks.9.norm_attn.weight" in line
    both = [f"--init_from={base['ckpt']}", f"--ckpt_path={base['ckpt']}"]
    line = fail(args(tmp_path, corpus_file, data_cache, 8) + both, capsys)
    assert "both given" in line and "drop one" in line
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["version_0"]


def test_runtime_keys_are_the_users_on_resume(tmp_path):
    from gptmini.train.resume import resume_settings

    hparams = {
        "arch": {"n_embd": 32},
        "optim": {"lr": 0.002, "betas": [0.9, 0.95], "fused": None},
        "schedule": {"warmup_steps": 3},
        "compile": None,
        "compile_mode": None,
    }
    given = {"compile": True, "optim.fused": False, "optim.betas": (0.9, 0.95), "arch.n_embd": 32}
    parsed = {**given, "compile_mode": None, "optim.lr": 6e-4}  # lr: a default, not given
    settings = resume_settings(str(tmp_path / "x.ckpt"), hparams, given, parsed)
    assert settings["compile"] is True and settings["optim"]["fused"] is False
    assert settings["optim"]["lr"] == 0.002 and hparams["optim"]["fused"] is None  # input untouched


@pytest.mark.parametrize(
    "key, value",
    [
        ("optim.lr", 1e-5),
        ("optim.weight_decay", 0.0),
        ("optim.betas", (0.9, 0.99)),
        ("schedule.warmup_steps", 7),
        ("schedule.min_lr_ratio", 0.5),
        ("arch.n_embd", 64),
    ],
)
def test_resume_refuses_a_changed_value_in_every_group(tmp_path, key, value):
    # Unit level: each group of model settings (optim, schedule, arch) takes part in the comparison.
    from gptmini.core.config import ConfigError
    from gptmini.train.resume import resume_settings

    hparams = {
        "arch": {"n_embd": 32},
        "optim": {"lr": 0.002, "weight_decay": 0.1, "betas": [0.9, 0.95], "fused": None},
        "schedule": {"warmup_steps": 3, "min_lr_ratio": 0.1},
        "compile": None,
        "compile_mode": None,
    }
    group, leaf = key.split(".")
    saved = hparams[group][leaf]
    with pytest.raises(ConfigError, match=rf"1 differ: model\.{key}: checkpoint .+, given "):
        resume_settings(str(tmp_path / "x.ckpt"), hparams, {key: value}, {key: value})
    settings = resume_settings(str(tmp_path / "x.ckpt"), hparams, {key: saved}, {key: saved})  # same: fine
    assert settings[group][leaf] == saved


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_init_from_refuses_weights_with_a_missing_or_an_extra_key(tmp_path, change):
    from dataclasses import asdict

    from gptmini.core.config import ConfigError
    from gptmini.core.model import GPTMini, ModelConfig
    from gptmini.train.resume import load_weights

    cfg = ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    weights = {f"model.{k}": v for k, v in GPTMini(cfg).state_dict().items()}
    if change == "missing":
        key = "norm_out.weight"
        del weights[f"model.{key}"]
    else:  # the shape of a layer norm, in a layer the model does not have
        key = "blocks.1.norm_attn.weight"
        weights[f"model.{key}"] = torch.ones(16)
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": weights, "gptmini_model_config": asdict(cfg), "global_step": 5}, path)
    with pytest.raises(ConfigError, match=rf"--init_from {re.escape(str(path))}.*{re.escape(key)}"):
        load_weights(GPTMini(cfg), str(path))


def test_a_resume_with_the_runs_own_settings_reads_the_arguments_once(base, tmp_path, corpus_file, data_cache, monkeypatch):
    """The second parse (which values did the user give?) runs only when a checkpoint setting differs
    from a parsed one; resuming with the run's own settings parses the command line once."""
    import gptmini.train.resume as resume

    def second_parse(*args, **kwargs):
        raise AssertionError("the arguments were parsed a second time")

    monkeypatch.setattr(resume, "given_values", second_parse)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "version_0").symlink_to(base["run"], target_is_directory=True)
    own = ["--model.arch.mlp_ratio=2", f"--ckpt_path={base['ckpt']}"]
    main(args(tmp_path, corpus_file, data_cache, max_steps=BASE_STEPS + 1) + own)
    assert RecordStart.seen["step"] == BASE_STEPS


def test_ckpt_path_last_is_the_highest_step_of_the_run_folder_written_last(tmp_path):
    """The rule, on files made here: in a folder, the step inside each file decides (a kill while
    last.ckpt was overwritten left an older one beside step=4); across version folders, the one
    written last (a new run of the same name restarts at step 0); unreadable files are skipped."""
    import os

    from lightning.pytorch.loggers import TensorBoardLogger

    from gptmini.train.resume import resolve_ckpt_path

    def save(path: Path, step: int, mtime: float) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "global_step": step}, path)
        os.utime(path, (mtime, mtime))
        return path

    logger = TensorBoardLogger(save_dir=str(tmp_path / "runs"), name="tiny")
    trainer = pl.Trainer(logger=logger, enable_checkpointing=False, enable_progress_bar=False)
    run0 = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    save(run0 / "epoch=0-step=2.ckpt", 2, 100)
    save(run0 / "last.ckpt", 2, 101)  # the kill: last.ckpt not rewritten at step 4
    step4 = save(run0 / "epoch=0-step=4.ckpt", 4, 102)
    assert resolve_ckpt_path("last", trainer) == str(step4)
    save(run0 / "last.ckpt", 4, 103)  # same step: last.ckpt
    assert resolve_ckpt_path("last", trainer) == str(run0 / "last.ckpt")
    run1 = tmp_path / "runs" / "tiny" / "version_1" / "checkpoints"  # a new run of the name, later
    new = save(run1 / "last.ckpt", 1, 200)
    assert resolve_ckpt_path("last", trainer) == str(new)
    (run1 / "epoch=0-step=3.ckpt").write_bytes(b"truncated")
    os.utime(run1 / "epoch=0-step=3.ckpt", (201, 201))
    with pytest.warns(UserWarning, match="step=3.ckpt cannot be read .*; using .*version_1/checkpoints/last.ckpt"):
        assert resolve_ckpt_path("last", trainer) == str(new)
