"""The device a command runs on: ``--device auto|cpu|cuda[:N]``, checked once. No Lightning."""

from __future__ import annotations

import torch

from gptmini.core.config import ConfigError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; a CUDA device without CUDA is a
    :class:`ConfigError` naming the fix."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu.")
    return device
