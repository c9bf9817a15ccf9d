"""The LightningModule: wires model, loss, two-group AdamW, the per-step LambdaLR and the training step.

The step: where :func:`gptmini.core.captured.choose_step_path` allows (CUDA, one process, ...),
``optimizer_step`` replays :func:`gptmini.core.step.guarded_step` from one CUDA graph instead of
calling Lightning's closure; Lightning still counts ``global_step``, steps the scheduler, clips with
``gradient_clip_val``, logs, checkpoints and resumes. Elsewhere Lightning's own closure runs
``training_step``, backward, its hooks and ``configure_gradient_clipping``. Both share one gradient
norm for clipping and the non-finite guard (:class:`gptmini.core.guard.NonFiniteGuard`).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, Metric

from gptmini.core.captured import (
    CapturedStep,
    StepPath,
    capturable,
    choose_step_path,
    lr_tensors,
    lrs_on_device,
)
from gptmini.core.evaluate import bits_per_byte
from gptmini.core.guard import NonFiniteGuard
from gptmini.core.model import GPTMini, KernelConfig, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, build_scheduler
from gptmini.core.step import autocast_for, compile_by_default, guarded_step
from gptmini.train.checkpoint_contents import CheckpointContents
from gptmini.train.compat import (
    CURRENT_FX_NAME,
    attached_trainer,
    grad_scaler,
    is_compiled,
    log_step_metrics,
    run_zero_grad_hooks,
    set_closure_result,
    uses_fsdp,
    writes_step_metrics,
)
from gptmini.train.setting_checks import check_data_matches_model

# Step values each rank computes on its own shard, logged as their mean. train/grad_norm is not here:
# DDP's all-reduce has made the gradients, and so their norm, the same on every rank.
MEAN_OVER_RANKS = ("train/loss",)

# Attributes set on every step: Lightning's hook name around each of ~50 hook calls, and ours. Plain
# values, never a parameter, buffer or submodule: nn.Module.__setattr__'s registry checks (~10 Python
# calls each, ~0.15 ms per step on a CPU core) are skipped for them (GPTMiniModule.__setattr__).
PLAIN_STEP_ATTRS = frozenset({CURRENT_FX_NAME, "last_loss", "_step_values", "_stepped", "tokens_seen"})


def _as(cls: type, value: Any) -> Any:
    """Accept a dataclass or the plain dict a checkpoint's hparams hold."""
    return cls(**value) if isinstance(value, dict) else value


# Lightning calls these between backward and the optimizer step (its closure and precision plugin):
# a CUDA graph would run them once, at capture. Callbacks that know the captured step say so with
# ``captured_step_aware = True`` (FaultGuard: the step itself does its non-finite check).
CLOSURE_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
# The module's hooks the captured step replaces (it calls batch_loss, clips by norm itself).
MODULE_STEP_HOOKS = (*CLOSURE_HOOKS, "training_step", "backward", "configure_gradient_clipping", "optimizer_step")


def closure_hook_owners(trainer: pl.Trainer, module: pl.LightningModule) -> list[str]:
    """``Class.hook`` for each callback that overrides a closure hook, and for each step hook a
    subclass of the module's recipe class overrides: what a captured step would skip."""
    owners = []
    for cb in trainer.callbacks:
        if getattr(cb, "captured_step_aware", False):
            continue
        owners += [
            f"{type(cb).__name__}.{h}" for h in CLOSURE_HOOKS if getattr(type(cb), h) is not getattr(Callback, h)
        ]
    if isinstance(module, GPTMiniModule):
        owners += [
            f"{type(module).__name__}.{h}"
            for h in MODULE_STEP_HOOKS
            if getattr(type(module), h) is not getattr(GPTMiniModule, h)
        ]
    return owners



