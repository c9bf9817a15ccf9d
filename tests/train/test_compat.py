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


def test_model_checkpoint_batch_end_rule(tmp_path, tiny_model_cfg, tiny_data, monkeypatch):
    """compat.saves_at_batch_end: without every_n_train_steps or train_time_interval, ModelCheckpoint's
    on_train_batch_end returns on every batch before it reads a metric (the first step of any save or
    deferred save); with either, it goes on to read them."""
    from datetime import timedelta

    torch.set_num_threads(1)
    reads: dict[int, int] = {}
    inside: list[int] = []
    original_end, original_read = ModelCheckpoint.on_train_batch_end, ModelCheckpoint._monitor_candidates

    def end(self, *args, **kwargs):
        inside.append(id(self))
        try:
            return original_end(self, *args, **kwargs)
        finally:
            inside.pop()

    def read(self, trainer):
        if inside and inside[-1] == id(self):
            reads[id(self)] = reads.get(id(self), 0) + 1
        return original_read(self, trainer)

    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end", end)
    monkeypatch.setattr(ModelCheckpoint, "_monitor_candidates", read)
    idle = [ModelCheckpoint(dirpath=tmp_path / "a"), ModelCheckpoint(dirpath=tmp_path / "b", monitor="val/loss")]
    busy = [
        ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2),
        ModelCheckpoint(dirpath=tmp_path / "d", train_time_interval=timedelta(0)),
    ]
    t = trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[*idle, *busy], enable_checkpointing=True,
                num_sanity_val_steps=0, enable_model_summary=False)
    t.fit(GPTMiniModule(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=1)), datamodule=tiny_data)
    assert [compat.saves_at_batch_end(cb) for cb in idle + busy] == [False, False, True, True]
    assert [reads.get(id(cb), 0) for cb in idle] == [0, 0]
    assert all(reads.get(id(cb), 0) > 0 for cb in busy)


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
    """is_fsdp: the run shards (any FSDPStrategy); exact=True: a setting Lightning refuses on CPU."""
    from lightning.pytorch.strategies import FSDPStrategy

    class Mine(FSDPStrategy):
        pass

    assert compat.is_fsdp("fsdp") and compat.is_fsdp("fsdp", exact=True) and not compat.is_fsdp("ddp", exact=True)
    assert compat.is_fsdp(FSDPStrategy()) and compat.is_fsdp(FSDPStrategy(), exact=True)
    assert compat.is_fsdp(Mine()) and not compat.is_fsdp(Mine(), exact=True)
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


# -- the rule: every private Lightning/torch/jsonargparse name goes through compat ---------------------

SCANNED = ("gptmini", "scripts", "tests")
# Documented standard-library names that merely start with an underscore.
STDLIB_PUBLIC = {"_exit", "_getframe", "_current_frames", "_replace", "_asdict", "_fields", "_make"}


THIRD_PARTY = ("lightning", "pytorch_lightning", "lightning_fabric", "jsonargparse")


def _root(node) -> str:
    """The first name of a dotted expression (``pl.Callback`` -> ``pl``)."""
    import ast

    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _third_party_private_names() -> set[str]:
    """Private names Lightning and jsonargparse define (def, class or assignment): a gptmini name equal
    to one of them is an override or a use of theirs, not gptmini's own."""
    import re
    from pathlib import Path

    import jsonargparse
    import lightning

    defined = re.compile(r"(?:\bdef|\bclass|\bself\.)\s*(_[A-Za-z]\w*)|^\s*(_[A-Za-z]\w*)\s*[:=]", re.M)
    names = set()
    for root in (Path(lightning.__file__).parent, Path(jsonargparse.__file__).parent):
        for path in root.rglob("*.py"):
            names.update(a or b for a, b in defined.findall(path.read_text(encoding="utf-8", errors="replace")))
    return {n for n in names if _is_private(n)}


