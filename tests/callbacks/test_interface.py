"""gptmini.callbacks.interface: the module the callbacks read is declared, and GPTMiniModule provides it."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning.pytorch as pl

from gptmini.callbacks.interface import RecipeModule, recipe_module
from gptmini.core.model import GPTMini
from gptmini.train.module import GPTMiniModule

CALLBACKS = Path(__file__).parent.parent.parent / "gptmini" / "callbacks"


def test_gptmini_module_provides_the_interface(tiny_model_cfg):
    module = GPTMiniModule(arch=tiny_model_cfg)
    assert isinstance(module, RecipeModule) and recipe_module(module) is module
    assert isinstance(module.model, GPTMini) and module.model_cfg == tiny_model_cfg
    assert module.last_loss is None and module.schedule_cfg.min_lr_ratio == 0.1


def test_another_module_is_not_taken_for_one():
    assert recipe_module(pl.LightningModule()) is None


def test_callbacks_read_no_module_attribute_by_name():
    """No ``getattr(pl_module, "...")`` and no ``pl_module.<name>`` beyond Lightning's own API."""
    lightning_api = set(dir(pl.LightningModule))
    for path in sorted(CALLBACKS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and node.args:
                target = ast.unparse(node.args[0])
                assert target not in ("pl_module", "module"), f"{path.name}: {ast.unparse(node)}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pl_module":
                assert node.attr in lightning_api, f"{path.name}: pl_module.{node.attr} (use callbacks.interface)"


def test_recipe_module_is_isinstance_of_the_protocol_member_by_member(tiny_model_cfg):
    """recipe_module lists the members once (no typing walk per call) and answers as isinstance does."""
    from types import SimpleNamespace

    from gptmini.callbacks.interface import MEMBERS

    assert set(MEMBERS) == {"model", "model_cfg", "schedule_cfg", "last_loss", "nonfinite_guard", "runs_own_step"}
    full = {**dict.fromkeys(MEMBERS), "runs_own_step": lambda: False}  # data members may be None
    for missing in (None, *MEMBERS):
        obj = SimpleNamespace(**{k: v for k, v in full.items() if k != missing})
        assert (recipe_module(obj) is obj) == isinstance(obj, RecipeModule) == (missing is None), missing
    blocked = SimpleNamespace(**{**full, "runs_own_step": None})  # typing's rule: a method set to None
    assert recipe_module(blocked) is None and not isinstance(blocked, RecipeModule)
