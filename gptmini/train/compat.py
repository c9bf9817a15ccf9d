"""Every use of Lightning's, torch's and jsonargparse's private API, in one place, and the questions
about a trainer that more than one module asks (grad scaler, FSDP), answered once.

Each private name is used only here, in gptmini/, scripts/ and tests/ alike (a private method that
gptmini overrides is declared here as a ``*_HOOK`` name: ``LightningCLI._parse_ckpt_path`` in
gptmini.cli, ``_SignalConnector._sigterm_notifier_fn`` in gptmini.callbacks.stop_rules);
``tests/train/test_compat.py`` tests each one, failing naming the API when a release moves it, and its
scan (``test_private_names_go_through_compat``) fails naming any private use elsewhere. Tested with
Lightning 2.6 and jsonargparse 4.53; pyproject's bounds say which releases these were checked
against. Why each is needed is said where it is wrapped: mostly a rule Lightning has but does not
expose, which gptmini must follow exactly (e.g. "this batch ends an accumulation window").
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

# -- questions about a trainer (public API; one answer each) -------------------------------------


def grad_scaler(trainer: pl.Trainer | None) -> torch.amp.GradScaler | None:
    """The fp16 grad scaler Lightning's precision plugin steps with, or None (32-bit, bf16, no trainer).

    A scaler changes three rules: fused AdamW is off, Lightning clips (it unscales first), and inf
    gradients are routine (the scaler skips those steps itself).
    """
    if trainer is None:
        return None
    return getattr(trainer.precision_plugin, "scaler", None)


def is_fsdp(strategy: object, exact: bool = False) -> bool:
    """Whether ``strategy`` (an instance, or a name as ``trainer.strategy`` takes it: "fsdp",
    "fsdp_cpu_offload", ...) is Lightning's FSDPStrategy or a subclass; with ``exact``, a name or
    exactly FSDPStrategy: what Lightning refuses without a GPU (``_check_strategy_and_fallback``)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, str):
        return strategy.lower() in FSDPStrategy.get_registered_strategies()
    return type(strategy) is FSDPStrategy if exact else isinstance(strategy, FSDPStrategy)


def uses_fsdp(trainer: pl.Trainer | None) -> bool:
    """Whether the run shards its weights with FSDP."""
    return trainer is not None and is_fsdp(trainer.strategy)


