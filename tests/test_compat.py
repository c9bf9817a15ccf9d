"""gptmini.train.compat: each private Lightning / jsonargparse API gptmini uses still exists and still
means what gptmini needs. A test here failing after an upgrade names the API that moved (fix
gptmini/train/compat.py, or the version bounds in pyproject.toml)."""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from gptmini.cli import GPTMiniCLI
from gptmini.core.schedule import ScheduleConfig
from gptmini.train import compat
from gptmini.train.module import GPTMiniModule


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "max_steps": 10}
    return pl.Trainer(default_root_dir=tmp_path, enable_progress_bar=False, **{**defaults, **kwargs})


def test_module_trainer_attribute(tmp_path, tiny_model_cfg):
    """LightningModule._trainer: None until attached (``.trainer`` raises then)."""
    module = GPTMiniModule(arch=tiny_model_cfg)
    assert compat.attached_trainer(module) is None
    t = trainer(tmp_path)
    module.trainer = t
    assert compat.attached_trainer(module) is t


def test_init_optimizers_and_lr_schedulers(tmp_path, tiny_model_cfg):
    """lightning.pytorch.core.optimizer._init_optimizers_and_lr_schedulers."""
    module = GPTMiniModule(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=1))
    module.trainer = trainer(tmp_path)
    optimizers, configs = compat.init_optimizers(module)
    assert [type(o) for o in optimizers] == [torch.optim.AdamW]
    assert configs[0].interval == "step" and configs[0].scheduler.optimizer is optimizers[0]


def test_closure_zero_grad_and_result():
    """Closure._zero_grad_fn and Closure._result, ClosureResult: the captured step runs Lightning's
    zero-grad hooks and hands the closure its loss (GPTMiniModule.optimizer_step)."""
    from lightning.pytorch.loops.optimization.automatic import Closure

    calls = []
    closure = Closure(step_fn=lambda: None, zero_grad_fn=lambda: calls.append("zero_grad"))
    compat.run_zero_grad_hooks(closure)
    loss = torch.tensor(2.0)
    copy = compat.set_closure_result(closure, loss)
    assert calls == ["zero_grad"] and torch.equal(copy, loss) and copy is not loss
    assert closure.consume_result().asdict() == {"loss": copy}


def test_signal_connector_flag(tmp_path):
    """Trainer._signal_connector.received_sigterm: the flag Lightning reads to stop (FaultGuard mixes
    a property into the connector's class, so it must be a plain attribute of the instance)."""
    t = trainer(tmp_path)
    connector = compat.signal_connector(t)
    assert "received_sigterm" in vars(connector) and connector.received_sigterm is False
    compat.request_stop(t)
    assert connector.received_sigterm is True


def test_sigterm_handler_and_broadcast(tmp_path):
    """signal_connector._HandlersCompose.signal_handlers, _SignalConnector._sigterm_notifier_fn (the
    method FaultGuard's connector class overrides) and fit_loop.epoch_loop._broadcast_sigterm_tensor."""
    import signal

    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector

    assert callable(getattr(_SignalConnector, compat.SIGTERM_NOTIFIER_HOOK))
    connector = compat.signal_connector(trainer(tmp_path))
    other, mine = (lambda s, f: None), (lambda s, f: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _HandlersCompose([connector._sigterm_notifier_fn, other]))
        compat.route_sigterm_handler(mine)
        assert signal.getsignal(signal.SIGTERM).signal_handlers == [mine, other]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop)
    t = trainer(tmp_path)
    compat.skip_sigterm_broadcast(t)
    assert t.fit_loop.epoch_loop._broadcast_sigterm_tensor() is None


class _Windows(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(compat.window_continues(trainer))


def test_accumulation_window_rule(tmp_path, tiny_model_cfg, tiny_data):
    """fit_loop.epoch_loop._should_accumulate(): True inside a window, False on its last micro-batch."""
    torch.set_num_threads(1)
    cb = _Windows()
    t = trainer(tmp_path, max_steps=2, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[cb],
                num_sanity_val_steps=0, enable_model_summary=False)
    t.fit(GPTMiniModule(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=1)), datamodule=tiny_data)
    assert cb.seen == [True, False, True, False]