def private_uses(root, third_party: set[str]) -> list[str]:
    """Every private third-party name used outside gptmini/train/compat.py (and this file, which tests
    them): ``x._name`` attributes (gptmini's own ``_name`` aside), getattr/setattr with such a name,
    private imports, and overrides of a private Lightning/jsonargparse method that compat.py does not
    declare (as a ``*_HOOK`` constant)."""
    import ast
    from pathlib import Path

    compat_path = root / "gptmini" / "train" / "compat.py"
    this = Path(__file__).resolve()
    files = [p for d in SCANNED for p in sorted((root / d).rglob("*.py")) if p not in (compat_path, this)]
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in files}
    own = set()
    for tree in trees.values():
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                own.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                own.add(n.id)
    own = {n for n in own if _is_private(n)} - third_party
    # An attribute a file's own code sets on self/cls is that class's own, whatever Lightning names.
    own_on_self = {
        (p, n.attr)
        for p, tree in trees.items()
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
        and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")
    } | {
        (p, d.name)
        for p, tree in trees.items()
        for c in ast.walk(tree)
        if isinstance(c, ast.ClassDef)
        for d in c.body
        if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    declared_hooks = {
        n.value.value
        for n in ast.walk(ast.parse(compat_path.read_text(encoding="utf-8")))
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        and any(isinstance(t, ast.Name) and t.id.endswith("_HOOK") for t in n.targets)
    }
    allowed = own | STDLIB_PUBLIC
    # Per file: the names bound to Lightning/jsonargparse modules or classes (a class deriving from
    # one of them can override their private methods).
    third_party_names = {
        p: {
            (a.asname or a.name).split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
            if ((n.module if isinstance(n, ast.ImportFrom) else a.name) or "").split(".")[0] in THIRD_PARTY
        }
        for p, tree in trees.items()
    }

    found = []
    for path, tree in trees.items():
        where = path.relative_to(root).as_posix()
        for n in ast.walk(tree):
            hit = None
            on_self = isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")
            if (
                isinstance(n, ast.Attribute) and _is_private(n.attr) and n.attr not in allowed
                and not (on_self and (path, n.attr) in own_on_self)
            ):
                hit = f".{n.attr}"
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0 and not n.module.startswith("gptmini"):
                names = [a.name for a in n.names if _is_private(a.name)]
                if any(_is_private(s) for s in n.module.split(".")) or names:
                    hit = f"from {n.module} import {', '.join(names or [a.name for a in n.names])}"
            elif isinstance(n, ast.Import):
                hit = next((f"import {a.name}" for a in n.names if any(map(_is_private, a.name.split(".")))), None)
            elif (
                isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(n.args) > 1
                and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)
                and _is_private(n.args[1].value) and n.args[1].value not in allowed
            ):
                hit = f"{n.func.id}(..., {n.args[1].value!r})"
            elif isinstance(n, ast.ClassDef) and any(_root(b) in third_party_names[path] for b in n.bases):
                hit = ", ".join(
                    f"def {d.name} (overrides a private method)"
                    for d in n.body
                    if isinstance(d, ast.FunctionDef) and d.name in third_party and d.name not in declared_hooks
                ) or None
            if hit:
                found.append(f"{where}:{n.lineno}: {hit}")
    return found


