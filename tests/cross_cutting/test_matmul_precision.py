"""fp32 matmul precision ``high`` (TF32) on CUDA, decided once (gptmini.core.step.use_tf32_matmuls) and
set by the CLI before the Trainer sets up its device; never on CPU, never over the user's setting."""

from __future__ import annotations

import torch

import gptmini.cli as cli_mod
from gptmini.core.step import use_tf32_matmuls


def test_tf32_on_cuda_only_and_never_over_a_precision_already_set(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)  # no global change here
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")  # torch's default
    assert not use_tf32_matmuls("cpu") and not use_tf32_matmuls(torch.device("cpu")) and calls == []
    assert use_tf32_matmuls(torch.device("cuda", 1)) and calls == ["high"]
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")  # the user's choice
    assert not use_tf32_matmuls("cuda") and calls == ["high"]


def test_the_cli_decides_it_for_the_trainers_device_before_fit(cli_args, monkeypatch):
    seen: list = []
    monkeypatch.setattr(cli_mod, "use_tf32_matmuls", seen.append)
    cli = cli_mod.make_cli(cli_args()[1:], run=False)  # instantiated, not fitted: the device not set up yet
    assert seen == [cli.trainer.strategy.root_device] == [torch.device("cpu")]
    assert torch.get_float32_matmul_precision() == "highest"  # CPU: left as it was
