import pytest
import torch
from torch import nn

from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw, param_groups, use_fused


@pytest.fixture
def model():
    return GPTMini(ModelConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))


def test_two_groups_disjoint_and_cover_every_parameter_once(model):
    decay, no_decay = param_groups(model, 0.1)
    ids_d = [id(p) for p in decay["params"]]
    ids_n = [id(p) for p in no_decay["params"]]
    assert len(set(ids_d)) == len(ids_d) and len(set(ids_n)) == len(ids_n)
    assert not set(ids_d) & set(ids_n)
    assert set(ids_d) | set(ids_n) == {id(p) for p in model.parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_each_parameter_in_the_group_the_rule_says(model):
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    # Embedding (= tied head) and every RMSNorm gain: no decay.
    assert "tok_emb.weight" in no_decay_names
    assert {n for n in names.values() if "norm" in n} <= no_decay_names
    assert no_decay_names == {"tok_emb.weight"} | {n for n in names.values() if "norm" in n}
    # Every Linear weight except the tied head decays.
    expected = {
        f"{mn}.weight" for mn, m in model.named_modules() if isinstance(m, nn.Linear) and mn != "lm_head"
    }
    assert decay_names == expected
    assert all(p.ndim == 2 for p in decay["params"])


def test_biases_go_to_no_decay():
    net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4, bias=True), nn.LayerNorm(4))
    decay, no_decay = param_groups(net, 0.1)
    assert [p is net[1].weight for p in decay["params"]] == [True]
    assert any(p is net[1].bias for p in no_decay["params"])


def test_frozen_parameters_are_left_out(model):
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    decay, _ = param_groups(model, 0.1)
    assert all(p is not model.blocks[0].attn.qkv.weight for p in decay["params"])


def test_adamw_hyperparameters_from_config(model):
    opt = build_adamw(model, OptimConfig(lr=1e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.2))
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    for g in opt.param_groups:
        assert g["lr"] == 1e-3 and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def test_defaults_are_the_recipe():
    cfg = OptimConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps) == (6e-4, 0.1, (0.9, 0.95), 1e-8)


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"lr": 0}, "optim.lr"),
        ({"betas": (0.9, 1.0)}, "optim.betas"),
        ({"weight_decay": -1}, "optim.weight_decay"),
    ],
)
def test_bad_values_name_the_setting(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        OptimConfig(**kwargs)


def test_fused_rule_has_one_home_and_build_adamw_honours_the_config(model):
    """optim.fused set: used as is (build_adamw used to ignore it); null: on for CUDA without a scaler."""
    assert build_adamw(model, OptimConfig()).defaults["fused"] is False  # CPU default
    assert build_adamw(model, OptimConfig(fused=True)).defaults["fused"] is True
    assert use_fused(OptimConfig(), "cuda") is True
    assert use_fused(OptimConfig(), "cuda", grad_scaler=True) is False
    assert use_fused(OptimConfig(), "cpu") is False
    assert use_fused(OptimConfig(fused=False), "cuda") is False
