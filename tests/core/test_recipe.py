"""gptmini.core.recipe and gptmini.train.compat: each recipe number and each "what is this run" rule
has one home, and the places that use it read it from there."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gptmini.callbacks import first_batch
from gptmini.callbacks.checklist import Checklist
from gptmini.callbacks.first_batch import OverfitCheck
from gptmini.callbacks.lr_curve import LRCurveCheck, curve_shape, lr_curve_problems, warmup_unfinished_problem
from gptmini.callbacks.recipe_checks import betas_item, warmup_items
from gptmini.core import recipe
from gptmini.core.config import ConfigError
from gptmini.core.optim import OptimConfig
from gptmini.core.schedule import ScheduleConfig, validate_horizon
from gptmini.train import compat
from gptmini.train.module import GPTMiniModule

PACKAGE = Path(__file__).parent.parent.parent / "gptmini"


def sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_betas_default_and_check_are_the_recipe_constant():
    assert OptimConfig().betas == recipe.BETAS
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], betas=recipe.BETAS)
    assert betas_item(opt).status == "pass"
    opt.param_groups[0]["betas"] = (0.9, 0.99)
    assert betas_item(opt).status == "note"
    # No module spells the pair out again.
    for name, text in sources().items():
        if name != "core/recipe.py":
            pairs = [
                n for n in ast.walk(ast.parse(text))
                if isinstance(n, ast.Tuple) and [getattr(e, "value", None) for e in n.elts] == list(recipe.BETAS)
            ]
            assert not pairs, f"{name} spells out the recipe betas; import gptmini.core.recipe.BETAS"


def test_check_tolerances_default_to_the_recipe_constants():
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(Checklist.__init__, "start_tolerance") == recipe.START_TOLERANCE
    assert default(Checklist.__init__, "warmup_range") == recipe.WARMUP_FRACTION
    assert default(LRCurveCheck.__init__, "start_tolerance") == recipe.START_TOLERANCE
    assert default(lr_curve_problems, "start_tolerance") == recipe.START_TOLERANCE


def test_warmup_messages_name_the_full_setting_key():
    advice = recipe.warmup_advice()
    assert advice == "set model.schedule.warmup_steps to 1%-5% of trainer.max_steps"
    with pytest.raises(ConfigError) as info:
        validate_horizon(20, 10)
    assert str(info.value).startswith("model.schedule.warmup_steps (20) must be smaller") and advice in str(info.value)
    flat = np.full(100, 1e-3)  # no warmup
    (total, no_warmup) = warmup_items(flat, recipe.START_TOLERANCE, *recipe.WARMUP_FRACTION)
    assert no_warmup.status == "warn" and advice in no_warmup.detail
    rising = np.linspace(1e-5, 1e-3, 10)  # still warming up at the last step
    assert recipe.warmup_advice(10) in warmup_unfinished_problem(curve_shape(rising), 10, 2e-3)
    for name, text in sources().items():
        assert "1-5%" not in text.replace("1-5% rule", ""), f"{name}: use gptmini.core.recipe.warmup_advice"


def test_grad_scaler_and_fsdp_are_asked_in_one_place():
    assert compat.grad_scaler(None) is None
    scaler = object()
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    assert compat.grad_scaler(trainer) is scaler
    assert compat.grad_scaler(SimpleNamespace(precision_plugin=object())) is None
    assert not compat.uses_fsdp(pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False))
    assert compat.is_fsdp("fsdp") and compat.is_fsdp("FSDP") and not compat.is_fsdp("ddp")
    for name, text in sources().items():
        if name == "train/compat.py":
            continue
        asks = '"scaler"' in text or "precision_plugin.scaler" in text
        assert not asks, f"{name}: use gptmini.train.compat.grad_scaler"
        assert '"FSDP"' not in text, f"{name}: use gptmini.train.compat.uses_fsdp, not the class name"
        asks_fsdp = re.search(r"import .*(FullyShardedDataParallel|FSDPStrategy)|get_registered_strategies", text)
        assert not asks_fsdp, f"{name}: use gptmini.train.compat.is_fsdp"


def test_overfit_ramp_is_the_schedules_warmup(tiny_data, tiny_model_cfg, tmp_path, monkeypatch, capsys):
    """OverfitCheck's lr ramp comes from gptmini.core.schedule.lr_multiplier (here replaced by a
    constant 0.5, which every printed lr must show)."""
    calls = []

    def half(step, warmup_steps, max_steps, min_lr_ratio):
        calls.append((step, warmup_steps, max_steps, min_lr_ratio))
        return 0.5

    monkeypatch.setattr(first_batch, "lr_multiplier", half)
    torch.set_num_threads(1)
    module = GPTMiniModule(arch=tiny_model_cfg, optim=OptimConfig(lr=2e-3), schedule=ScheduleConfig(warmup_steps=1))
    check = OverfitCheck(steps=3, warmup_steps=2, threshold=100.0, stop_early=False, log_every=1)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=TensorBoardLogger(tmp_path, name="t"), callbacks=[check],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=tiny_data)
    assert calls == [(k, 2, 3, 1.0) for k in range(3)]
    lines = [x for x in capsys.readouterr().out.splitlines() if "overfit step" in x]
    assert len(lines) == 3 and all(x.endswith("lr 1.00e-03") for x in lines), lines
