"""Setting errors the CLI raises in LightningCLI's ``before_fit`` hook: after trainer, model and data
are built, before data preparation (tokenizer training) or any step. The step-0 checks (callbacks in
``gptmini.callbacks``) run later, on the real optimizer, schedule and first batch.

Each raises a ``ConfigError`` (a ``ValueError``) that names the setting and the fix, so a bad config fails in seconds
(not after tokenizer training or an hour of steps) and before anything is written to disk.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gptmini.core.checkpoint import model_config, read_checkpoint
from gptmini.core.config import ConfigError
from gptmini.core.schedule import validate_horizon


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
    from lightning.pytorch.strategies import FSDPStrategy

    fsdp = type(strategy) is FSDPStrategy or (
        isinstance(strategy, str) and strategy.lower() in FSDPStrategy.get_registered_strategies()
    )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not CUDAAccelerator.is_available())
    if fsdp and on_cpu:
        name = strategy if isinstance(strategy, str) else "FSDPStrategy"
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


def _last_checkpoint_globs(trainer: pl.Trainer) -> list[str]:
    """Where this run's earlier ``last.ckpt`` files live: every version folder of the logger, and
    any explicit ModelCheckpoint.dirpath (with a logger, each run gets a new version folder, so
    Lightning's own ``ckpt_path="last"`` would only look in the new, empty one)."""
    globs = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            globs.append(str(Path(cb.dirpath) / "last*.ckpt"))
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root:
            globs.append(str(Path(root) / "*" / "checkpoints" / "last*.ckpt"))
    if not trainer.loggers:
        globs.append(str(Path(trainer.default_root_dir) / "checkpoints" / "last*.ckpt"))
    return globs


def resolve_ckpt_path(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """``last`` -> the newest ``last*.ckpt`` of this run name; a path must exist. Else unchanged."""
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
        return ckpt_path
    if ckpt_path == "last":
        globs = _last_checkpoint_globs(trainer)
        found = [Path(p) for g in globs for p in glob.glob(g) if Path(p).is_file()]
        if not found:
            raise ConfigError(
                f"--ckpt_path last: no last.ckpt found (looked for {', '.join(globs)}); drop "
                f"--ckpt_path to start a new run, or give the checkpoint file."
            )
        return str(max(found, key=lambda p: p.stat().st_mtime))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path {ckpt_path} does not exist; give an existing .ckpt file, `last`, or drop it."
        )
    return str(path)


def check_checkpoint(path: str, model_cfg: object, flag: str = "--ckpt_path") -> str:
    """The checkpoint is readable and was trained with this model shape; returns its path."""
    try:
        saved = model_config(read_checkpoint(path), path)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None
    diffs = [
        f"model.arch.{k}: checkpoint {getattr(saved, k)} vs config {getattr(model_cfg, k)}"
        for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio")
        if getattr(saved, k) != getattr(model_cfg, k)
    ]
    if diffs:
        raise ConfigError(
            f"{flag} {path} was trained with another model shape ({'; '.join(diffs)}); use the "
            f"checkpoint's model.arch settings (its run's config.yaml) or start from scratch."
        )
    return str(Path(path).expanduser())


def read_resume_checkpoint(path: str, max_steps: int | None) -> dict:
    """The checkpoint to resume from, readable, with its settings and steps left to train."""
    try:
        ckpt = read_checkpoint(path)
        model_config(ckpt, path)
    except ValueError as e:
        raise ConfigError(f"--ckpt_path: {e}") from None
    if not isinstance(ckpt.get("hyper_parameters"), dict):
        raise ConfigError(f"--ckpt_path {path} holds no hyper_parameters; it is not a gptmini checkpoint.")
    step = int(ckpt.get("global_step", 0))
    if max_steps is not None and 0 < max_steps <= step:
        raise ConfigError(
            f"--ckpt_path {path} is at step {step}, and trainer.max_steps is {max_steps}: nothing "
            f"left to train. Raise trainer.max_steps to continue (the cosine is recomputed over it)."
        )
    return ckpt


def claim_version(trainer: pl.Trainer) -> None:
    """Create the next free ``version_N`` folder for each logger without a fixed version.

    Lightning's loggers pick ``max(N) + 1`` lazily and create the folder later, so runs started
    together (a sweep) pick the same one. ``os.mkdir`` succeeds for exactly one process per name;
    the others move on to the next number.
    """
    for logger in trainer.loggers:
        # `_version` is None until the logger picks one (no public way to tell without picking).
        root = getattr(logger, "root_dir", None)
        if getattr(logger, "_version", "fixed") is not None or not root or "://" in str(root):
            continue  # a fixed version (check_log_dir_free guards it), or a remote filesystem
        os.makedirs(root, exist_ok=True)
        taken = [int(m.group(1)) for d in os.listdir(root) if (m := re.fullmatch(r"version_(\d+)", d))]
        n = max(taken, default=-1) + 1
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{n}"))
                break
            except FileExistsError:
                n += 1
        logger._version = n


def check_log_dir_free(trainer: pl.Trainer) -> None:
    """Refuse to write into a folder that already holds a run (a fixed logger version)."""
    log_dir = trainer.log_dir
    if log_dir is None:
        return
    old = [p for p in (Path(log_dir) / "config.yaml", Path(log_dir) / "checkpoints") if p.exists()]
    if old:
        raise ConfigError(
            f"{log_dir} already holds a run ({old[0].name}); refusing to overwrite it. Leave "
            f"trainer.logger.init_args.version unset (a new version_N folder per run) or pick a new one."
        )
