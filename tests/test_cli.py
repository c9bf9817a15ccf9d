"""End-to-end runs through the CLI, in tmp_path, on the tiny setup."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_LR

from gptmini.cli import main, make_cli
from gptmini.tools.curves import read_scalars

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def scalars(run_dir: Path) -> dict[str, list[float]]:
    return {tag: values for tag, (_, values) in read_scalars(run_dir).items()}


def test_fit_end_to_end(cli_args, tmp_path, capsys):
    main(cli_args(max_steps=40))
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    tags = scalars(run)
    for tag in ("train/loss", "val/loss", "val/ppl", "val/bpb", "train/grad_norm", "lr/decay", "lr/no_decay"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert len(tags["lr/decay"]) == 40  # one lr per optimizer step
    assert max(tags["lr/decay"]) == pytest.approx(TINY_LR)  # the test shape's peak, reached after warmup
    loss = tags["train/loss"]
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.5
    assert tags["val/loss"][-1] < tags["val/loss"][0]
    assert (run / "config.yaml").is_file()
    ckpt_path = run / "checkpoints" / "last.ckpt"
    assert ckpt_path.is_file()
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    (opt_state,) = ckpt["optimizer_states"]
    groups = opt_state["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert ckpt["global_step"] == 40
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 40
    # the lowest val/loss is kept as best-step=N.ckpt and named at the end
    _, vals = read_scalars(run)["val/loss"]
    i = vals.index(min(vals))
    (best,) = run.glob("checkpoints/best-step=*.ckpt")
    bpb = tags["val/bpb"][i]  # the val/bpb of the same validation
    line = f"best checkpoint (val/loss {min(vals):.4f}, val/bpb {bpb:.4f}): {best}"
    assert line in capsys.readouterr().out
    # the run record in the checkpoint: tokens seen and every validation (the model card's figures)
    run_state = ckpt["gptmini_run"]
    assert run_state["tokens_seen"] == 40 * 8 * 32
    assert [e["val/loss"] for e in run_state["val"]] == pytest.approx(vals)
    assert [e["val/bpb"] for e in run_state["val"]] == pytest.approx(tags["val/bpb"])


def test_smoke_overfit_one_batch(cli_args, tmp_path):
    args = cli_args(max_steps=80) + [
        "--trainer.overfit_batches=1",
        "--model.arch.n_embd=64",
        "--model.optim.lr=1e-2",
    ]
    main(args)
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    loss = scalars(run)["train/loss"]
    assert loss[0] > 5.0
    assert loss[-1] < 1.0


def test_optimizer_keys_of_lightningcli_are_rejected(cli_args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(cli_args() + ["--optimizer=torch.optim.SGD"])
    assert exc.value.code != 0
    assert "optimizer" in capsys.readouterr().err


# Presets layered on a full config (`-c base -c preset`), with the base they are documented with.
OVERLAYS = {"smoke.yaml": "10m.yaml", "exercises_cpu.yaml": "tiny.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs write relative paths (runs/, data_cache/)
    args = ["--config", str(config)]
    if config.name in OVERLAYS:
        args = ["--config", str(config.parent / OVERLAYS[config.name])] + args
    cli = make_cli(args, run=False)
    assert cli.model.model_cfg.vocab_size == cli.datamodule.vocab_size
    assert cli.model.model_cfg.block_size == cli.datamodule.block_size
    assert cli.trainer.max_steps > 0


def test_10m_config_is_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = make_cli(["--config", str(Path(__file__).parent.parent / "configs" / "10m.yaml")], run=False)
    m, o, s, d, t = (
        cli.model.model_cfg,
        cli.model.optim_cfg,
        cli.model.schedule_cfg,
        cli.datamodule,
        cli.trainer,
    )
    assert (m.n_layer, m.n_head, m.n_embd, m.vocab_size, m.block_size) == (6, 6, 384, 8000, 512)
    assert (o.lr, o.weight_decay, o.betas, o.eps) == (6e-4, 0.1, (0.9, 0.95), 1e-8)
    assert (s.warmup_steps, s.min_lr_ratio) == (1000, 0.1)
    assert (d.batch_size, t.max_steps, t.gradient_clip_val) == (32, 50000, 1.0)
    assert t.precision == "bf16-mixed"


def test_help_shows_field_docs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "Decoupled weight decay on weight matrices" in out
    assert "Optimizer steps of linear warmup" in out


def test_print_config_shows_linked_values(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS[0].parent / "tiny.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "vocab_size: 2048" in out and "warmup_steps:" in out


def test_a_second_resume_of_a_live_run_is_refused_and_a_dead_ones_lock_is_not(
    fitted_run, tmp_path, corpus_file, data_cache
):
    """Two `fit --ckpt_path last` of one run: while the first lives (paused after a step), the second
    is refused in one line; once the first is SIGKILLed, its stale run.lock does not block a third,
    which resumes where the run stopped and shows gptmini's bar (total and ETA), not `Training: 7/?`."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from conftest import cli_env, tiny_cli_args
    from test_resume import REPO, run_subprocess, wait_for

    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "version_0").symlink_to(fitted_run, target_is_directory=True)
    lock = fitted_run / "run.lock"
    marker = tmp_path / "paused"
    pause = {"class_path": "fault_injection.InjectFault", "init_args": {"at_step": 6, "kind": "pause", "marker": str(marker)}}
    resume = tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps=8) + ["--ckpt_path=last"]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "gptmini.cli", *resume, f"--trainer.callbacks=[{json.dumps(pause)}]"],
            cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for(marker.exists, first, log)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = run_subprocess(resume)
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = [x for x in second.stderr.splitlines() if "error" in x.lower()]
        assert line.startswith(f"error: {tmp_path / 'runs' / 'tiny' / 'version_0'} is in use by a running process "
                               f"(pid {first.pid} on ")
        assert "Traceback" not in second.stderr and sorted(os.listdir(tmp_path / "runs" / "tiny"))[1:] == ["version_1"]
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert json.loads(lock.read_text())["pid"] == first.pid  # left behind by the kill

    third = run_subprocess(resume + ["--trainer.callbacks=[]", "--trainer.enable_progress_bar=true"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"--ckpt_path last: {tmp_path / 'runs' / 'tiny' / 'version_0' / 'checkpoints' / 'last.ckpt'} (step 6)" in third.stderr
    bar = third.stdout.replace("\r", "\n")  # Lightning's bars write to stdout
    # From step 6 of 8, with a rate and ETA; Lightning's own bar would count `Training: 7/?`.
    assert "train:  75%" in bar and "6/8 [" in bar and "8/8 [" in bar and "<00:00" in bar, bar[-2000:]
    assert all(" 0/" in x for x in bar.splitlines() if "Training" in x), bar[-2000:]  # only as created
    assert not lock.exists()  # the third run's lock (it took over the stale one), released at its end


def test_field_docstrings_are_read_only_for_help():
    from gptmini.cli import shows_help

    assert shows_help(["fit", "--help"]) and shows_help(["validate", "-h"])
    assert shows_help(["fit", "--trainer.callbacks.help", "FaultGuard"])
    assert shows_help(["fit", "--config", "c.yaml", "--print_config=comments"])
    assert not shows_help(["fit", "--config", "c.yaml", "--trainer.max_steps=5"])
    assert not shows_help(["fit", "--data.data=help.txt"])
