"""Training throughput: model FLOPs per token, device peak FLOP/s, and a TensorBoard callback.

``ThroughputLogger`` logs ``throughput/tokens_per_sec`` (all devices), ``throughput/tokens_per_sec_per_device``,
``throughput/step_ms`` and ``throughput/mfu`` every ``log_every_n_steps``. Why not Lightning's
``ThroughputMonitor``: it calls ``torch.cuda.synchronize()`` after *every* batch (a host sync per step
is exactly what a 4 ms GPU step cannot afford), its peak-FLOPs table does not recognise a plain
"NVIDIA H200", and the peak cannot be set in config. This callback syncs once per logging interval
and reuses Lightning's precision -> dtype mapping.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from gptmini.model import ModelConfig

# Dense (no sparsity) peak FLOP/s per GPU from NVIDIA's datasheets, by compute dtype.
# "tf32" is fp32 matmuls when torch.get_float32_matmul_precision() is not "highest".
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h200 nvl": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "h200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},  # SXM
    "h100 nvl": {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "h100 pcie": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "h100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "a100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6 N + 12 L C T (PaLM appendix B / nanoGPT).

    N counts every parameter once, so the tied embedding counts as the output head's matmul
    (the lookup itself is free); 12 L C T is attention's QK^T and AV at sequence length T, not
    halved for causality. For the 10m shape at T=512 this is 96.3M FLOPs per token.
    """
    n_params = cfg.vocab_size * cfg.n_embd + cfg.n_layer * (
        (4 + 2 * cfg.mlp_ratio) * cfg.n_embd * cfg.n_embd + 2 * cfg.n_embd  # qkv+proj, fc+proj, 2 norms
    )
    n_params += cfg.n_embd  # final norm
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_embd * seq_len


def dtype_key(dtype: torch.dtype, device: torch.device) -> str | None:
    """The ``PEAK_FLOPS`` column a compute dtype uses on ``device``."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    if dtype == torch.float32:
        tf32 = device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
        return "tf32" if tf32 else "fp32"
    return None


def chip_of(device_name: str) -> str | None:
    """``PEAK_FLOPS`` key for a CUDA device name such as "NVIDIA H100 80GB HBM3"."""
    name = device_name.lower()
    for family in ("h200", "h100"):
        if family in name:
            if "nvl" in name:
                return f"{family} nvl"
            if family == "h100" and ("pcie" in name or "hbm2e" in name):
                return "h100 pcie"
            return family
    return "a100" if "a100" in name else None


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Datasheet peak FLOP/s of one ``device`` for ``dtype``; None where unknown (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    chip = chip_of(torch.cuda.get_device_name(device))
    key = dtype_key(dtype, device)
    return PEAK_FLOPS[chip].get(key) if chip is not None and key is not None else None


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 0.5
) -> float:
    """Best achieved FLOP/s of a square ``size`` x ``size`` matmul: the ceiling MFU is measured against.

    Default size: 8192 on CUDA (big enough to saturate tensor cores), 1024 on CPU (a few ms on
    2 cores). Runs for about ``seconds`` and keeps the best timed batch of repeats.
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    reps = 10 if device.type == "cuda" else 3
    best = 0.0
    deadline = time.perf_counter() + seconds
    (a @ b).sum()  # warm-up: library init, kernel selection
    while True:
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2.0 * size**3 * reps / (time.perf_counter() - t))
        if time.perf_counter() > deadline:
            return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            raise ValueError(
                f"ThroughputLogger peak_flops must be a number (FLOP/s per device), 'measure' or null; "
                f"got {peak_flops!r}."
            )
        if peak_flops is not None and not isinstance(peak_flops, str) and not peak_flops > 0:
            raise ValueError(f"ThroughputLogger peak_flops must be > 0, got {peak_flops}.")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"ThroughputLogger log_every_n_steps must be >= 1, got {log_every_n_steps}.")
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
        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
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
            _sync(trainer.strategy.root_device)
            self._t_last, self._tokens, self._steps, self._paused = time.perf_counter(), 0, 0, 0.0
            return
        self._steps += 1
        every = self.log_every_n_steps or trainer.log_every_n_steps
        # Log when Lightning writes its own step metrics, so our values are never written stale.
        if every <= 0 or trainer.global_step % every != 0:
            return
        _sync(trainer.strategy.root_device)  # the only host sync: once per logging interval
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
            model_cfg = getattr(pl_module, "model_cfg", None)
            if model_cfg is not None:
                metrics["throughput/mfu"] = per_device * flops_per_token(model_cfg, seq_len) / self.peak_flops
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t_last, self._tokens, self._steps, self._paused = now, 0, 0, 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._t_last is None:
            return
        _sync(trainer.strategy.root_device)  # queued training work belongs to training time
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._t_val is not None:
            _sync(trainer.strategy.root_device)
            self._paused += time.perf_counter() - self._t_val
            self._t_val = None
