import functools

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit_cli

from gptmini.core.model import GPTMini
from gptmini.core.optim import OptimConfig
from gptmini.core.schedule import ScheduleConfig, lr_multiplier
from gptmini.train import compat
from gptmini.train.module import GPTMiniModule


def make_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,  # step metrics reach callback_metrics on written steps (Recorder reads them)
    )
    return pl.Trainer(**{**defaults, **kwargs})


class Recorder(pl.Callback):
    """Records the lr and the post-clip grad norm of every optimizer step."""

    def __init__(self):
        self.lrs, self.post_clip_norms, self.pre_clip_norms = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Lightning zeroes grads at the start of the next step, so they are still the clipped ones.
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.post_clip_norms.append(torch.nn.utils.get_total_norm(grads).item())
        if "train/grad_norm" in trainer.callback_metrics:
            self.pre_clip_norms.append(trainer.callback_metrics["train/grad_norm"].item())


class LoudModule(GPTMiniModule):
    """Loss scaled up so the gradient norm is far above the clip threshold."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 1000.0


def test_configure_optimizers_two_groups_and_step_interval(tiny_model_cfg):
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=2))
    trainer = make_trainer(max_steps=10)
    module.trainer = trainer
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sched["interval"] == "step" and sched["frequency"] == 1
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR)


def test_missing_max_steps_is_a_clear_error(tiny_model_cfg, tiny_data):
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=2))
    with pytest.raises(ValueError, match="trainer.max_steps"):
        make_trainer(max_epochs=1).fit(module, datamodule=tiny_data)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_clipping_with_fused_adamw(precision, tiny_model_cfg, tiny_data):
    torch.manual_seed(0)
    module = LoudModule(tiny_model_cfg, OptimConfig(fused=True), ScheduleConfig(warmup_steps=1))
    rec = Recorder()
    trainer = make_trainer(max_steps=3, precision=precision, gradient_clip_val=1.0, callbacks=[rec])
    trainer.fit(module, datamodule=tiny_data)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(rec.post_clip_norms) == 3
    assert min(rec.pre_clip_norms) > 10.0  # the norm really needed clipping
    assert max(rec.post_clip_norms) == pytest.approx(1.0, rel=1e-3)


def test_lightning_default_clipping_refuses_fused_under_bf16(tiny_model_cfg, tiny_data):
    """The trap we work around: if this starts passing without our override, Lightning fixed it."""

    class DefaultClip(LoudModule):
        def configure_gradient_clipping(
            self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
        ):
            pl.LightningModule.configure_gradient_clipping(
                self, optimizer, gradient_clip_val, gradient_clip_algorithm
            )

    module = DefaultClip(tiny_model_cfg, OptimConfig(fused=True), ScheduleConfig(warmup_steps=1))
    trainer = make_trainer(max_steps=2, precision="bf16-mixed", gradient_clip_val=1.0)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        trainer.fit(module, datamodule=tiny_data)


def test_no_clip_still_logs_grad_norm(tiny_model_cfg, tiny_data):
    module = LoudModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    rec = Recorder()
    make_trainer(max_steps=2, callbacks=[rec]).fit(module, datamodule=tiny_data)
    assert len(rec.pre_clip_norms) == 2
    assert rec.post_clip_norms == pytest.approx(rec.pre_clip_norms, rel=1e-4)


def test_scheduler_steps_once_per_optimizer_step_with_accumulation(tiny_model_cfg, tiny_data):
    warmup, max_steps = 3, 6
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=warmup))
    rec = Recorder()
    trainer = make_trainer(max_steps=max_steps, accumulate_grad_batches=4, callbacks=[rec])
    trainer.fit(module, datamodule=tiny_data)
    assert trainer.global_step == max_steps
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4 * max_steps
    expected = [1e-3 * lr_multiplier(s, warmup, max_steps, 0.1) for s in range(max_steps)]
    assert [lrs[0] for lrs in rec.lrs] == pytest.approx(expected)
    assert all(a == b for a, b in rec.lrs)  # both groups share the schedule


def test_validation_logs_loss_and_perplexity(tiny_model_cfg, tiny_data):
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    trainer = make_trainer(max_steps=2, limit_val_batches=3)
    metrics = trainer.validate(module, datamodule=tiny_data, verbose=False)[0]
    assert metrics["val/ppl"] == pytest.approx(torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-6)


class FixedLogits(torch.nn.Module):
    """Stands in for GPTMini: logits sure of the target, except one token sure of another id."""

    def forward(self, x, y):
        logits = torch.zeros(*y.shape, 16)
        logits.scatter_(-1, y.unsqueeze(-1), 8.0)
        if x[0, 0] == 1:  # the first batch: one very confident miss
            logits[0, 0, (y[0, 0] + 1) % 16] = 200.0
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, 16), y.reshape(-1))


def test_val_ppl_is_exp_of_token_weighted_loss_and_finite(tiny_model_cfg):
    # 5 windows in batches of 2, 2, 1: a per-batch mean would weigh the last window double.
    x = torch.zeros(5, 100, dtype=torch.long)
    x[0, 0] = 1
    y = torch.arange(500).view(5, 100) % 16
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    module = GPTMiniModule(tiny_model_cfg, OptimConfig(), ScheduleConfig(warmup_steps=1))
    module.model = FixedLogits()
    metrics = make_trainer(limit_val_batches=None).validate(module, loader, verbose=False)[0]

    logits = torch.cat([module.model(xb, yb)[0] for xb, yb in loader])
    token_losses = torch.nn.functional.cross_entropy(logits.view(-1, 16), y.reshape(-1), reduction="none")
    expected = token_losses.double().mean().exp().item()  # ~1.5: one miss of ~192 nats in 500 tokens
    assert metrics["val/ppl"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-6)
    # What torchmetrics' Perplexity reports for the same logits: fp32 probabilities underflow.
    from torchmetrics.text import Perplexity

    assert Perplexity()(logits, y).isinf()


def test_vocab_mismatch_between_data_and_model_is_a_clear_error(tiny_model_cfg, tiny_data):
    from dataclasses import replace

    module = GPTMiniModule(
        replace(tiny_model_cfg, vocab_size=500), OptimConfig(), ScheduleConfig(warmup_steps=1)
    )
    with pytest.raises(ValueError, match=r"vocab size \(384.*model.arch.vocab_size \(500\)"):
        make_trainer(max_steps=2).fit(module, datamodule=tiny_data)


def test_compiled_module_checkpoint_has_no_orig_mod(cli_args, tmp_path, monkeypatch):
    # The eager backend: Dynamo traces and wraps the model exactly as with inductor, minus the
    # minutes of C++ codegen a 2-core CPU would spend. Key names are decided by the wrapping.
    monkeypatch.setattr(
        torch.nn.Module, "compile", functools.partialmethod(torch.nn.Module.compile, backend="eager")
    )
    cli = fit_cli(cli_args(max_steps=8) + ["--model.compile=true", "--trainer.limit_val_batches=0"])
    assert compat.is_compiled(cli.model.model)  # it really was compiled
    path = tmp_path / "compiled.ckpt"
    cli.trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    bare = GPTMini(cli.model.model_cfg)
    bare.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})


def test_per_step_attributes_are_plain_and_others_still_register(tiny_model_cfg):
    """GPTMiniModule sets its per-step attributes (and Lightning's hook name) without nn.Module's registry
    checks: they stay plain attributes, out of the state dict; any other name still registers as before."""
    from gptmini.train.compat import CURRENT_FX_NAME
    from gptmini.train.module import PLAIN_STEP_ATTRS

    module = GPTMiniModule(arch=tiny_model_cfg)
    keys = set(module.state_dict())
    assert CURRENT_FX_NAME in PLAIN_STEP_ATTRS
    for name in PLAIN_STEP_ATTRS:
        setattr(module, name, torch.ones(1))
        assert torch.equal(getattr(module, name), torch.ones(1)) and name in vars(module)
    assert set(module.state_dict()) == keys
    module.extra = torch.nn.Linear(2, 2)  # not a per-step name: nn.Module's rules apply
    module.register_buffer("buf", torch.zeros(1))
    module.buf = torch.ones(1)
    assert dict(module.named_children())["extra"] is module.extra and "extra.weight" in module.state_dict()
    assert torch.equal(module.state_dict()["buf"], torch.ones(1))


def test_step_signatures_built_once_are_the_methods_own(tiny_model_cfg):
    """inspect (and so Lightning's per-batch "does training_step take batch_idx?") reads the signature
    built at import; it is the method's own, and a subclass's override is read afresh."""
    import inspect
    import types

    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

    module = GPTMiniModule(arch=tiny_model_cfg)
    for name in ("training_step", "validation_step"):
        fn = getattr(GPTMiniModule, name)
        bare = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        bare.__annotations__, bare.__kwdefaults__ = fn.__annotations__, fn.__kwdefaults__  # no __signature__
        assert "__signature__" in vars(fn) and inspect.signature(fn) == inspect.signature(bare)
        assert inspect.getfullargspec(getattr(module, name)) == inspect.getfullargspec(bare)
        assert is_param_in_hook_signature(getattr(module, name), "batch_idx", min_args=2)

    class OneArg(GPTMiniModule):
        def training_step(self, batch):
            return super().training_step(batch, 0)

    assert inspect.getfullargspec(OneArg(arch=tiny_model_cfg).training_step).args == ["self", "batch"]