# -- Lightning, private ----------------------------------------------------------------------------


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's trainer, or None when it is not attached (``module.trainer`` raises then).
    Private: ``LightningModule._trainer``."""
    return module._trainer


def init_optimizers(module: pl.LightningModule) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """(optimizers, lr scheduler configs) from ``module.configure_optimizers()``, normalized as
    Lightning does at fit start. Private: ``lightning.pytorch.core.optimizer._init_optimizers_and_lr_schedulers``."""
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

    return _init_optimizers_and_lr_schedulers(module)


def run_zero_grad_hooks(closure: Any) -> None:
    """What Lightning's closure runs before backward, without it: ``on_before_zero_grad`` and
    ``optimizer_zero_grad`` and their progress counters (saved in checkpoints), when this batch
    zeroes. Private: ``Closure._zero_grad_fn``."""
    zero_grad = closure._zero_grad_fn  # None on a batch that does not zero (accumulation)
    if zero_grad is not None:
        zero_grad()


def set_closure_result(closure: Any, loss: torch.Tensor) -> torch.Tensor:
    """Give Lightning's closure the result its training_step would have produced, so the loop's
    outputs (``on_train_batch_end``'s ``outputs["loss"]``) are this loss; returns Lightning's copy.
    Private: ``Closure._result``, ``lightning.pytorch.loops.optimization.automatic.ClosureResult``."""
    from lightning.pytorch.loops.optimization.automatic import ClosureResult

    closure._result = ClosureResult(loss)
    return closure._result.loss


def signal_connector(trainer: pl.Trainer) -> Any:
    """The trainer's SIGTERM state: its ``received_sigterm`` flag is what Lightning reads after every
    batch (and broadcasts from rank 0 under DDP) to stop. Private: ``Trainer._signal_connector``."""
    return trainer._signal_connector


# gptmini.callbacks.stop_rules.StopConnector (mixed in by mix_into_signal_connector) overrides this
# method of Lightning's ``_SignalConnector`` (its SIGTERM handler): tests/train/test_compat.py checks it still exists.
SIGTERM_NOTIFIER_HOOK = "_sigterm_notifier_fn"


def route_sigterm_handler(handler: Any) -> None:
    """Make the SIGTERM handler Lightning registered at fit start call ``handler`` instead of its
    connector's notifier (it holds the method bound before the connector's class was swapped).
    Private: ``signal_connector._HandlersCompose.signal_handlers``, ``_SignalConnector._sigterm_notifier_fn``."""
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector

    registered = signal.getsignal(signal.SIGTERM)
    if isinstance(registered, _HandlersCompose):
        notifier = getattr(_SignalConnector, SIGTERM_NOTIFIER_HOOK)
        registered.signal_handlers = [
            handler if getattr(h, "__func__", None) is notifier else h for h in registered.signal_handlers
        ]


def mix_into_signal_connector(trainer: pl.Trainer, mixin: type) -> Any:
    """The trainer's signal connector with ``mixin`` put first in its class (state kept), so the mixin's
    ``received_sigterm`` property and its SIGTERM notifier (named :data:`SIGTERM_NOTIFIER_HOOK`) replace
    Lightning's. Private: ``Trainer._signal_connector`` and its class, ``_SignalConnector``."""
    connector = signal_connector(trainer)
    if not isinstance(connector, mixin):
        requested = connector.received_sigterm
        connector.__class__ = type(mixin.__name__, (mixin, type(connector)), {})
        connector.received_sigterm = requested
    return connector


def sigterm_notifier(connector: Any) -> Any:
    """The connector's SIGTERM notifier (bound method; a mixed-in class's override when there is one)."""
    return getattr(connector, SIGTERM_NOTIFIER_HOOK)


def several_processes(trainer: pl.Trainer) -> bool:
    """Lightning's condition for its per-batch SIGTERM broadcast (an initialized process group of more
    than one process): the stop rules take the same collective path exactly when Lightning would.
    Private: the check inside ``_TrainingEpochLoop._broadcast_sigterm_tensor``."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1


def skip_sigterm_broadcast(trainer: pl.Trainer) -> None:
    """Turn off the per-batch broadcast of rank 0's SIGTERM flag (a collective on every batch; the
    flag itself then decides). Private: ``fit_loop.epoch_loop._broadcast_sigterm_tensor``."""
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None


def request_stop(trainer: pl.Trainer) -> None:
    """Stop as after a SIGTERM (finish the step, save, exit): Lightning has no public setter."""
    signal_connector(trainer).received_sigterm = True


def window_continues(trainer: pl.Trainer) -> bool:
    """Whether the batch being run is inside a gradient-accumulation window, i.e. no optimizer step
    follows it (epoch end included). Private: ``fit_loop.epoch_loop._should_accumulate()``."""
    return trainer.fit_loop.epoch_loop._should_accumulate()


def writes_step_metrics(trainer: pl.Trainer) -> bool:
    """Lightning's rule for "step metrics are written after this batch" (without it, assume yes).
    Private: ``Trainer._logger_connector.should_update_logs``."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True) or trainer.fast_dev_run)


def validation_progress(trainer: pl.Trainer) -> dict[str, Any]:
    """A copy of the fit loop's validation batch counters (``ready``/``started``/... under ``total`` and
    ``current``). Private: ``fit_loop.epoch_loop.val_loop.batch_progress``."""
    import copy

    return copy.deepcopy(trainer.fit_loop.epoch_loop.val_loop.batch_progress.state_dict())


# Where a checkpoint holds those counters (Lightning's loop state layout, private).
VAL_PROGRESS_KEYS = ("loops", "fit_loop", "epoch_loop.val_loop.batch_progress")