def test_logger_connector_rule(tmp_path):
    """Trainer._logger_connector.should_update_logs (compat assumes "yes" without it: check it exists)."""
    t = trainer(tmp_path)
    assert isinstance(type(t._logger_connector).should_update_logs, property)
    assert compat.writes_step_metrics(t) in (True, False)


def test_model_checkpoint_interval():
    """ModelCheckpoint._every_n_train_steps."""
    assert compat.every_n_train_steps(ModelCheckpoint(every_n_train_steps=7)) == 7
    assert compat.every_n_train_steps(ModelCheckpoint()) == 0


@pytest.mark.parametrize("logger_class", [TensorBoardLogger, CSVLogger])
def test_logger_version(tmp_path, logger_class):
    """TensorBoardLogger/CSVLogger._version: None until picked; setting it fixes ``version``."""
    logger = logger_class(tmp_path, name="x")
    assert compat.logger_version_unset(logger)
    compat.set_logger_version(logger, 3)
    assert not compat.logger_version_unset(logger) and logger.version == 3
    assert not compat.logger_version_unset(logger_class(tmp_path, name="y", version=1))


def test_progress_bar_defaults():
    """TQDMProgressBar._leave."""
    assert compat.is_default_progress_bar(TQDMProgressBar())
    assert not compat.is_default_progress_bar(TQDMProgressBar(leave=True))
    assert not compat.is_default_progress_bar(TQDMProgressBar(refresh_rate=5))


def test_compute_dtype(tmp_path):
    """lightning.pytorch.callbacks.throughput_monitor._plugin_to_compute_dtype."""
    assert compat.compute_dtype(trainer(tmp_path)) == torch.float32
    assert compat.compute_dtype(trainer(tmp_path, precision="bf16-mixed")) == torch.bfloat16


def test_checkpoint_io_plugin(tmp_path):
    """Strategy._checkpoint_io (None: none configured) and plugins.io.wrapper._WrappingCheckpointIO."""  # noqa: E501
    assert compat.configured_checkpoint_io(trainer(tmp_path).strategy) is None
    mine = TorchCheckpointIO()
    assert compat.configured_checkpoint_io(trainer(tmp_path, plugins=[mine]).strategy) is mine
    assert compat.wraps_checkpoint_io(AsyncCheckpointIO()) and not compat.wraps_checkpoint_io(mine)


def test_fsdp_questions(tmp_path):
    """is_fsdp: the run shards (any FSDPStrategy); names_fsdp: a setting Lightning refuses on CPU."""
    from lightning.pytorch.strategies import FSDPStrategy

    assert compat.is_fsdp("fsdp") and compat.names_fsdp("fsdp") and not compat.names_fsdp("ddp")
    assert compat.is_fsdp(FSDPStrategy()) and compat.names_fsdp(FSDPStrategy())
    assert not compat.uses_fsdp(trainer(tmp_path))


def test_cluster_environment(tmp_path, monkeypatch):
    """Trainer._accelerator_connector.cluster_environment."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    assert isinstance(compat.cluster_environment(trainer(tmp_path)), LightningEnvironment)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    assert isinstance(compat.cluster_environment(trainer(tmp_path)), SLURMEnvironment)


def test_restricted_number_types_describe_themselves():
    """jsonargparse.typing restricted types (public): their docstring "<int|float> restricted to be
    <bounds>" is what gptmini.core.config's messages quote; an int/float subclass in jsonargparse.typing."""
    from jsonargparse.typing import ClosedUnitInterval, PositiveInt

    from gptmini.core.config import VocabSize, check_value, describe

    assert describe(PositiveInt) == "an integer >0"
    assert describe(ClosedUnitInterval) == "a number ≥0 and ≤1"
    assert describe(VocabSize) == "an integer ≥2 and ≤65536"
    assert check_value("x", PositiveInt, 3) == 3 and type(check_value("x", PositiveInt, 3)) is int
    with pytest.raises(ValueError, match="x must be an integer >0, got 0"):
        check_value("x", PositiveInt, 0)


def test_compiled_in_place(tiny_model_cfg):
    """torch: nn.Module._compiled_call_impl, set by nn.Module.compile (lazily: nothing compiles here)."""
    module = GPTMiniModule(arch=tiny_model_cfg).model
    assert not compat.is_compiled(module)
    module.compile()
    assert compat.is_compiled(module)


