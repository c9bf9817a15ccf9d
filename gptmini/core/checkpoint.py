"""Read gptmini checkpoints without Lightning: ``load_model("last.ckpt")`` -> a ready ``GPTMini``.

A Lightning checkpoint of :class:`gptmini.train.module.GPTMiniModule` holds the module's ``state_dict``
(keys ``model.<param>``) and ``gptmini_model_config`` (the :class:`ModelConfig` as a dict), which is
all a bare model needs. Keys from a ``torch.compile``d model (``_orig_mod.``) are stripped here too,
so checkpoints written before that was fixed upstream still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptmini.core.config import ConfigError
from gptmini.core.model import GPTMini, ModelConfig

MODEL_PREFIX = "model."
COMPILED_PREFIX = "_orig_mod."


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, truncated, corrupt or not a gptmini checkpoint."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and an error naming the file when it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load raises many types on bad bytes (RuntimeError, KeyError, ...)
        first = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {first}. "
            f"Use another checkpoint, e.g. an earlier *step=*.ckpt in the same folder."
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no 'state_dict'; it is not a gptmini checkpoint.")
    return ckpt


def clean_key(key: str) -> str:
    """Drop every ``_orig_mod.`` segment that ``torch.compile`` wrappers insert."""
    return key.replace(COMPILED_PREFIX, "")


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bare ``GPTMini`` weights from a Lightning checkpoint's ``state_dict``."""
    out = {}
    for key, value in ckpt["state_dict"].items():
        key = clean_key(key)
        if key.startswith(MODEL_PREFIX):
            out[key[len(MODEL_PREFIX) :]] = value
    return out


def model_config(ckpt: dict[str, Any], path: str | Path = "<checkpoint>") -> ModelConfig:
    """The ``ModelConfig`` stored by ``GPTMiniModule.on_save_checkpoint`` (or its hparams)."""
    cfg = ckpt.get("gptmini_model_config")
    if cfg is None:
        hparams = ckpt.get("hyper_parameters", {})
        cfg = hparams.get("arch", hparams.get("model"))  # "model" before the model.arch rename
    if cfg is None:
        raise CheckpointError(f"checkpoint {path} holds no model config; it is not a gptmini checkpoint.")
    return ModelConfig(**cfg)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> GPTMini:
    """A fresh ``GPTMini`` (eval mode) with the weights of a gptmini Lightning checkpoint."""
    ckpt = read_checkpoint(path, map_location)
    model = GPTMini(model_config(ckpt, path))
    try:
        model.load_state_dict(model_state_dict(ckpt), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {e}") from e
    return model.to(map_location).eval()
