"""A NaN loss stops training with the step and the last good checkpoint named, and that checkpoint
stays intact; fault_guard.max_skipped_steps skips such steps instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import callbacks_args, tiny_cli_args

from gptmini.callbacks.fault_guard import NonFiniteLossError
from gptmini.cli import main
from gptmini.core.checkpoint import load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("no_attribute_docstrings")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def args_with_nan(
    tmp_path: Path, corpus_file: Path, data_cache: Path, max_steps: int, nan_at: int
) -> list[str]:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 4, "save_last": True, "save_top_k": -1},
        },
        {"class_path": "fault_injection.InjectFault", "init_args": {"at_step": nan_at, "kind": "nan"}},
    ]
    return tiny_cli_args(tmp_path, corpus_file, data_cache, max_steps) + [
        *callbacks_args(tmp_path, callbacks),
        "--trainer.limit_val_batches=0",
    ]


def test_nan_stops_at_the_step_and_keeps_last_good_checkpoint(tmp_path, corpus_file, data_cache):
    with pytest.raises(NonFiniteLossError) as info:
        main(args_with_nan(tmp_path, corpus_file, data_cache, max_steps=12, nan_at=6))
    message = str(info.value)
    print(f"\n{message}")
    ckpts = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    last = ckpts / "last.ckpt"
    assert "at step 6" in message and f"The last good checkpoint is {last}" in message
    # Saved at step 4, before the NaN; nothing written after it.
    assert read_checkpoint(last)["global_step"] == 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    model = load_model(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipped_nan_step_keeps_training(tmp_path, corpus_file, data_cache):
    with pytest.warns(UserWarning, match="at step 3 .*update skipped"):
        main(
            args_with_nan(tmp_path, corpus_file, data_cache, max_steps=8, nan_at=3)
            + ["--fault_guard.max_skipped_steps=1"]
        )
    ckpt = read_checkpoint(tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8
    (guard_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("FaultGuard")]
    assert guard_state == {"skipped": 1}
    # Without the skip the NaN gradients would have reached every weight.
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_unchecked_nan_never_reaches_a_checkpoint(tmp_path, corpus_file, data_cache):
    # Checks only at step 0, so the NaN update at step 5 goes through; the save at step 8 refuses.
    args = args_with_nan(tmp_path, corpus_file, data_cache, max_steps=12, nan_at=5)
    with pytest.raises(NonFiniteLossError, match="weights are non-finite at step 8"):
        main([*args, "--fault_guard.check_every_n_steps=100"])
    ckpts = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    assert read_checkpoint(ckpts / "last.ckpt")["global_step"] == 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]


def test_fused_adamw_skips_on_device_and_stops_at_the_next_check(tmp_path, corpus_file, data_cache):
    # Fused AdamW: the NaN update at step 5 is dropped on the device (no host sync); the verdict
    # is read at step 8, naming step 5, and the step-8 checkpoint holds finite weights.
    args = args_with_nan(tmp_path, corpus_file, data_cache, max_steps=12, nan_at=5)
    args += ["--model.optim.fused=true", "--fault_guard.check_every_n_steps=4"]
    with pytest.raises(NonFiniteLossError, match="at step 5 .*update skipped on the device"):
        main(args)
    ckpts = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    ckpt = read_checkpoint(ckpts / "last.ckpt")
    assert ckpt["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    # The skipped step left AdamW's step count behind the loop's by one.
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {7}


def test_fused_adamw_skip_budget(tmp_path, corpus_file, data_cache):
    args = args_with_nan(tmp_path, corpus_file, data_cache, max_steps=8, nan_at=3)
    args += ["--model.optim.fused=true", "--fault_guard.check_every_n_steps=4", "--fault_guard.max_skipped_steps=1"]
    with pytest.warns(UserWarning, match="at step 3: update skipped"):
        main(args)
    ckpt = read_checkpoint(tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8
    (guard_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("FaultGuard")]
    assert guard_state == {"skipped": 1}
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.parametrize("fused", [False, True])
def test_one_grad_norm_per_step_for_clipping_and_the_guard(cli_args, monkeypatch, fused):
    """Lightning's closure path: FaultGuard's check and clipping share one norm per optimizer step,
    the guard's found_inf is one tensor updated in place, the parameter list is built once."""
    from conftest import fit_cli
    from lightning.pytorch import Callback

    calls = []
    original = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: calls.append(1) or original(*a, **k))

    class Seen(Callback):
        def __init__(self):
            self.found_inf, self.params = set(), set()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.found_inf.add(id(getattr(optimizer, "found_inf", None)))

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.params.add(id(pl_module.nonfinite_guard.params))

    seen = Seen()
    args = cli_args(max_steps=4) + ["--trainer.limit_val_batches=0", f"--model.optim.fused={str(fused).lower()}"]
    monkeypatch.setattr("gptmini.callbacks.first_batch.OverfitCheck.run", lambda *a: _skipped_check())
    cli = fit_cli(args, seen)
    assert not cli.model.runs_own_step()
    assert len(calls) == 4  # FaultGuard checks every step (tiny.yaml) and clipping is on: one norm each
    assert len(seen.params) == 1
    if fused:
        assert seen.found_inf == {id(cli.model.nonfinite_guard.found_inf)}


def _skipped_check():
    from gptmini.callbacks.checks_shared import CheckItem

    return CheckItem("overfit", "overfit one batch", "skip", "not this test's subject")
