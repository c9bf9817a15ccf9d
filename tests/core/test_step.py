"""The one hand-written training step (gptmini.core.step) and the device defaults it sits with."""


import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from gptmini.callbacks import first_batch
from gptmini.core import plainloop, step
from gptmini.core.model import ModelConfig
from gptmini.core.step import NoGradientError, compile_by_default, train_step
from gptmini.train.module import GPTMiniModule


def test_one_home_for_each_step():
    # Same objects, not copies: the plain loop (the baseline scripts/bench.py times) runs the step the
    # module captures; the overfit check keeps the variant with an fp16 grad scaler.
    assert plainloop.guarded_step is step.guarded_step
    assert first_batch.train_step is step.train_step


def test_train_step_clips_steps_and_returns_the_detached_loss():
    torch.manual_seed(0)
    net = nn.Linear(4, 1, bias=False)
    before = net.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    x = torch.randn(8, 4) * 100  # a large gradient, so clipping to 0.5 decides the update size
    loss = train_step(lambda: net(x).pow(2).mean(), opt, list(net.parameters()), clip=0.5)
    assert not loss.requires_grad and loss > 0
    assert torch.linalg.vector_norm(net.weight.detach() - before).item() == pytest.approx(0.5, rel=1e-5)


def test_train_step_refuses_a_loss_without_gradient():
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(NoGradientError, match="does not depend on any trainable parameter"):
        train_step(lambda: torch.ones(()), opt, list(net.parameters()))


def test_compile_default_has_one_home():
    assert compile_by_default(None, "cuda") is True
    assert compile_by_default(None, "cpu") is False
    assert compile_by_default(True, "cpu") is True and compile_by_default(False, "cuda") is False


def test_compile_defaults_per_device():
    module = GPTMiniModule(ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    module.trainer = trainer
    assert module._should_compile() is False  # CPU: off unless asked
    assert GPTMiniModule(compile=True).compile_setting is True
