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


def test_signal_connector_flag(tmp_path):
    """Trainer._signal_connector.received_sigterm: the flag Lightning reads to stop (FaultGuard mixes
    a property into the connector's class, so it must be a plain attribute of the instance)."""
    t = trainer(tmp_path)
    connector = compat.signal_connector(t)
    assert "received_sigterm" in vars(connector) and connector.received_sigterm is False
    compat.request_stop(t)
    assert connector.received_sigterm is True


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
    """Strategy._checkpoint_io (None: none configured) and plugins.io.wrapper._WrappingCheckpointIO."""
    assert compat.configured_checkpoint_io(trainer(tmp_path).strategy) is None
    mine = TorchCheckpointIO()
    assert compat.configured_checkpoint_io(trainer(tmp_path, plugins=[mine]).strategy) is mine
    assert issubclass(AsyncCheckpointIO, compat.WrappingCheckpointIO)


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
