"""gptmini.callbacks.recipe_checks: each recipe check passes on the recipe and names the problem (and
the fix) when the run breaks it."""

from __future__ import annotations

import pytest
import torch
from check_helpers import CustomSchedule, fit, make_module, schedule_curve

from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.checks_shared import SanityCheckError
from gptmini.callbacks.recipe_checks import (
    betas_item,
    clipping_item,
    decay_groups_item,
    eval_mode_item,
    interval_item,
    peak_lr_item,
    warmup_items,
)
from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw

# -- recipe checks --------------------------------------------------------------------------------------------------


@pytest.fixture
def micro() -> GPTMini:
    return GPTMini(ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))


def test_recipe_checks_pass_on_the_recipe(micro):
    opt = build_adamw(micro, OptimConfig(lr=6e-4))
    assert decay_groups_item(micro, opt).status == "pass"
    assert betas_item(opt).status == "pass"
    assert clipping_item(1.0).status == "pass"
    assert peak_lr_item(micro, opt, 1e-3, 20_000_000).status == "pass"
    assert [i.status for i in warmup_items(schedule_curve(1000, 30), 0.1, 0.01, 0.05)] == ["pass", "pass"]
    assert eval_mode_item(micro).status == "pass"


def test_weight_decay_on_embeddings_or_norms_is_an_error(micro):
    opt = torch.optim.AdamW(micro.parameters(), lr=1e-3, weight_decay=0.1)  # one group: everything decays
    item = decay_groups_item(micro, opt)
    assert item.status == "fail"
    assert "weight decay is applied to embedding/norm" in item.detail and "tok_emb.weight" in item.detail


def test_recipe_check_warnings_name_the_problem(micro):
    opt = build_adamw(micro, OptimConfig(lr=3e-3, betas=(0.9, 0.999)))
    assert betas_item(opt).status == "warn" and "0.999" in betas_item(opt).detail
    item = peak_lr_item(micro, opt, 1e-3, 20_000_000)
    assert item.status == "warn" and "peak lr 3.00e-03 > 0.001" in item.detail
    assert clipping_item(None).status == "warn" and "no gradient clipping" in clipping_item(None).detail
    statuses = {i.key: i for i in warmup_items(schedule_curve(1000, 0), 0.1, 0.01, 0.05)}
    assert statuses["no_warmup"].status == "warn" and "no warmup" in statuses["no_warmup"].detail
    micro.blocks[1].eval()
    item = eval_mode_item(micro)
    assert item.status == "fail" and "eval mode" in item.detail and "blocks.1" in item.detail


@pytest.mark.filterwarnings("ignore:.*peak lr")
def test_betas_0999_warn_at_fit_start_and_the_check_can_be_switched_off(tiny_data, tiny_model_cfg, tmp_path):
    with pytest.warns(UserWarning, match=r"\(0.9, 0.999\): beta2 0.999"):
        fit(make_module(tiny_model_cfg, betas=(0.9, 0.999)), tiny_data, [Checklist()], tmp_path)
    checklist = Checklist(disable=["betas"])
    with pytest.warns(UserWarning, match="recipe check 'betas' is disabled by config") as record:
        fit(make_module(tiny_model_cfg, betas=(0.9, 0.999)), tiny_data, [checklist], tmp_path)
    assert not any("beta2 0.999" in str(w.message) for w in record)
    assert checklist.items["betas"].status == "off"


def test_scheduler_stepping_per_epoch_is_an_error(tiny_data, tiny_model_cfg, tmp_path):
    module = CustomSchedule(lambda k: 1.0, interval="epoch", arch=tiny_model_cfg)
    with pytest.raises(SanityCheckError, match="steps once per epoch"):
        fit(module, tiny_data, [Checklist(disable=["peak_lr"])], tmp_path)
    assert interval_item([]).status == "note"


def test_training_in_eval_mode_is_an_error(tiny_data, tiny_model_cfg, tmp_path):
    module = make_module(tiny_model_cfg, lr=6e-4)
    module.eval()
    with pytest.raises(SanityCheckError, match="training would run in eval mode"):
        fit(module, tiny_data, [Checklist()], tmp_path)


def test_unknown_recipe_check_name_is_refused():
    with pytest.raises(ValueError, match="unknown recipe check"):
        Checklist(disable=["no_such_check"])