class BitsPerByte(Metric):
    """Bits per UTF-8 byte: summed token losses (nats) / (ln 2 x the bytes those tokens decode to).

    torchmetrics has no per-byte metric (its Perplexity is per token); this is two summed states,
    synced across ranks, and the formula of ``gptmini.core.evaluate.bits_per_byte``.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nats", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, n_bytes: torch.Tensor) -> None:
        self.nats += nats
        self.bytes += n_bytes

    def compute(self) -> torch.Tensor:
        return bits_per_byte(self.nats, self.bytes)


class GPTMiniModule(pl.LightningModule):
    def __init__(
        self,
        arch: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention defaults
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        compile: bool | None = None,
        compile_mode: str | None = None,
        capture: bool | None = None,
        kernels: KernelConfig = KernelConfig(),  # noqa: B008
    ) -> None:
        """GPTMini pretraining recipe.

        Args:
            arch: Model architecture (layers, heads, width); ``vocab_size`` and ``block_size`` are
                linked from ``data``. Was ``model.model`` before the second round (CHANGELOG.md);
                old configs and checkpoints still load (gptmini.train.names).
            optim: AdamW settings (two groups: decay on weight matrices only).
            schedule: Warmup + cosine schedule, stepped every optimizer step up to trainer.max_steps.
            compile: ``torch.compile`` the model in place (state_dict keys unchanged, so checkpoints
                hold no ``_orig_mod.``); null = on for CUDA, off for CPU, where minutes of
                compilation outweigh a ~20% faster step on short runs (docs/performance.md; the rule
                is ``gptmini.core.step.compile_by_default``).
            compile_mode: ``torch.compile`` mode, e.g. ``max-autotune-no-cudagraphs`` or
                ``reduce-overhead`` (CUDA graphs); null = torch's default.
            capture: Replay the whole training step (forward, backward, clipping, the non-finite
                guard, fused AdamW) from one CUDA graph: one launch instead of hundreds, the host
                free to run ahead. null = wherever it applies (CUDA, one process, no gradient
                accumulation, bf16-mixed or 32-bit, fused AdamW, no callback on Lightning's closure
                hooks); false = never; true = capture or stop naming why not. Fit start prints one
                ``training step:`` line with the path and why (docs/performance.md).
            kernels: Attention backend and loss head (chunked linear + cross-entropy): the same
                math, other kernels (docs/performance.md).
        """
        super().__init__()
        self.model_cfg: ModelConfig = _as(ModelConfig, arch)
        self.optim_cfg: OptimConfig = _as(OptimConfig, optim)
        self.schedule_cfg: ScheduleConfig = _as(ScheduleConfig, schedule)
        self.kernel_cfg: KernelConfig = _as(KernelConfig, kernels)
        # Plain dicts: checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "arch": asdict(self.model_cfg),
                "optim": {**asdict(self.optim_cfg), "betas": list(self.optim_cfg.betas)},
                "schedule": asdict(self.schedule_cfg),
                "compile": compile,
                "compile_mode": compile_mode,
                "capture": capture,
                "kernels": asdict(self.kernel_cfg),
            }
        )
        self.compile_setting = compile  # not `self.compile`: that is nn.Module.compile
        self.compile_mode = compile_mode
        self.capture_setting = capture
        self.step_path: StepPath | None = None  # chosen at fit start
        # One grad norm per step for clipping and FaultGuard; device state, built at fit start.
        self.nonfinite_guard: NonFiniteGuard | None = None
        self._runner: CapturedStep | None = None  # the captured step (its eager twin on a CPU)
        self._clip_route: str | None = None  # who clips by norm in this fit (_choose_clip_route)
        self._lrs: list[torch.Tensor] = []
        # The attribute's name is the state dict's key prefix (formats.MODEL_ATTR; tests/core/test_formats.py).
        self.model = GPTMini(self.model_cfg, self.kernel_cfg)
        self.last_loss: torch.Tensor | None = None  # this step's training loss, detached
        self._step_values: dict[str, torch.Tensor] = {}  # this step's train/* values, until written
        self._stepped = False  # the optimizer stepped in this batch (not an accumulation micro-batch)
        # Token-weighted mean validation loss; val/ppl is its exp. Not torchmetrics' Perplexity: it
        # takes probabilities in fp32 (one very confident miss underflows to inf) from another fp32
        # copy of the (B, T, V) logits, while the loss is already computed.
        self.val_loss = MeanMetric()
        # val/bpb: UTF-8 bytes per token id, from the datamodule at setup (None: no val/bpb, e.g.
        # a tokenizer that is not byte-level, or validation without GPTMiniData). Not saved.
        self.register_buffer("token_bytes", None, persistent=False)
        self.val_bpb = BitsPerByte()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PLAIN_STEP_ATTRS:
            object.__setattr__(self, name, value)  # what nn.Module ends with for a plain value
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        dm = getattr(attached_trainer(self), "datamodule", None)
        # The CLI runs this in before_fit already; here for a Trainer driven without the CLI.
        check_data_matches_model(dm, self.model_cfg)
        table = dm.token_byte_table() if hasattr(dm, "token_byte_table") else None
        self.token_bytes = None if table is None else torch.as_tensor(table, device=self.device)
        if self._should_compile() and not is_compiled(self.model):
            # nn.Module.compile compiles in place: parameter names, and so checkpoints, stay clean.
            self.model.compile(mode=self.compile_mode)

    def _should_compile(self) -> bool:
        trainer = attached_trainer(self)
        device = trainer.strategy.root_device if trainer is not None else "cpu"
        return compile_by_default(self.compile_setting, device)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]

    def batch_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch: what ``training_step`` and the captured step compute."""
        x, y = batch  # (B, T), (B, T)
        return self.model(x, y)[1]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch)
        # FaultGuard and LossProgressBar read the step's loss here, whether or not it is logged.
        self.last_loss = loss.detach()
        # Not prog_bar: Lightning turns progress-bar values into floats after every batch, a host
        # sync per step; gptmini.callbacks.progress.LossProgressBar shows it at its refresh rate instead.
        self._log_step("train/loss", self.last_loss)
        return loss

    def _log_step(self, name: str, value: torch.Tensor) -> None:
        """Keep one of this step's ``train/*`` values for the loggers (written after the optimizer step)."""
        self._step_values[name] = value

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_values, self._stepped = {}, False
        if self._runner is not None:
            self._runner.load_batch(batch)  # into the graph's static buffers, on the device

    def _write_step_values(self) -> None:
        """This step's ``train/*`` values straight to the loggers at Lightning's step for this batch and
        into ``callback_metrics``, as ThroughputLogger writes (called on the steps Lightning writes
        step metrics: every ``log_every_n_steps``, and a step a callback stopped).

        Not ``self.log``: each call costs ~1,900 Python calls on the host (Lightning wraps the value in
        a result entry, moves it and walks the entry again at every batch), about a fifth of Lightning's
        whole per-step overhead at log_every_n_steps 10. The names in ``MEAN_OVER_RANKS`` are reduced to
        their mean over the ranks here, on the written steps only, which every rank reaches together
        (gptmini.train.ranks).
        """
        strategy = self.trainer.strategy
        values = {
            name: strategy.reduce(value, reduce_op="mean") if name in MEAN_OVER_RANKS else value
            for name, value in self._step_values.items()
        }
        self._step_values = {}
        self.trainer.callback_metrics.update(values)
        log_step_metrics(self.trainer, {name: float(value) for name, value in values.items()})

    def _after_optimizer_step(self) -> None:
        # Written here, before any callback's on_train_batch_end (a ModelCheckpoint monitoring
        # train/loss every n steps reads it there), on the steps Lightning writes.
        self._stepped = True
        if self._step_values and writes_step_metrics(self.trainer):
            self._write_step_values()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # A callback may set trainer.should_stop during the step (e.g. Timer): Lightning then writes
        # this step's metrics too, so they must be this step's values.
        if self._stepped and self._step_values and self.trainer.should_stop and writes_step_metrics(self.trainer):
            self._write_step_values()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)  # mean over the batch's B * T tokens
        self.val_loss.update(loss.detach(), weight=y.numel())
        # The metric object: Lightning syncs it across ranks, computes it at epoch end and resets it.
        self.log("val/loss", self.val_loss, prog_bar=True)
        if self.token_bytes is not None:
            self.val_bpb.update(loss.detach() * y.numel(), self.token_bytes[y].sum())
            self.log("val/bpb", self.val_bpb, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        # compute() is cached until Lightning resets the metric, so val/loss and val/ppl see one value.
        loss = self.val_loss.compute()
        self.log("val/ppl", loss.exp(), sync_dist=True)

    def configure_optimizers(self) -> dict:
        trainer = attached_trainer(self)
        max_steps = trainer.max_steps if trainer is not None else -1
        scaler = grad_scaler(trainer)
        optimizer = build_adamw(self.model, self.optim_cfg, self.device, grad_scaler=scaler is not None)
        scheduler = build_scheduler(optimizer, self.schedule_cfg, max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"},
        }

    # -- the training step -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        trainer = self.trainer
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        compiled = self._should_compile()
        self.step_path = choose_step_path(
            self.capture_setting,
            device=self.device,
            precision=str(trainer.precision),
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            grad_scaler=grad_scaler(trainer) is not None,
            world_size=trainer.world_size,
            single_device=isinstance(trainer.strategy, SingleDeviceStrategy),
            fused=optimizer is not None and bool(optimizer.defaults.get("fused")),
            clip_algorithm=trainer.gradient_clip_algorithm,
            compile_mode=self.compile_mode if compiled else None,
            closure_hooks=closure_hook_owners(trainer, self),
        )
        rank_zero_info(self.step_path.line())
        self.nonfinite_guard = NonFiniteGuard(optimizer) if optimizer is not None else None
        self._runner = None
        self._clip_route = self._choose_clip_route(trainer)  # once, not on every step

    def on_train_start(self) -> None:
        # Here, after a checkpoint restore: the graph holds the restored weights, moments and lr.
        if self.step_path is None or not self.step_path.captured:
            return
        optimizer = self.trainer.optimizers[0]
        clip = self.trainer.gradient_clip_val
        guard = self.nonfinite_guard
        precision = str(self.trainer.precision)
        on_cuda = self.device.type == "cuda"

        def step(batch: Any) -> torch.Tensor:
            return guarded_step(
                lambda: self.batch_loss(batch),
                optimizer,
                guard,
                forward_context=lambda: autocast_for(precision, self.device, cache_enabled=not on_cuda),
                clip=clip,
            )

        # On a CPU (tests) the same object runs the step eagerly: the captured step's eager twin.
        self._runner = CapturedStep(step, capture_context=lambda: capturable(optimizer), graphs=on_cuda)
        self._lrs = lr_tensors(optimizer)

    def on_train_end(self) -> None:
        self._runner = None  # frees the graph and its memory pool
        self._clip_route = None

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Any = None,
    ) -> None:
        """The seam: Lightning's closure path, or the captured step in its place (same counters)."""
        if self._runner is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            if self.nonfinite_guard is not None:
                self.nonfinite_guard.done()
            self._after_optimizer_step()
            return
        # Lightning's zero-grad counters and on_before_zero_grad, as its closure would run them.
        run_zero_grad_hooks(optimizer_closure)
        with lrs_on_device(self.trainer.optimizers[0], self._lrs):  # the lr LambdaLR set for this step
            loss = self._runner()
        # What training_step would have returned (a copy: the next replay overwrites the graph's).
        self.last_loss = set_closure_result(optimizer_closure, loss)
        self._log_step("train/loss", self.last_loss)  # synced by name (MEAN_OVER_RANKS), as training_step
        self._log_step("train/grad_norm", self.nonfinite_guard.norm)
        self._after_optimizer_step()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # The captured step zeroes its grads in place: set to None, the graph would write elsewhere.
        if self._runner is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_validation_model_zero_grad(self) -> None:
        if self._runner is None:  # same reason: never free the grads a graph writes
            super().on_validation_model_zero_grad()

    def runs_own_step(self) -> bool:
        """Whether ``optimizer_step`` runs the captured step (or its eager twin) instead of the closure:
        Lightning's closure hooks (on_before_optimizer_step, ...) are then not called."""
        return self._runner is not None

    def __getstate__(self) -> dict[str, Any]:
        # Copies (OverfitCheck's deepcopy) leave the graph, its buffers and the device guard behind.
        state = super().__getstate__()
        state.update(_runner=None, nonfinite_guard=None, _lrs=[])
        return state

    @staticmethod
    def _choose_clip_route(trainer: pl.Trainer) -> str:
        """Who clips by norm: Lightning under a grad scaler (it unscales first), FSDP's own method
        (sharded grads), else the non-finite guard's norm (configure_gradient_clipping)."""
        if grad_scaler(trainer) is not None:
            return "lightning"
        return "fsdp" if uses_fsdp(trainer) else "guard"

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm ourselves when no grad scaler is active, and log the pre-clip norm.

        Lightning <= 2.6.6 refuses to clip for any optimizer that "handles unscaling" (fused
        AdamW) under mixed precision, even for bf16 where there is no scaler and so nothing to
        unscale. Without a scaler the grads are already true grads, so plain
        ``clip_grad_norm_`` is correct. With a scaler (fp16) we defer to Lightning, which
        unscales first.
        """
        route = self._clip_route or self._choose_clip_route(self.trainer)
        if route == "lightning" or (gradient_clip_algorithm or "norm") != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if route == "fsdp":
            # FSDP(1) shards flat grads: only its own method computes the global norm (Lightning's
            # FSDP plugin refuses norm clipping altogether). Untested here: needs several GPUs.
            norm = self.trainer.model.clip_grad_norm_(gradient_clip_val or float("inf"))
        else:
            # The norm FaultGuard's check already measured this step (or measures now): one per step.
            guard = self.nonfinite_guard
            if guard is None or guard.optimizer is not getattr(optimizer, "optimizer", optimizer):
                guard = self.nonfinite_guard = NonFiniteGuard(getattr(optimizer, "optimizer", optimizer))
            norm = guard.measure(self.last_loss)
            if gradient_clip_val:
                guard.clip(gradient_clip_val)
        self._log_step("train/grad_norm", norm)

    def configure_callbacks(self) -> list[pl.Callback]:
        # The one writer of the checkpoint's gptmini keys and the run record, in every run (CLI or a
        # plain Trainer): gptmini.train.checkpoint_contents.
        return [CheckpointContents()]


# Lightning reads the step methods' signatures on every batch (is_param_in_hook_signature: "does it take
# batch_idx?"), ~40 Python calls of inspect each time; inspect returns a function's ``__signature__``
# when it has one (PEP 362), so it is built once here. A subclass's override is read as before.
for _step in (GPTMiniModule.training_step, GPTMiniModule.validation_step):
    _step.__signature__ = inspect.signature(_step)