def set_validation_progress(checkpoint: dict[str, Any], progress: dict[str, Any]) -> None:
    """Put validation counters (as :func:`validation_progress` gives them) into a checkpoint being saved."""
    loops, fit_loop, key = VAL_PROGRESS_KEYS
    checkpoint[loops][fit_loop][key] = progress


def set_refresh_rate(bar: Any, rate: int) -> None:
    """Change a TQDMProgressBar's refresh rate after construction (its setting is read-only).
    Private: ``TQDMProgressBar._refresh_rate``."""
    bar._refresh_rate = rate


def raise_recompile_limit(limit: int) -> None:
    """Let Dynamo recompile the same code up to ``limit`` times in one process (a benchmark compiles
    many fresh models) before it falls back to eager. Private (torch): ``torch._dynamo.config.cache_size_limit``."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, limit)


def log_step_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Write ``metrics`` to every logger at the step Lightning writes this batch's step metrics at, and
    into ``trainer.logged_metrics``, as Lightning's ThroughputMonitor does (no ``self.log``). Private:
    ``Trainer._logger_connector.log_metrics``, ``fit_loop.epoch_loop._batches_that_stepped``."""
    trainer._logger_connector.log_metrics(metrics, step=trainer.fit_loop.epoch_loop._batches_that_stepped)


def every_n_train_steps(callback: ModelCheckpoint) -> int:
    """A ModelCheckpoint's ``every_n_train_steps`` (0: off). Private: ``_every_n_train_steps``."""
    return callback._every_n_train_steps or 0


def saves_at_batch_end(callback: ModelCheckpoint) -> bool:
    """Whether a ModelCheckpoint's own ``on_train_batch_end`` can save (or defer a save) in a fit: only
    with ``every_n_train_steps`` or ``train_time_interval`` set; otherwise it returns before reading any
    metric, every batch (Lightning 2.6's rule, checked in tests/train/test_compat.py). Private:
    ``_every_n_train_steps``, ``_train_time_interval``."""
    return every_n_train_steps(callback) > 0 or callback._train_time_interval is not None


def logger_version_unset(logger: Any) -> bool:
    """Whether the logger will pick ``version_N`` itself (no fixed version, none picked yet): asking
    through ``logger.version`` would pick one. Private: ``_version`` (TensorBoardLogger, CSVLogger)."""
    return getattr(logger, "_version", "fixed") is None


def set_logger_version(logger: Any, version: int | str) -> None:
    """Fix the version the logger writes under (the folder claimed for it). Private: ``_version``."""
    logger._version = version


