"""The LightningModule: wires model, loss, two-group AdamW and the per-step LambdaLR."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric, Metric

from gptmini.core.evaluate import bits_per_byte
from gptmini.core.model import GPTMini, ModelConfig
from gptmini.core.optim import OptimConfig, build_adamw
from gptmini.core.schedule import ScheduleConfig, build_scheduler
from gptmini.core.step import compile_by_default
from gptmini.train.before_fit import check_data_matches_model
from gptmini.train.checkpoint_contents import CheckpointContents
from gptmini.train.compat import attached_trainer, grad_scaler, is_compiled, uses_fsdp, writes_step_metrics


def _as(cls: type, value: Any) -> Any:
    """Accept a dataclass or the plain dict a checkpoint's hparams hold."""
    return cls(**value) if isinstance(value, dict) else value


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
        """
        super().__init__()
        self.model_cfg: ModelConfig = _as(ModelConfig, arch)
        self.optim_cfg: OptimConfig = _as(OptimConfig, optim)
        self.schedule_cfg: ScheduleConfig = _as(ScheduleConfig, schedule)
        # Plain dicts: checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "arch": asdict(self.model_cfg),
                "optim": {**asdict(self.optim_cfg), "betas": list(self.optim_cfg.betas)},
                "schedule": asdict(self.schedule_cfg),
                "compile": compile,
                "compile_mode": compile_mode,
            }
        )
        self.compile_setting = compile  # not `self.compile`: that is nn.Module.compile
        self.compile_mode = compile_mode
        # The attribute's name is the state dict's key prefix (formats.MODEL_ATTR; tests/test_formats.py).
        self.model = GPTMini(self.model_cfg)
        self.last_loss: torch.Tensor | None = None  # this step's training loss, detached
        self._step_values: dict[str, torch.Tensor] = {}
        self._writes_at_start = True
        # Token-weighted mean validation loss; val/ppl is its exp. Not torchmetrics' Perplexity: it
        # takes probabilities in fp32 (one very confident miss underflows to inf) from another fp32
        # copy of the (B, T, V) logits, while the loss is already computed.
        self.val_loss = MeanMetric()
        # val/bpb: UTF-8 bytes per token id, from the datamodule at setup (None: no val/bpb, e.g.
        # a tokenizer that is not byte-level, or validation without GPTMiniData). Not saved.
        self.register_buffer("token_bytes", None, persistent=False)
        self.val_bpb = BitsPerByte()

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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        _, loss = self.model(x, y)
        # FaultGuard and LossProgressBar read the step's loss here, whether or not it is logged.
        self.last_loss = loss.detach()
        # Not prog_bar: Lightning turns progress-bar values into floats after every batch, a host
        # sync per step; gptmini.callbacks.progress.LossProgressBar shows it at its refresh rate instead.
        self._log_step("train/loss", self.last_loss)
        return loss

    def _log_step(self, name: str, value: torch.Tensor) -> None:
        """``self.log`` on the steps whose metrics Lightning writes, and only then.

        Lightning writes step metrics every ``log_every_n_steps``, but each ``self.log`` costs host
        time on every step (about 0.1 ms: it re-wraps and moves the value); the written curves and
        the ``callback_metrics`` of those steps are the same either way.
        """
        self._step_values[name] = value
        if self._writes_at_start:
            self.log(name, value)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_values: dict[str, torch.Tensor] = {}
        self._writes_at_start = writes_step_metrics(self.trainer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # A callback may set trainer.should_stop during the step (e.g. Timer): Lightning then writes
        # this step's metrics too, so they must be this step's values.
        if not self._writes_at_start and self.trainer.should_stop and writes_step_metrics(self.trainer):
            for name, value in self._step_values.items():
                self.log(name, value)

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
        algorithm = gradient_clip_algorithm or "norm"
        if grad_scaler(self.trainer) is not None or algorithm != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        wrapped = self.trainer.model
        if uses_fsdp(self.trainer):
            # FSDP(1) shards flat grads: only its own method computes the global norm (Lightning's
            # FSDP plugin refuses norm clipping altogether). Untested here: needs several GPUs.
            norm = wrapped.clip_grad_norm_(gradient_clip_val or float("inf"))
        else:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_val:
                norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self._log_step("train/grad_norm", norm)

    def configure_callbacks(self) -> list[pl.Callback]:
        # The one writer of the checkpoint's gptmini keys and the run record, in every run (CLI or a
        # plain Trainer): gptmini.train.checkpoint_contents.
        return [CheckpointContents()]
