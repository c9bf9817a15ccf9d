"""Setting errors the CLI raises before any work, for fit and validate (LightningCLI's ``before_fit``/``before_validate`` hooks; ``check_strategy`` before
the Trainer is built): after trainer, model and data are built, before data preparation (tokenizer
training) or any step. The step-0 checks (callbacks in ``gptmini.callbacks``) run later, on the real
optimizer, schedule and first batch. The checkpoint to start from is gptmini.train.resume's; the
run's folders are gptmini.train.run_folder's.

Each raises a ``ConfigError`` (a ``ValueError``) that names the setting and the fix, so a bad config fails in seconds
(not after tokenizer training or an hour of steps) and before anything is written to disk.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gptmini.core import atomic
from gptmini.core.config import ConfigError
from gptmini.core.formats import (
    CACHE_META,
)
from gptmini.core.schedule import validate_horizon
from gptmini.train import compat


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 (CPUs do, emulated where the ISA lacks it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type in ("cpu", "mps", "xla")


def check_trainer(trainer: pl.Trainer, warmup_steps: int) -> None:
    """Step budget, accumulation and precision settings the recipe cannot run with."""
    validate_horizon(warmup_steps, trainer.max_steps)
    acc = trainer.accumulate_grad_batches
    if not isinstance(acc, int) or acc < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches must be an integer >= 1 (micro-batches per optimizer "
            f"step), got {acc!r}."
        )
    precision = str(trainer.precision)
    device = trainer.strategy.root_device
    if "bf16" in precision and not bf16_supported(device):
        name = f"{device}, {torch.cuda.get_device_name(device)}" if device.type == "cuda" else str(device)
        raise ConfigError(
            f"trainer.precision={precision} needs bfloat16, which this device ({name}) does not "
            f"support; use trainer.precision=16-mixed (fp16 with a grad scaler) or 32-true."
        )


def check_strategy(strategy: object, accelerator: object) -> None:
    """FSDP on CPU: one line instead of Lightning's traceback (run before the Trainer is built).

    Lightning refuses FSDP without a GPU by name (``_check_strategy_and_fallback``); torch's FSDP
    itself runs on CPU with gloo only with changes Lightning does not make (docs/clusters.md)."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not CUDAAccelerator.is_available())
    if compat.is_fsdp(strategy, exact=True) and on_cpu:
        name = strategy if isinstance(strategy, str) else type(strategy).__name__
        raise ConfigError(
            f"trainer.strategy={name} needs CUDA GPUs (Lightning's FSDP does not run on CPU, "
            f"docs/clusters.md); on CPU use trainer.strategy=ddp, or drop trainer.strategy."
        )


def check_data_matches_model(datamodule: object, model_cfg: object) -> None:
    """Vocab and context the data will produce must fit the model (normally linked by the CLI)."""
    vocab = getattr(datamodule, "vocab_size", None)
    if vocab is not None and vocab != model_cfg.vocab_size:
        raise ConfigError(
            f"tokenizer vocab size ({vocab}, from data.vocab_size/data.tokenizer) != model.arch.vocab_size "
            f"({model_cfg.vocab_size}); let the CLI link them (do not set model.arch.vocab_size)."
        )
    block = getattr(datamodule, "block_size", None)
    if block is not None and block > model_cfg.block_size:
        raise ConfigError(
            f"data.block_size ({block}) is larger than the model's context model.arch.block_size "
            f"({model_cfg.block_size}); lower data.block_size or raise model.arch.block_size."
        )


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (created if missing), or None (gptmini.core.atomic)."""
    return atomic.unwritable(folder)


def check_writable(trainer: pl.Trainer, datamodule: object | None = None) -> None:
    """The run's log/checkpoint folder and, when data must be prepared, ``data.cache_dir`` accept
    new files: a read-only or unwritable folder is one error line before any work."""
    where: list[tuple[str, Path]] = []
    cache = getattr(datamodule, "cache_root", None)
    prepared = getattr(datamodule, "cache_path", None)
    if cache is not None and not (prepared is not None and (Path(prepared) / CACHE_META).is_file()):
        where.append(("data.cache_dir", Path(cache)))  # a prepared cache is only read: read-only is fine
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and "://" not in str(save_dir):
            where.append(("trainer.logger.init_args.save_dir", Path(save_dir)))
    if not trainer.loggers and "://" not in str(trainer.default_root_dir):
        where.append(("trainer.default_root_dir", Path(trainer.default_root_dir)))
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and "://" not in str(cb.dirpath):
            where.append(("ModelCheckpoint dirpath (trainer.callbacks)", Path(cb.dirpath)))
    for setting, folder in where:
        problem = _probe_writable(folder.expanduser())
        if problem:
            raise ConfigError(
                f"{setting} {folder} is not writable ({problem}); give a folder this user can "
                f"write to (not on a read-only filesystem)."
            )