def test_private_names_go_through_compat():
    """A private Lightning/torch/jsonargparse name outside gptmini/train/compat.py would move unnoticed:
    the package, scripts/ and tests/ use none (compat wraps each, with a test in this file)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent
    found = private_uses(root, _third_party_private_names())
    assert found == [], "private names outside gptmini/train/compat.py (wrap each there, test it here):\n" + "\n".join(found)


def test_the_private_name_scan_finds_each_kind(tmp_path):
    """The scan above, on a small tree holding one of each kind of private use."""
    (tmp_path / "gptmini" / "train").mkdir(parents=True)
    (tmp_path / "gptmini" / "train" / "compat.py").write_text('HOOK_A_HOOK = "_declared"\n')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "scripts" / "s.py").write_text(
        "import torch._dynamo\nfrom lightning.pytorch.x import _p\nfrom lightning.pytorch._y import q\n"
        "torch._dynamo.config\nos._exit(0)\n"
    )
    (tmp_path / "tests" / "t.py").write_text(
        "from lightning.pytorch import Base\nclass C(Base):\n    def _overridden(self):\n        self._mine = 1\n    def _declared(self):\n        pass\n"
        "getattr(m, '_compiled_call_impl')\nx._mine\n"
    )
    found = private_uses(tmp_path, {"_overridden", "_declared"})
    assert [f.split(": ", 1)[1] for f in found] == [
        "import torch._dynamo",
        "from lightning.pytorch.x import _p",
        "from lightning.pytorch._y import q",
        "._dynamo",
        "def _overridden (overrides a private method)",
        "getattr(..., '_compiled_call_impl')",
    ], found


def test_signal_connector_mixin_and_notifier(tmp_path):
    """Trainer._signal_connector's class swapped for one with a mixin first (state kept); the notifier
    found under _SignalConnector._sigterm_notifier_fn is the mixin's override."""

    class Mixin:
        _stop = False

        @property
        def received_sigterm(self):
            return self._stop

        @received_sigterm.setter
        def received_sigterm(self, value):
            self._stop = value

        def _sigterm_notifier_fn(self, signum, frame):  # compat.SIGTERM_NOTIFIER_HOOK
            self._stop = "notified"

    t = trainer(tmp_path)
    compat.request_stop(t)
    connector = compat.mix_into_signal_connector(t, Mixin)
    assert isinstance(connector, Mixin) and connector is compat.signal_connector(t)
    assert connector.received_sigterm is True  # the flag Lightning had set is kept
    compat.sigterm_notifier(connector)(15, None)
    assert connector.received_sigterm == "notified"
    assert compat.mix_into_signal_connector(t, Mixin) is connector  # once


def test_broadcast_condition(tmp_path):
    """The condition inside _TrainingEpochLoop._broadcast_sigterm_tensor that compat.several_processes copies."""
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    source = " ".join(inspect.getsource(_TrainingEpochLoop).split())
    assert (
        "if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:"
        " self._broadcast_sigterm_tensor()"
    ) in source
    assert compat.several_processes(trainer(tmp_path)) is False


def test_validation_progress_in_checkpoints(tmp_path, tiny_model_cfg, tiny_data):
    """fit_loop.epoch_loop.val_loop.batch_progress and where a checkpoint holds it (compat.VAL_PROGRESS_KEYS)."""
    torch.set_num_threads(1)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=1, num_sanity_val_steps=0,
                enable_model_summary=False)
    t.fit(GPTMiniModule(arch=tiny_model_cfg, schedule=ScheduleConfig(warmup_steps=1)), datamodule=tiny_data)
    progress = compat.validation_progress(t)
    assert {"total", "current"} <= set(progress) and progress["total"]["completed"] >= 1
    checkpoint = t._checkpoint_connector.dump_checkpoint()
    loops, fit_loop, key = compat.VAL_PROGRESS_KEYS
    assert checkpoint[loops][fit_loop][key] == progress
    compat.set_validation_progress(checkpoint, {"x": 1})
    assert checkpoint[loops][fit_loop][key] == {"x": 1}


def test_progress_bar_refresh_rate():
    """TQDMProgressBar._refresh_rate: what its read-only refresh_rate property returns."""
    bar = TQDMProgressBar()
    compat.set_refresh_rate(bar, 7)
    assert bar.refresh_rate == 7


def test_dynamo_recompile_limit():
    """torch._dynamo.config.cache_size_limit: raised, never lowered."""
    import torch._dynamo

    before = torch._dynamo.config.cache_size_limit
    try:
        compat.raise_recompile_limit(before + 5)
        assert torch._dynamo.config.cache_size_limit == before + 5
        compat.raise_recompile_limit(1)
        assert torch._dynamo.config.cache_size_limit == before + 5
    finally:
        torch._dynamo.config.cache_size_limit = before


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