def is_default_progress_bar(callback: Any) -> bool:
    """Lightning's own TQDMProgressBar with default settings (refresh every batch, not left on
    screen): safe to replace. Private: ``TQDMProgressBar._leave``."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    return type(callback) is TQDMProgressBar and callback.refresh_rate == 1 and not callback._leave


def compute_dtype(trainer: pl.Trainer) -> torch.dtype:
    """The dtype the precision plugin computes matmuls in (for MFU). Private:
    ``lightning.pytorch.callbacks.throughput_monitor._plugin_to_compute_dtype``."""
    from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

    return _plugin_to_compute_dtype(trainer.precision_plugin)


def configured_checkpoint_io(strategy: Any) -> Any:
    """The CheckpointIO plugin the user configured, None when none was (reading the public
    ``strategy.checkpoint_io`` would create Lightning's default). Private: ``Strategy._checkpoint_io``;
    "unknown" for a strategy without it."""
    return getattr(strategy, "_checkpoint_io", "unknown")


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``nn.Module.compile`` compiled the module in place. Private (torch): ``_compiled_call_impl``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def wraps_checkpoint_io(plugin: Any) -> bool:
    """Whether ``plugin`` is a CheckpointIO wrapping another (AsyncCheckpointIO), whose
    ``checkpoint_io`` may still be unset. Private: ``lightning.pytorch.plugins.io.wrapper._WrappingCheckpointIO``."""
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    return isinstance(plugin, _WrappingCheckpointIO)


def cluster_environment(trainer: pl.Trainer) -> Any:
    """The cluster environment Lightning detected (SLURM, torchelastic, ...). Private:
    ``Trainer._accelerator_connector.cluster_environment`` (no public accessor in Lightning 2.6)."""
    return trainer._accelerator_connector.cluster_environment

# -- Lightning's hook dispatch (private rules) ------------------------------------------------------

# LightningModule._current_fx_name: the hook Lightning is running, set on the module around every
# hook it dispatches (module, callbacks, strategy: ~50 times per training step). A plain string,
# never a parameter, buffer or submodule (gptmini.train.module sets it without nn.Module's checks).
CURRENT_FX_NAME = "_current_fx_name"


def skip_callback_hook(callback: Any, hook: str) -> None:
    """Make Lightning pass over ``callback``'s ``hook``: its dispatcher calls a callback's hook only
    when ``getattr(callback, hook)`` is callable, and a None instance attribute shadows the method.
    Private rule: ``lightning.pytorch.trainer.call._call_callback_hooks``."""
    setattr(callback, hook, None)


def unskip_callback_hook(callback: Any, hook: str) -> None:
    """Undo :func:`skip_callback_hook`: the class's method is seen again."""
    if vars(callback).get(hook, False) is None:
        delattr(callback, hook)


def skips_callback_hook(callback: Any, hook: str) -> bool:
    """Whether :func:`skip_callback_hook` hides ``callback``'s ``hook``."""
    return vars(callback).get(hook, False) is None


# LightningCLI._parse_ckpt_path: overridden (turned off) by gptmini.cli.GPTMiniCLI; see
# gptmini.train.resume. tests/train/test_compat.py checks that LightningCLI.__init__ still calls it.
PARSE_CKPT_PATH_HOOK = "_parse_ckpt_path"

# -- jsonargparse, private -------------------------------------------------------------------------


def parse_given(parser: Any, args: Any) -> Any:
    """Parse ``args`` (a list, or a dict/Namespace) into only the values given, without defaults and
    without applying links: jsonargparse fills both on every parse otherwise. Private:
    ``jsonargparse._link_arguments.skip_apply_links`` and ``_skip_validation``."""
    from jsonargparse import Namespace
    from jsonargparse._link_arguments import skip_apply_links

    with skip_apply_links():
        if isinstance(args, (dict, Namespace)):
            return parser.parse_object(args, defaults=False, _skip_validation=True)
        return parser.parse_args(args, defaults=False, _skip_validation=True)


def parser_actions(parser: Any) -> list[Any]:
    """The options of an (argparse-based) jsonargparse parser. Private (argparse): ``_actions``."""
    return list(getattr(parser, "_actions", []))


def attribute_docstrings_on() -> bool:
    """Whether jsonargparse reads attribute docstrings (``set_parsing_settings`` has no getter).
    Private: ``jsonargparse._optionals.get_docstring_parse_options``."""
    try:
        from jsonargparse._optionals import get_docstring_parse_options
    except ImportError:  # moved (tests/train/test_compat.py says so): gptmini.cli's setting
        return True
    return bool(get_docstring_parse_options().get("attribute_docstrings", False))


@contextmanager
def attribute_docstrings(on: bool) -> Iterator[None]:
    """Parse with (or without) reading attribute docstrings, restoring the setting: they are only
    help text, and reading them costs ~0.5 s of CPU per parser built."""
    from jsonargparse import set_parsing_settings

    before = attribute_docstrings_on()
    set_parsing_settings(docstring_parse_attribute_docstrings=on)
    try:
        yield
    finally:
        set_parsing_settings(docstring_parse_attribute_docstrings=before)


def attribute_docstrings_off() -> AbstractContextManager[None]:
    """Parse without reading attribute docstrings (parsers built outside gptmini.cli.make_cli)."""
    return attribute_docstrings(False)