def test_parse_ckpt_path_hook():
    """LightningCLI._parse_ckpt_path: called by LightningCLI.__init__ and turned off by GPTMiniCLI
    (else the checkpoint's settings would silently replace the user's; gptmini.train.resume)."""
    name = compat.PARSE_CKPT_PATH_HOOK
    init = inspect.getsource(LightningCLI.__init__)
    if not hasattr(LightningCLI, name):  # Lightning < 2.5.1 applies no checkpoint settings at all
        assert "ckpt_path" not in init
        return
    assert f"self.{name}()" in init
    assert getattr(GPTMiniCLI, name) is not getattr(LightningCLI, name)


def test_parse_given_values():
    """jsonargparse: _link_arguments.skip_apply_links and parse_args(_skip_validation=)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--a", type=int, default=1)
    parser.add_argument("--b", type=int, default=2)
    parser.add_argument("--c", type=int, default=3)
    parser.link_arguments("a", "c")
    given = compat.parse_given(parser, ["--a=5"])
    assert given.as_dict() == {"a": 5}  # no default b, no linked c
    assert compat.parse_given(parser, {"b": 4}).as_dict() == {"b": 4}
    assert "a" in [action.dest for action in compat.parser_actions(parser)]  # argparse's _actions


def test_attribute_docstrings_setting():
    """jsonargparse._optionals.get_docstring_parse_options (set_parsing_settings has no getter)."""
    from jsonargparse._optionals import get_docstring_parse_options  # noqa: F401 - fails loudly if moved

    before = compat.attribute_docstrings_on()
    with compat.attribute_docstrings_off():
        assert compat.attribute_docstrings_on() is False
    assert compat.attribute_docstrings_on() is before


def test_private_names_are_used_only_in_compat():
    """A private Lightning/jsonargparse name outside gptmini/train/compat.py would move unnoticed."""
    import re
    from pathlib import Path

    package = Path(__file__).parent.parent / "gptmini"
    private_import = re.compile(r"^\s*from (lightning|jsonargparse)[\w.]*\s+import\s+_|^\s*from (lightning|jsonargparse)[\w.]*\._", re.M)
    private_attr = re.compile(
        r"\b(trainer|logger|cb|callback|strategy|parser|action|sub|hint|module|pl_module|model|fit_loop|epoch_loop)\._[a-z]\w*"
    )
    for path in sorted(package.rglob("*.py")):
        if path.name == "compat.py":
            continue
        text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())  # code, not comments
        text = re.sub(r"``[^`]*``", "", text)  # nor names quoted in docstrings
        assert not private_import.search(text), f"{path}: a private import; wrap it in gptmini.train.compat"
        found = [m.group(0) for m in private_attr.finditer(text)]
        assert not found, f"{path}: {found}; wrap it in gptmini.train.compat"


def test_lightning_passes_over_a_callback_hook_that_is_not_callable_and_names_the_running_hook(
    tmp_path, tiny_model_cfg, tiny_data
):
    """trainer.call._call_callback_hooks calls a callback's hook only when it is callable
    (compat.skip_callback_hook); LightningModule._current_fx_name (compat.CURRENT_FX_NAME) is the hook
    Lightning is running, set on the module around each one."""
    from lightning.pytorch.callbacks import Callback

    class Counter(Callback):
        def __init__(self):
            self.starts = self.ends = 0

        def on_train_batch_start(self, *args):
            self.starts += 1

        def on_train_batch_end(self, *args):
            self.ends += 1

    class Named(GPTMiniModule):
        def training_step(self, batch, batch_idx):
            self.seen = getattr(self, compat.CURRENT_FX_NAME)
            return super().training_step(batch, batch_idx)

    cb = Counter()
    compat.skip_callback_hook(cb, "on_train_batch_end")
    assert compat.skips_callback_hook(cb, "on_train_batch_end")
    module = Named(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=1))
    trainer(tmp_path, max_steps=2, callbacks=[cb]).fit(module, datamodule=tiny_data)
    assert (cb.starts, cb.ends) == (2, 0) and module.seen == "training_step"
    compat.unskip_callback_hook(cb, "on_train_batch_end")
    cb.on_train_batch_end()
    assert cb.ends == 1 and not compat.skips_callback_hook(cb, "on_train_batch_end")
