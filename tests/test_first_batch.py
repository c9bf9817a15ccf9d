"""gptmini.callbacks.first_batch: InitialLossCheck and OverfitCheck stop a broken run at the first
batch, naming the problem."""

from __future__ import annotations

import pytest
import torch
from check_helpers import fit, make_module

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import SanityCheckError
from gptmini.callbacks.first_batch import InitialLossCheck, OverfitCheck
from gptmini.core.model import ModelConfig
from gptmini.core.schedule import ScheduleConfig
from gptmini.train.module import GPTMiniModule

# -- initial loss ---------------------------------------------------------------------------------------


def test_initial_loss_check_stops_a_run_whose_init_is_broken(tiny_data, tiny_model_cfg, tmp_path):
    cfg = ModelConfig(**{**tiny_model_cfg.__dict__, "init_std": 1.0})  # logits far from uniform
    module = make_module(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(SanityCheckError, match=r"initial loss check failed: .* vs ln\(384\).*init"):
        fit(module, tiny_data, [InitialLossCheck()], tmp_path)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # stopped before step 0


def test_initial_loss_check_stops_a_loss_far_below_chance(tiny_data, tiny_model_cfg, tmp_path):
    class Leaky(GPTMiniModule):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 0.01  # as if the model saw the targets

    module = Leaky(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=2))
    with pytest.raises(SanityCheckError, match="better than chance .*sees the targets"):
        fit(module, tiny_data, [InitialLossCheck(), Checklist(disable=["peak_lr"])], tmp_path)


# -- overfit ----------------------------------------------------------------------------------------------


def test_overfit_check_fails_with_lr_zero(tiny_data, tiny_model_cfg, tmp_path, capsys):
    module = make_module(tiny_model_cfg)
    module.optim_cfg.lr = 0.0  # OptimConfig refuses 0; this is the bug the check must catch
    with pytest.raises(
        SanityCheckError, match=r"overfit check failed: .*peak lr 0\.00e\+00.*the model cannot learn"
    ):
        fit(module, tiny_data, [OverfitCheck(steps=10)], tmp_path)
    assert "[step-0 checks] overfit step    0/10" in capsys.readouterr().out


def test_overfit_check_fails_for_a_frozen_model(tiny_data, tiny_model_cfg, tmp_path):
    module = make_module(tiny_model_cfg)
    module.model.requires_grad_(False)
    with pytest.raises(SanityCheckError, match="no trainable parameter .frozen model"):
        fit(module, tiny_data, [OverfitCheck(steps=10)], tmp_path)
