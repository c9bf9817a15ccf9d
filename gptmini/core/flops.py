"""Model FLOPs per token, device peak FLOP/s (datasheet tables) and a measured matmul ceiling. No Lightning."""

from __future__ import annotations

import time

import torch

from gptmini.core.model import ModelConfig

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
        sync_device(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync_device(device)
        best = max(best, 2.0 * size**3 * reps / (time.perf_counter() - t))
        if time.perf_counter() > deadline:
            return best


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
