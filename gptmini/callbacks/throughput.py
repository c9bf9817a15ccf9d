"""``ThroughputLogger``: tokens/s, step time and MFU in TensorBoard (the FLOPs arithmetic is
gptmini.core.flops).

``ThroughputLogger`` logs ``throughput/tokens_per_sec`` (all devices), ``throughput/tokens_per_sec_per_device``,
``throughput/step_ms`` and ``throughput/mfu`` every ``log_every_n_steps``. Why not Lightning's
``ThroughputMonitor``: it calls ``torch.cuda.synchronize()`` after *every* batch (a host sync per step
is exactly what a 4 ms GPU step cannot afford), its peak-FLOPs table does not recognise a plain
"NVIDIA H200", and the peak cannot be set in config. This callback syncs once per logging interval
and reuses Lightning's precision -> dtype mapping. It writes to the loggers directly, as Lightning's
own monitors do (no ``self.log``: see ``on_train_batch_end``).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gptmini.callbacks.interface import recipe_module
from gptmini.core.config import ConfigError
from gptmini.core.flops import device_peak_flops, flops_per_token, measure_matmul_flops, sync_device
from gptmini.train.compat import compute_dtype, log_step_metrics


class ThroughputLogger(pl.Callback):
    def __init__(
        self,
        peak_flops: float | str | None = None,
        log_every_n_steps: int | None = None,
    ) -> None:
        """Log tokens/s and MFU to the trainer's loggers under ``throughput/``.

        Args:
            peak_flops: Peak FLOP/s of ONE device for the run's compute dtype, the MFU denominator.
                null = the datasheet value for H100/H200/A100 (dense; MFU is not logged for other
                devices); "measure" = the best matmul rate measured on the device at fit start.
            log_every_n_steps: Optimizer steps between logs (and host syncs); null = the trainer's
                ``log_every_n_steps``.
        """
        super().__init__()
        if isinstance(peak_flops, str) and peak_flops != "measure":
            raise ConfigError(
                f"ThroughputLogger peak_flops must be a number (FLOP/s per device), 'measure' or null; "
                f"got {peak_flops!r}."
            )
        if peak_flops is not None and not isinstance(peak_flops, str) and not peak_flops > 0:
            raise ConfigError(f"ThroughputLogger peak_flops must be > 0, got {peak_flops}.")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ConfigError(f"ThroughputLogger log_every_n_steps must be >= 1, got {log_every_n_steps}.")
        self.peak_flops_setting = peak_flops
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops: float | None = None
        self._t_last: float | None = None
        self._tokens = 0  # tokens this device processed since the last log
        self._steps = 0
        self._paused = 0.0  # seconds spent in validation since the last log
        self._t_val: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        device = trainer.strategy.root_device
        dtype = compute_dtype(trainer)
        if self.peak_flops_setting == "measure":
            self.peak_flops = measure_matmul_flops(device, dtype)
        elif self.peak_flops_setting is not None:
            self.peak_flops = float(self.peak_flops_setting)
        else:
            self.peak_flops = device_peak_flops(device, dtype)
            if self.peak_flops is None:
                name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
                # A GPU we do not know is worth a warning; a CPU never has a datasheet peak.
                report = rank_zero_warn if device.type == "cuda" else rank_zero_info
                report(
                    f"ThroughputLogger: no peak FLOP/s known for {name!r} with {dtype}; throughput/mfu "
                    f"is not logged. Set the callback's peak_flops (a number or 'measure') to get it."
                )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += batch[0].numel()
        if self._t_last is None:  # start the clock after the first step: it holds compile/warm-up
            sync_device(trainer.strategy.root_device)
            self._t_last, self._tokens, self._steps, self._paused = time.perf_counter(), 0, 0, 0.0
            return
        self._steps += 1
        every = self.log_every_n_steps or trainer.log_every_n_steps
        # Log when Lightning writes its own step metrics, so our values are never written stale.
        if every <= 0 or trainer.global_step % every != 0:
            return
        sync_device(trainer.strategy.root_device)  # the only host sync: once per logging interval
        now = time.perf_counter()
        elapsed = now - self._t_last - self._paused
        if elapsed <= 0 or self._steps == 0:
            return
        per_device = self._tokens / elapsed
        metrics = {
            "throughput/tokens_per_sec": per_device * trainer.world_size,
            "throughput/tokens_per_sec_per_device": per_device,
            "throughput/step_ms": 1000.0 * elapsed / self._steps,
        }
        if self.peak_flops:
            seq_len = batch[0].shape[-1]
            module = recipe_module(pl_module)
            if module is not None:
                fpt = flops_per_token(module.model_cfg, seq_len)
                metrics["throughput/mfu"] = per_device * fpt / self.peak_flops
        # Straight to the loggers (and trainer.logged_metrics) at Lightning's step for this batch, as
        # its ThroughputMonitor does: a self.log per value costs ~0.1 ms, and Lightning then walks
        # every self.logged key again after each batch.
        log_step_metrics(trainer, metrics)
        self._t_last, self._tokens, self._steps, self._paused = now, 0, 0, 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._t_last is None:
            return
        sync_device(trainer.strategy.root_device)  # queued training work belongs to training time
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._t_val is not None:
            sync_device(trainer.strategy.root_device)
            self._paused += time.perf_counter() - self._t_val
            self._t_val = None
